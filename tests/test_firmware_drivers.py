"""The node's sensor drivers, run by the real MicroPython VM against the emulated board's
virtual peripherals: values set on the host come back through each driver, and faults
(absent, corrupt) surface as the errors the firmware handles."""

from __future__ import annotations

import time

import pytest

from polekit.hil.emulator import EmulatedBoard

from boardkit import board_exec as run
from boardkit import board_exec_until, library_board


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from library_board(tmp_path_factory)


def run_async(board: EmulatedBoard, setup: str, expr: str, timeout_s: float = 5) -> str:
    """Start ``expr`` (a coroutine) as a task after ``setup``; return what it printed.
    The raw REPL cannot await: the task runs on the VM's loop and is polled."""
    task = (
        "import asyncio\n"
        "_out = []\n"
        "async def _t():\n"
        "    try:\n"
        f"        _out.append(repr(await {expr}))\n"
        "    except Exception as e:\n"
        "        _out.append('%s: %s' % (type(e).__name__, e))\n"
        "asyncio.create_task(_t())"
    )
    run(board, setup + "\n" + task)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = run(board, "print(_out[0] if _out else '')")
        if out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"{expr} did not finish in {timeout_s} s")


SETUP = "import machine\ni2c = machine.I2C(0, scl=22, sda=21)"


def test_sht3x_driver_reads_temperature_and_humidity(board: EmulatedBoard) -> None:
    board.set("sht3x.temperature", 23.45)
    board.set("sht3x.humidity", 61.5)
    out = run_async(
        board, SETUP + "\nfrom node.drivers.sht3x import SHT3x\ns = SHT3x(i2c)", "s.measure()"
    )
    t, h = (float(x) for x in out.strip("()").split(","))
    assert t == pytest.approx(23.45, abs=0.01) and h == pytest.approx(61.5, abs=0.01)


def test_sht3x_crc_catches_a_corrupt_transfer(board: EmulatedBoard) -> None:
    out = run(
        board,
        "from node.drivers.sht3x import decode\n"
        "try:\n"
        "    decode(b'\\x66\\x66\\x00\\x99\\x99\\x00')\n"
        "except ValueError as e:\n"
        "    print(e)",
    )
    assert out == "SHT3x CRC mismatch"


def test_bh1750_and_adxl345_drivers(board: EmulatedBoard) -> None:
    board.set("bh1750.illuminance", 850)
    board.set("adxl345.tilt", 7.5)
    lux = run_async(
        board, SETUP + "\nfrom node.drivers.bh1750 import BH1750\nb = BH1750(i2c)", "b.measure()"
    )
    tilt = run_async(
        board, SETUP + "\nfrom node.drivers.adxl345 import ADXL345\na = ADXL345(i2c)", "a.measure()"
    )
    assert float(lux) == pytest.approx(850, abs=1)
    assert float(tilt) == pytest.approx(7.5, abs=0.3)  # 256 LSB/g limits the resolution


def test_absent_sensor_is_an_oserror_the_firmware_can_catch(board: EmulatedBoard) -> None:
    board.set("sht3x.absent", 1)
    try:
        out = run_async(
            board, SETUP + "\nfrom node.drivers.sht3x import SHT3x\ns = SHT3x(i2c)", "s.measure()"
        )
    finally:
        board.set("sht3x.absent", 0)
    assert out == "OSError: [Errno 19] ENODEV"


def test_pms5003_parser_keeps_the_newest_good_frame(board: EmulatedBoard) -> None:
    board.set("pms5003.pm2_5", 42)
    board.set("pms5003.pm10", 64)
    out = board_exec_until(  # the sensor streams a frame a second
        board,
        "import machine\nfrom node.drivers.pms5003 import PMS5003, decode\n"
        "p = PMS5003(machine.UART(1, 9600, tx=27, rx=14))\nprint(p.poll())\n"
        "print(decode(b'\\x42\\x4d' + bytes(30)))",
        "(5, 42, 64)\nNone",
    )
    assert out.splitlines() == ["(5, 42, 64)", "None"]


def test_contact_debounce_and_lamp(board: EmulatedBoard) -> None:
    board.set("door.active", 0)
    out = run(
        board,
        """
import machine
from node.drivers.contact import Contact
from node.drivers.lamp import Lamp
door = Contact(machine.Pin(25, machine.Pin.IN), active_low=True, debounce_ms=30)
print(door.active)
lamp = Lamp(machine.PWM(machine.Pin(18)), machine.Pin(19, machine.Pin.OUT))
lamp.set(40)
""",
    )
    assert out == "False"
    assert board.get("lamp.level") == pytest.approx(40.0, abs=0.1) and board.get("lamp.relay") == 1
    board.set("door.active", 1)
    out = run(board, "print(door.update(0), door.update(10), door.update(45), door.active)")
    assert out == "False False True True"  # the new level held 30 ms before it counted
