"""The node firmware through its RS-485 line, as the cabinet gateway sees it.

Runs unchanged on a real pole board with the firmware deployed (--hil-port, --hil-line);
tests that move the physical world (``physics``) run on the emulated board only.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import serial
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException

from polekit.hil.pytest_plugin import restart_firmware
from polekit.protocols import modbus

TILT = modbus.ALARM_TILT


def test_free_heap_after_boot_is_at_least_half_the_budget(node, board):
    values = node.wait_for(lambda v: v["valid"] & modbus.VALID_SHT3X)
    budget = board.definition.heap_bytes
    print(f"free heap, all pole drivers running: {values['free_heap']} of {budget} bytes")
    assert values["free_heap"] >= budget // 2
    assert values["fw_version"] >= 1 and values["uptime"] >= 0


def test_physical_values_reach_the_registers_scaled(node, physics):
    for path, value in (
        ("sht3x.temperature", 27.25),
        ("sht3x.humidity", 44.5),
        ("bh1750.illuminance", 980),
        ("pms5003.pm2_5", 17),
        ("pms5003.pm10", 29),
        ("adxl345.tilt", 1.0),
        ("noise.voltage", 1.4),  # 50 dB per volt on this board
    ):
        physics.set(path, value)

    def scaled(v: dict[str, Any]) -> bool:
        return (
            v["temperature"] == 27.25
            and v["humidity"] == 44.5
            and v["illuminance"] == pytest.approx(980, abs=1)
            and (v["pm2_5"], v["pm10"], v["noise"]) == (17, 29, 70.0)
            and v["tilt"] == pytest.approx(1.0, abs=0.3)
            and v["valid"] & 0x1F == 0x1F
        )

    # the node samples its sensors one after another: a read can fall between two of them,
    # so wait for every value, then say which one never came
    values = node.wait_for(scaled)
    assert values, "the node did not answer"
    assert values["temperature"] == 27.25 and values["humidity"] == 44.5
    assert values["illuminance"] == pytest.approx(980, abs=1)
    assert (values["pm2_5"], values["pm10"], values["noise"]) == (17, 29, 70.0)
    assert values["tilt"] == pytest.approx(1.0, abs=0.3)
    assert values["valid"] & 0x1F == 0x1F


def test_tilt_alarm_raises_within_a_sample_period_and_clears_with_hysteresis(node, physics):
    physics.set("adxl345.tilt", 15)
    start = time.monotonic()
    values = node.wait_for(lambda v: v["alarms"] & TILT, timeout_s=5)
    assert values["alarms"] & TILT
    print(f"tilt alarm seen by the master {time.monotonic() - start:.2f} s after the tilt")
    physics.set("adxl345.tilt", 9)  # under the threshold (10) but inside the hysteresis (2)
    values = node.wait_for(lambda v: abs(v["tilt"] - 9) < 0.5, timeout_s=5)  # sampled at 9
    assert abs(values["tilt"] - 9) < 0.5 and values["alarms"] & TILT
    physics.set("adxl345.tilt", 7)
    assert not node.wait_for(lambda v: not v["alarms"] & TILT, timeout_s=5)["alarms"] & TILT
    physics.set("door.active", 1)
    assert node.wait_for(lambda v: v["door_open"] is True)["alarms"] & modbus.ALARM_DOOR
    physics.set("door.active", 0)
    assert not node.wait_for(lambda v: v["door_open"] is False)["alarms"] & modbus.ALARM_DOOR


def test_a_failing_sensor_invalidates_only_its_values(node, physics):
    physics.set("bh1750.absent", 1)
    try:
        values = node.wait_for(lambda v: not v["valid"] & modbus.VALID_BH1750)
        assert not values["valid"] & modbus.VALID_BH1750
        physics.set("sht3x.temperature", 12.5)
        values = node.wait_for(lambda v: v["temperature"] == 12.5)
        assert values["temperature"] == 12.5 and values["valid"] & modbus.VALID_SHT3X
    finally:
        physics.set("bh1750.absent", 0)
    values = node.wait_for(lambda v: v["valid"] & modbus.VALID_BH1750)
    assert values["valid"] & modbus.VALID_BH1750


def test_lamp_level_written_by_the_master_survives_a_soft_reset(node, board, request):
    node.write("lamp_level", 35)
    try:
        assert node.read()["lamp_level"] == 35
        if board.emulated:
            physics = request.getfixturevalue("physics")
            assert physics.get("lamp.level") == pytest.approx(35, abs=0.1)
        restart_firmware(board.repl, timeout_s=30 * node.time_scale)
        values = node.wait_for(lambda v: v["lamp_level"] == 35 and v["valid"], timeout_s=20)
        assert values["lamp_level"] == 35
        if board.emulated:
            assert physics.get("lamp.level") == pytest.approx(35, abs=0.1)
    finally:
        node.write("lamp_level", 100)


def test_a_hung_board_is_reset_by_the_watchdog_and_recovers(node, board):
    assert node.read()["valid"]
    mpremote = str(Path(sys.executable).with_name("mpremote"))
    # Ctrl-C stops the node's tasks, but its watchdog stays armed in the hardware
    hung = subprocess.Popen(
        [mpremote, "connect", board.repl, "resume", "exec", "while True:\n    pass\n"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        values = node.wait_for(lambda v: v["reset_cause"] == 3, timeout_s=30)
    finally:
        hung.kill()
        hung.wait()
    assert values["reset_cause"] == 3  # machine.WDT_RESET: the board came back by itself


def test_malformed_frames_never_crash_the_node(node, line):
    rng = random.Random(5)
    before = node.read()
    with serial.Serial(line, 9600, stopbits=2, timeout=0.05) as port:
        for _ in range(60):
            kind = rng.randrange(3)
            if kind == 0:  # noise
                frame = os.urandom(rng.randrange(1, 40))
            elif kind == 1:  # a good request with a bad CRC
                frame = bytes([node.unit, 4, 0, 0, 0, 5, 0x12, 0x34])
            else:  # a request cut short
                frame = modbus.frame(node.unit, bytes([3, 0, 0, 0, 5]))[: rng.randrange(1, 7)]
            port.write(frame)
            port.flush()
            time.sleep(0.02)
        time.sleep(0.3)
        port.reset_input_buffer()
    after = node.wait_for(lambda v: v["uptime"] >= before["uptime"])
    assert after["uptime"] >= before["uptime"] and after["reset_cause"] == before["reset_cause"]


def test_exceptions_and_silence_as_the_modbus_spec_says(node):
    async def scenario() -> tuple[Any, object]:
        client = AsyncModbusSerialClient(
            node.port, baudrate=node.baudrate, parity="N", stopbits=2, timeout=0.6, retries=0
        )
        assert await client.connect()
        try:
            unmapped = await client.read_input_registers(200, count=2, device_id=node.unit)
            other: object
            try:
                other = await client.read_input_registers(0, count=1, device_id=node.unit + 1)
            except ModbusIOException as exc:  # no response received: silence
                other = exc
        finally:
            client.close()
        return unmapped, other

    unmapped, other = asyncio.run(scenario())
    assert unmapped.isError() and unmapped.exception_code == 2
    # another unit's request gets no answer at all (pymodbus times out), not an exception
    assert isinstance(other, ModbusIOException), other
