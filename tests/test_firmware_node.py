"""The pole node firmware on the emulated board, end to end: physical values in, Modbus
registers out (read by a host pymodbus master over the paced RS-485 line), alarms with
hysteresis, the lamp level kept across a reset, a failing sensor invalidating only its
values, and the watchdog bringing a hung board back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from pymodbus.client import AsyncModbusSerialClient

from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity, modbus

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
POLE_ENV = modbus.register_map("pole-env")
CODE = identity.make("371600", "PL", 7)


def install(flash: Path, **config: object) -> None:
    from polekit.firmware.install import install as install_firmware

    install_firmware(flash, "pole-env-esp32", {"device_code": CODE, "watchdog_ms": 2000, **config})


def read_all(board: EmulatedBoard) -> dict[str, object]:
    async def scenario() -> dict[str, object]:
        client = AsyncModbusSerialClient(
            board.uarts["rs485"], baudrate=9600, parity="N", stopbits=2, timeout=1, retries=2
        )
        assert await client.connect()
        try:
            inputs = await client.read_input_registers(0, count=24, device_id=1)
            holding = await client.read_holding_registers(0, count=5, device_id=1)
        finally:
            client.close()
        out = {}
        for p in POLE_ENV:
            regs = (inputs if p.table == "input" else holding).registers
            out[p.name] = p.decode(regs[p.address : p.address + p.count])
        return out

    return asyncio.run(scenario())


def wait_for(board: EmulatedBoard, check, timeout_s: float = 10):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        values = read_all(board)
        if check(values) or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    flash = tmp_path_factory.mktemp("flash")
    install(flash)
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        deadline = time.monotonic() + 20
        while (
            b"node " + CODE.encode() + b" up" not in board.serial_log
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert b"up, unit 1" in board.serial_log, bytes(board.serial_log[-2000:])
        yield board


def test_physical_values_reach_the_registers_scaled(node: EmulatedBoard) -> None:
    for path, value in (
        ("sht3x.temperature", 27.25),
        ("sht3x.humidity", 44.5),
        ("bh1750.illuminance", 980),
        ("pms5003.pm2_5", 17),
        ("pms5003.pm10", 29),
        ("adxl345.tilt", 1.0),
        ("noise.voltage", 1.4),  # 50 dB per volt on this board
    ):
        node.set(path, value)
    values = wait_for(
        node, lambda v: v["temperature"] == 27.25 and v["pm2_5"] == 17 and v["noise"] == 70.0
    )
    assert values["temperature"] == 27.25 and values["humidity"] == 44.5
    assert values["illuminance"] == pytest.approx(980, abs=1)
    assert (values["pm2_5"], values["pm10"]) == (17, 29)
    assert values["tilt"] == pytest.approx(1.0, abs=0.3)
    assert values["noise"] == 70.0
    assert values["valid"] & 0x1F == 0x1F
    assert values["fw_version"] == 1 and values["uptime"] >= 0
    heap = int(values["free_heap"])  # type: ignore[call-overload]
    print(
        f"free heap after boot, all pole drivers running: {heap} of {node.board.heap_bytes} bytes"
    )
    assert heap >= node.board.heap_bytes // 2


def test_tilt_alarm_raises_at_once_and_clears_with_hysteresis(node: EmulatedBoard) -> None:
    node.set("adxl345.tilt", 15)
    start = time.monotonic()
    values = wait_for(node, lambda v: v["alarms"] & modbus.ALARM_TILT, timeout_s=5)
    assert values["alarms"] & modbus.ALARM_TILT
    print(f"tilt alarm seen by the master {time.monotonic() - start:.2f} s after the tilt")
    node.set("adxl345.tilt", 9)  # under the threshold (10) but inside the hysteresis (2)
    time.sleep(1.0)
    assert read_all(node)["alarms"] & modbus.ALARM_TILT
    node.set("adxl345.tilt", 7)
    assert (
        not wait_for(node, lambda v: not v["alarms"] & modbus.ALARM_TILT, timeout_s=5)["alarms"] & 1
    )
    node.set("door.active", 1)
    assert wait_for(node, lambda v: v["door_open"] is True)["alarms"] & modbus.ALARM_DOOR
    node.set("door.active", 0)


def test_a_failing_sensor_invalidates_only_its_values(node: EmulatedBoard) -> None:
    node.set("bh1750.absent", 1)
    try:
        values = wait_for(node, lambda v: not v["valid"] & modbus.VALID_BH1750)
        assert not values["valid"] & modbus.VALID_BH1750
        node.set("sht3x.temperature", 12.5)
        values = wait_for(node, lambda v: v["temperature"] == 12.5)
        assert values["temperature"] == 12.5 and values["valid"] & modbus.VALID_SHT3X
    finally:
        node.set("bh1750.absent", 0)
    assert wait_for(node, lambda v: v["valid"] & modbus.VALID_BH1750)["valid"] & modbus.VALID_BH1750


def test_lamp_level_written_by_the_master_survives_a_soft_reset(node: EmulatedBoard) -> None:
    async def write() -> None:
        client = AsyncModbusSerialClient(
            node.uarts["rs485"], baudrate=9600, parity="N", stopbits=2, timeout=1, retries=2
        )
        assert await client.connect()
        try:
            assert not (await client.write_register(0, 35, device_id=1)).isError()
        finally:
            client.close()

    asyncio.run(write())
    assert node.get("lamp.level") == pytest.approx(35, abs=0.1)
    before = len(node.events)
    with serial.Serial(node.repl, 115200, timeout=0.2) as repl:
        repl.write(b"\x03\x02")  # interrupt the firmware, friendly REPL
        time.sleep(0.3)
        repl.write(b"\x04")  # Ctrl-D: soft reset, main.py runs again
    node.wait_event("booted", timeout_s=20, after=before)
    values = wait_for(node, lambda v: v["lamp_level"] == 35)
    assert values["lamp_level"] == 35 and node.get("lamp.level") == pytest.approx(35, abs=0.1)


def test_hung_board_is_reset_by_the_watchdog_and_recovers(node: EmulatedBoard) -> None:
    before = len(node.events)
    hung = subprocess.Popen(
        [MPREMOTE, "connect", node.repl, "resume", "exec", "while True:\n    pass\n"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        node.wait_event("wdt-reset", timeout_s=15, after=before)
    finally:
        hung.kill()
        hung.wait()
    node.wait_event("booted", timeout_s=20, after=before)
    values = wait_for(node, lambda v: v["reset_cause"] == 3, timeout_s=10)
    assert values["reset_cause"] == 3  # machine.WDT_RESET: it came back by itself


def test_polekit_emulate_boots_the_firmware_and_answers_modbus_at_once(tmp_path: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polekit",
            "emulate",
            "--board",
            "pole-env-esp32",
            "--fs",
            str(tmp_path / "flash"),
            "--json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())

        class Ports:
            uarts = ports["uarts"]

        values = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not int(values.get("valid", 0)) & modbus.VALID_SHT3X:
            try:
                values = read_all(Ports)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - the node may still be starting
                time.sleep(0.3)
        assert values["temperature"] == 21.0 and values["valid"] & modbus.VALID_SHT3X
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_bad_config_values_are_logged_and_defaults_used(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    install(flash, unit="x", sample_ms=5, colour="blue")
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        deadline = time.monotonic() + 20
        while b"up, unit 1" not in board.serial_log and time.monotonic() < deadline:
            time.sleep(0.05)
        log = bytes(board.serial_log).decode(errors="replace")
    assert "config: unit = 'x' must be a number 1..247; using 1" in log
    assert "config: sample_ms = 5 must be a number 100..3600000; using 1000" in log
    assert "config: unknown key 'colour' ignored" in log
    assert "up, unit 1" in log


def test_repeated_start_crashes_end_in_safe_mode_with_the_repl_up(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    install(flash)
    board_map = json.loads((flash / "board.json").read_text())
    board_map["buses"] = [b for b in board_map["buses"] if b["name"] != "i2c0"]  # a broken map
    (flash / "board.json").write_text(json.dumps(board_map))
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        for _ in range(3):
            before = len(board.events)
            board.reset()
            board.wait_event("booted", timeout_s=20, after=before)
        log = bytes(board.serial_log).decode(errors="replace")
        assert "start failed (1/3 before safe mode)" in log
        assert "safe mode: the node crashed at start 3 times in a row" in log
        result = subprocess.run(
            [MPREMOTE, "connect", board.repl, "exec", "print('repl ok')"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout.strip() == "repl ok"


def test_report_policy_filters_spikes_and_reports_on_change(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    install(flash, sample_ms=200, report={"temperature": {"delta": 1.0, "window": 3}})
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        board.set("sht3x.temperature", 18.0)  # well away from the 21.0 default
        values = wait_for(board, lambda v: v["temperature"] == 18.0)
        assert values["temperature"] == 18.0
        board.set("sht3x.temperature", 18.6)  # moved less than the 1.0 delta: not reported
        time.sleep(1.5)  # 7 samples
        assert read_all(board)["temperature"] == 18.0
        board.set("sht3x.temperature", 45.0)  # one wild sample: the median of 3 ignores it
        time.sleep(0.2)
        board.set("sht3x.temperature", 18.6)
        time.sleep(1.5)
        assert read_all(board)["temperature"] == 18.0
        seq = read_all(board)["node_seq"]
        board.set("sht3x.temperature", 20.0)  # a real change: reported within the window
        values = wait_for(board, lambda v: v["temperature"] == 20.0, timeout_s=5)
        assert values["temperature"] == 20.0 and values["node_seq"] > seq  # type: ignore[operator]


def test_report_policy_config_mistakes_are_logged(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    install(
        flash,
        report={"temprature": {"delta": 1}, "humidity": {"filter": "mode", "delta": -1}},
    )
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        deadline = time.monotonic() + 20
        while b"up, unit 1" not in board.serial_log and time.monotonic() < deadline:
            time.sleep(0.05)
        log = bytes(board.serial_log).decode(errors="replace")
    assert "config: report.temprature: no such quantity (known: humidity, illuminance" in log
    assert "config: report.humidity.filter = 'mode' must be one of median/average/none" in log
    assert "config: report.humidity.delta = -1 must be a number 0..1000000; using 0.5" in log
    assert "up, unit 1" in log
