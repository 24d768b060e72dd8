"""Deep sleep on the emulated ESP32 as on the chip: the flash the firmware wrote is kept, RTC
memory survives deep sleep but not a power cut, and the chip wakes on its timer or when a
wake-source pin (esp32.wake_on_ext0/ext1) reaches its level, with machine.wake_reason()
saying which. The reference: MicroPython's ports/esp32 (machine_rtc.c: RTC.memory() is RTC
slow memory, 2048 bytes; modmachine.c: wake_reason() is esp_sleep_get_wakeup_cause())."""

from __future__ import annotations

import re
import time
from pathlib import Path

from polekit.hil.emulator import EmulatedBoard

# a boot prints what it finds, then sleeps; main.py runs at each boot, as on the chip (the
# firmware's way: its work in an asyncio task)
SLEEPER = """
import asyncio, esp32, machine, os
async def main():
    cycle()
def cycle():
  rtc = machine.RTC()
  print("woke cause=%d reason=%d rtc=%r files=%s" % (machine.reset_cause(), machine.wake_reason(),
        rtc.memory(), ",".join(sorted(f for f in os.listdir("/") if f.endswith(".txt")))))
  n = len(rtc.memory())
  with open("/boot%d.txt" % n, "w") as f:  # closed: a deep sleep closes nothing on the chip
    f.write("written before sleep %d" % n)
  rtc.memory(rtc.memory() + b"x")
  esp32.wake_on_ext0(machine.Pin(27), esp32.WAKEUP_ALL_LOW)
  esp32.wake_on_ext1([machine.Pin(33)], esp32.WAKEUP_ANY_HIGH)
  machine.deepsleep(SLEEP_MS)
asyncio.run(main())
"""


def _wakes(board: EmulatedBoard) -> list[str]:
    # whole lines only: one still arriving ("woke caus") is not a wake yet
    return re.findall(r"woke [^\r\n]*(?=\r?\n)", bytes(board.serial_log).decode(errors="replace"))


def _wait_wakes(board: EmulatedBoard, n: int, timeout_s: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while len(_wakes(board)) < n:
        assert time.monotonic() < deadline, _wakes(board)
        time.sleep(0.05)
    return _wakes(board)


def _sleeping(board: EmulatedBoard, count: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(1 for e in board.events if e.get("event") == "deepsleep") < count:
        assert time.monotonic() < deadline, board.events[-5:]
        time.sleep(0.02)


def _settled(board: EmulatedBoard, quiet_s: float = 0.5) -> int:
    # every boot so far has gone back to sleep and none followed for quiet_s: the wakes
    deadline = time.monotonic() + 30
    last, since = -1, time.monotonic()
    while True:
        n = len(_wakes(board))
        asleep = sum(1 for e in board.events if e.get("event") == "deepsleep") == n
        if n != last or not asleep:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return n
        assert time.monotonic() < deadline, board.events[-5:]
        time.sleep(0.02)


def _flash(tmp_path: Path, sleep_ms: int | None, sketch: str = SLEEPER) -> Path:
    # sleep_ms None: machine.deepsleep() with no time, the wake pins only
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        sketch.replace("SLEEP_MS", "" if sleep_ms is None else str(sleep_ms))
    )
    return flash


def test_deep_sleep_keeps_the_flash_and_rtc_memory_and_wakes_on_its_timer(
    tmp_path: Path,
) -> None:
    # before the fix, deepSleep() ended the VM without saving its files: a file written just
    # before machine.deepsleep() was gone when the board woke
    with EmulatedBoard("water-esp32", fs_dir=_flash(tmp_path, 300)) as board:
        wakes = _wait_wakes(board, 3)
    assert wakes[0] == "woke cause=1 reason=0 rtc=b'' files="
    assert wakes[1] == "woke cause=4 reason=4 rtc=b'x' files=boot0.txt"
    assert wakes[2] == "woke cause=4 reason=4 rtc=b'xx' files=boot0.txt,boot1.txt"
    assert (tmp_path / "flash" / "boot1.txt").read_text() == "written before sleep 1"


def test_rtc_memory_is_lost_when_the_power_goes(tmp_path: Path) -> None:
    with EmulatedBoard("water-esp32", fs_dir=_flash(tmp_path, None)) as board:
        _sleeping(board, 1)
        board.power_cycle()
        wakes = _wait_wakes(board, 2)
    assert wakes[1] == "woke cause=1 reason=0 rtc=b'' files=boot0.txt"  # the flash stays


def test_a_wake_pin_at_its_level_wakes_the_sleeping_chip(tmp_path: Path) -> None:
    # no timer: only the rain gauge's contact (EXT0, low) or the cover (EXT1, high) wakes it
    with EmulatedBoard("water-esp32", fs_dir=_flash(tmp_path, None)) as board:
        _sleeping(board, 1)
        board.set("flow.l_min", 12.0)  # not a wake source: the chip sleeps on
        time.sleep(0.5)
        assert len(_wakes(board)) == 1
        board.set("rain.tips", 1)
        assert _wait_wakes(board, 2)[1].startswith("woke cause=4 reason=2 ")  # EXT0_WAKE
        # this sketch sleeps without waiting for the contact to open: EXT0 is a level, so
        # the chip may wake again at once (water.py waits); then it sleeps for good
        n = _settled(board)
        board.set("cover.open", 1)
        assert _wait_wakes(board, n + 1)[n].startswith("woke cause=4 reason=3 ")  # EXT1_WAKE
        # the cover stays open: the chip wakes again at once
        assert _wait_wakes(board, n + 2)[n + 1].startswith("woke cause=4 reason=3 ")
        board.set("cover.open", 0)


def test_rtc_memory_refuses_more_than_the_chip_holds(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import machine\n"
        "try:\n    machine.RTC().memory(bytes(2049))\n"
        "except ValueError as e:\n    print('refused:', e)\n"
        "machine.RTC().memory(bytes(2048))\nprint('kept', len(machine.RTC().memory()))\n"
    )
    with EmulatedBoard("water-esp32", fs_dir=flash) as board:
        out = board.wait_output("kept 2048", timeout_s=20)
    assert "refused: buffer too long" in out


def test_deepsleep_0_arms_a_0_us_timer_and_wakes_at_once(tmp_path: Path) -> None:
    # ports/esp32/modmachine.c machine_sleep_helper: any time given arms the timer
    # (esp_sleep_enable_timer_wakeup(0)); only deepsleep() with none leaves it off
    with EmulatedBoard("water-esp32", fs_dir=_flash(tmp_path, 0)) as board:
        wakes = _wait_wakes(board, 3)
    assert wakes[1].startswith("woke cause=4 reason=4 ")  # TIMER_WAKE


# ports/esp32/modesp32.c v1.27.0: wake_on_ext0/ext1 take pin=/pins= and level= by name, both
# optional (left out, each keeps its setting); ext1's pins None keeps the pins, [] ends EXT1
KEEPER = """
import asyncio, esp32, machine
async def main():
  print("woke reason=%d" % machine.wake_reason())
  esp32.wake_on_ext0(pin=machine.Pin(27), level=esp32.WAKEUP_ALL_LOW)
  esp32.wake_on_ext0(level=esp32.WAKEUP_ALL_LOW)  # the pin stays
  esp32.wake_on_ext1([machine.Pin(33)], esp32.WAKEUP_ANY_HIGH)
  esp32.wake_on_ext1(None, esp32.WAKEUP_ANY_HIGH)  # the pins stay: the cover still wakes it
  esp32.wake_on_ext1(level=esp32.WAKEUP_ANY_HIGH)  # and again
  machine.deepsleep()
asyncio.run(main())
"""


def test_wake_sources_keep_what_the_arguments_left_out_leave(tmp_path: Path) -> None:
    with EmulatedBoard("water-esp32", fs_dir=_flash(tmp_path, None, KEEPER)) as board:
        _sleeping(board, 1)
        board.set("cover.open", 1)
        assert _wait_wakes(board, 2)[1] == "woke reason=3"  # EXT1: the pins were kept
        board.set("cover.open", 0)
        n = _settled(board)
        board.set("rain.tips", 1)
        assert _wait_wakes(board, n + 1)[n] == "woke reason=2"  # EXT0: the pin was kept


ENDER = """
import asyncio, esp32, machine
async def main():
  print("woke reason=%d" % machine.wake_reason())
  esp32.wake_on_ext1([machine.Pin(33)], esp32.WAKEUP_ANY_HIGH)
  esp32.wake_on_ext1([], esp32.WAKEUP_ANY_HIGH)  # an empty list ends EXT1
  machine.deepsleep(1500)
asyncio.run(main())
"""


def test_an_empty_pin_list_ends_ext1(tmp_path: Path) -> None:
    with EmulatedBoard("water-esp32", fs_dir=_flash(tmp_path, None, ENDER)) as board:
        _sleeping(board, 1)
        board.set("cover.open", 1)  # no EXT1 any more: the timer wakes it
        assert _wait_wakes(board, 2, timeout_s=10)[1] == "woke reason=4"
        board.set("cover.open", 0)


def test_lightsleep_passes_the_time_it_is_given(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import machine, time\nt = time.ticks_ms()\nmachine.lightsleep(400)\n"
        "print('slept', time.ticks_diff(time.ticks_ms(), t))\n"
    )
    with EmulatedBoard("water-esp32", fs_dir=flash) as board:
        out = board.wait_output("slept", timeout_s=20)
        board.wait_output("\r\n", timeout_s=5)
    slept = int(re.findall(r"slept (\d+)", bytes(board.serial_log).decode())[0])
    assert 400 <= slept < 2000, out
