"""The water-and-lifeline node's drivers (issue 17 item 3) on the emulated ESP32, against the
virtual current loop, rain gauge and flow meter.

The 4-20 mA limits are NAMUR NE 43's (3.8-20.5 mA for measurements); the wake sources are
the ESP32's EXT0/EXT1 (ESP-IDF esp_sleep_source_t numbers: 2, 3; timer 4)."""

from __future__ import annotations

import time

import pytest
from linkkit import wait_for

from polekit.firmware.install import install
from polekit.hil.emulator import EmulatedBoard

from boardkit import board_exec as run

BOARD = "water-esp32"


def run_async(board: EmulatedBoard, setup: str, expr: str, timeout_s: float = 10) -> str:
    """Start coroutine ``expr`` as a task after ``setup`` and return its repr once done."""
    run(
        board,
        setup + "\nimport asyncio\n_out = []\nasync def _t():\n"
        f"    _out.append(repr(await {expr}))\nasyncio.create_task(_t())",
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = run(board, "print(_out[0] if _out else '')")
        if out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"{expr} did not finish in {timeout_s} s")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    flash = tmp_path_factory.mktemp("flash")
    install(flash, BOARD, start=False, compiled=True)
    with EmulatedBoard(BOARD, fs_dir=flash) as b:
        yield b


LEVEL = (
    "import machine\nfrom node.drivers.loop_level import LoopLevel\n"
    "lvl = LoopLevel(machine.ADC(machine.Pin(34)), 120, 5.0, machine.Pin(26, machine.Pin.OUT), 150)"
)


def test_level_open_loop_and_over_range_from_the_virtual_current_loop(
    board: EmulatedBoard,
) -> None:
    board.set("level.open", 0)
    board.set("level.metres", 2.0)  # 10.4 mA through 120 ohm
    metres, fault = eval(run_async(board, LEVEL, "lvl.measure()"))
    assert fault is None and metres == pytest.approx(2.0, abs=0.005)
    board.set("level.open", 1)  # a cut cable: 0 mA is a fault, never "dry"
    assert eval(run_async(board, LEVEL, "lvl.measure()")) == (None, "open_loop")
    board.set("level.open", 0)
    board.set("level.metres", 5.3)  # 20.96 mA: past 20.5 mA
    assert eval(run_async(board, LEVEL, "lvl.measure()")) == (None, "over_range")
    board.set("level.metres", 5.05)  # 20.16 mA: over the span, inside NE 43's band
    metres, fault = eval(run_async(board, LEVEL, "lvl.measure()"))
    assert fault is None and metres == pytest.approx(5.05, abs=0.01)


RAIN = (
    "import machine\nfrom node.rtcstore import RtcStore\nfrom node.drivers.rain_gauge import "
    "RainGauge\nstore = RtcStore()\nstore.set('tips', 0)\n"
    "gauge = RainGauge(machine.Pin(27, machine.Pin.IN), store)"
)


def test_a_bouncing_contact_counts_one_tip_a_tip(board: EmulatedBoard) -> None:
    run(board, RAIN)
    board.set("rain.bounce", 5)  # five make/break chatters before each closure holds
    try:
        board.set("rain.tips", 4)
        wait_for(lambda: run(board, "print(gauge.tips)") == "4", 10, "four tips")
        time.sleep(0.6)  # any late chatter would count now
        assert run(board, "print(gauge.tips, gauge.rain_mm)") == "4 0.8"
    finally:
        board.set("rain.bounce", 0)
        run(board, "gauge.stop()")


def test_flow_rate_and_totalised_volume(board: EmulatedBoard) -> None:
    board.set("flow.l_min", 30.0)  # 50 pulses a second at 100 pulses a litre
    setup = (
        "import machine\nfrom node.drivers.flow_meter import FlowMeter\n"
        "fm = FlowMeter(machine.Pin(35, machine.Pin.IN), 100, machine.Pin(26, machine.Pin.OUT))"
    )
    rate = float(run_async(board, setup, "fm.measure(2000)"))
    assert rate == pytest.approx(30.0, rel=0.1)
    litres = float(run(board, "print(fm.pulses / fm.k)"))
    assert litres == pytest.approx(1.0, rel=0.15)  # 2 s at 0.5 L/s
    run(board, "fm.stop()")
