"""The node's Modbus RTU slave in the real MicroPython VM, read by a host pymodbus master
across the emulated board's RS-485 line, at 9600 baud paced as on the wire."""

from __future__ import annotations

import asyncio
import os

import pytest
from pymodbus.client import AsyncModbusSerialClient

from polekit.firmware.install import install
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import modbus

from boardkit import board_exec as run

POLE_ENV = modbus.register_map("pole-env")

START_SLAVE = """
import asyncio, machine
from protocols.modbus import register_map
from node.registers import RegisterFile
from node.uplinks.modbus_slave import ModbusSlave
from node.drivers.lamp import Lamp
lamp = Lamp(machine.PWM(machine.Pin(18)), machine.Pin(19, machine.Pin.OUT))
def on_write(point, value):
    if point.name == "lamp_level":
        lamp.set(value)
regs = RegisterFile(register_map("pole-env"), on_write)
regs.set("temperature", 21.37)
regs.set("humidity", 55.5)
regs.set("illuminance", 1234.5)
regs.set("tilt", -2.5)
regs.set("door_open", True)
slave = ModbusSlave(machine.UART(2, 9600), 1, regs, 9600)
asyncio.create_task(slave.run())
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    flash = tmp_path_factory.mktemp("flash")
    install(flash, "pole-env-esp32", start=False)
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as b:
        run(b, START_SLAVE)
        yield b


async def master(board: EmulatedBoard) -> AsyncModbusSerialClient:
    client = AsyncModbusSerialClient(
        board.uarts["rs485"], baudrate=9600, parity="N", stopbits=2, timeout=1, retries=0
    )
    assert await client.connect()
    return client


INPUTS = max(p.address + p.count for p in POLE_ENV if p.table == "input")


def test_host_master_reads_the_pole_env_map(board: EmulatedBoard) -> None:
    async def scenario() -> dict[str, object]:
        client = await master(board)
        try:
            inputs = await client.read_input_registers(0, count=INPUTS, device_id=1)
            holding = await client.read_holding_registers(0, count=5, device_id=1)
        finally:
            client.close()
        values = {}
        for p in POLE_ENV:
            regs = (inputs if p.table == "input" else holding).registers
            values[p.name] = p.decode(regs[p.address : p.address + p.count])
        return values

    values = asyncio.run(scenario())
    assert values["temperature"] == 21.37 and values["humidity"] == 55.5
    assert values["illuminance"] == pytest.approx(1234.5) and values["tilt"] == -2.5
    assert values["door_open"] is True


def test_lamp_level_write_reaches_the_lamp(board: EmulatedBoard) -> None:
    async def scenario() -> None:
        client = await master(board)
        try:
            result = await client.write_register(0, 65, device_id=1)
            assert not result.isError()
            bad = await client.write_register(0, 150, device_id=1)  # outside 0..100
            assert bad.isError() and bad.exception_code == modbus.ILLEGAL_VALUE
        finally:
            client.close()

    asyncio.run(scenario())
    assert board.get("lamp.level") == pytest.approx(65.0, abs=0.1)
    assert run(board, "print(regs.get('lamp_level'))") == "65"


def test_exceptions_and_silence_as_the_spec_says(board: EmulatedBoard) -> None:
    import serial

    def ask(pdu: bytes, unit: int = 1) -> bytes:
        with serial.Serial(board.uarts["rs485"], 9600, timeout=0.3) as line:
            line.reset_input_buffer()
            line.write(modbus.frame(unit, pdu))
            return line.read(64)

    assert ask(bytes([4, 0, 200, 0, 2])) == modbus.exception_response(1, 4, modbus.ILLEGAL_ADDRESS)
    assert ask(bytes([4, 0, 0, 0, 126])) == modbus.exception_response(1, 4, modbus.ILLEGAL_VALUE)
    assert ask(bytes([43, 14, 1, 0])) == modbus.exception_response(1, 43, modbus.ILLEGAL_FUNCTION)
    assert ask(bytes([4, 0, 0, 0, 1]), unit=9) == b""  # another unit's request: silence
    assert ask(bytes([6, 0, 9, 0, 1])) == modbus.exception_response(1, 6, modbus.ILLEGAL_ADDRESS)


def test_a_request_read_together_with_other_traffic_is_still_answered(
    board: EmulatedBoard,
) -> None:
    # a late read (a GC pause on the chip, a busy host for the emulator) finds the master's
    # request in the UART's buffer in one piece with what the line carried before it:
    # another slave's answer, a request to another unit; frames are told by their CRC
    import serial

    rng = __import__("random").Random(12)
    ours = modbus.frame(1, bytes([4, 0, 0, 0, 24]))
    with serial.Serial(board.uarts["rs485"], 9600, timeout=1) as line:
        for _ in range(8):
            others = (
                modbus.frame(2, bytes([4, 0, 0, 0, 24]))
                + modbus.read_response(2, 4, [rng.randrange(65536) for _ in range(24)])
                + modbus.write_response(3, 6, 0, rng.randrange(101))
                + modbus.exception_response(4, 3, modbus.ILLEGAL_ADDRESS)
            )
            line.reset_input_buffer()
            line.write(others + ours)
            answer = line.read(53)
            assert answer[:3] == bytes([1, 4, 48]) and len(answer) == 53, answer.hex()


def test_random_frames_never_crash_the_slave(board: EmulatedBoard) -> None:
    import serial

    rng = __import__("random").Random(int(os.environ.get("POLEKIT_FUZZ_SEED", "485")))
    print(f"fuzz seed {rng.random()}")  # pin with POLEKIT_FUZZ_SEED
    with serial.Serial(board.uarts["rs485"], 9600, timeout=0.05) as line:
        for _ in range(60):
            kind = rng.randrange(3)
            if kind == 0:
                frame = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            elif kind == 1:  # right shape, bad CRC
                frame = modbus.frame(1, bytes([4, 0, 0, 0, 5]))[:-1] + b"\x00"
            else:  # valid frame with a wrong length or an odd function
                frame = modbus.frame(1, bytes([rng.choice([1, 2, 5, 7, 16, 43]), 0, 0, 0, 2]))
            line.write(frame)
            line.read(64)
    # still answering, and it counted what it ignored
    test_host_master_reads_the_pole_env_map(board)
    assert int(run(board, "print(slave.ignored)")) > 0
