"""How a battery water node starts (firmware/node/start.py), on the emulated ESP32: a start
that fails must not leave the node awake at the REPL (a flat battery in days) but sleep for
its report interval and try again, and the start-up crash count must be cleared by a node
that started, though its main never returns (each wake ends in deep sleep)."""

from __future__ import annotations

import json
from pathlib import Path

from polekit.firmware.install import install
from polekit.hil.emulator import EmulatedBoard

from boardkit import board_exec

BOARD = "water-esp32"


def _broken_flash(tmp_path: Path, crashes: int = 0) -> Path:
    flash = install(
        tmp_path / "flash",
        BOARD,
        {"device_code": "WTR1", "broker_host": "127.0.0.1", "report_s": 7},
        compiled=True,
    )
    board_map = json.loads((flash / "board.json").read_text())
    # a board file from an older bundle, without the battery divider: WaterNode() fails
    board_map["sensors"] = [s for s in board_map["sensors"] if s["name"] != "battery"]
    (flash / "board.json").write_text(json.dumps(board_map))
    if crashes:
        (flash / "crashes.json").write_text(json.dumps({"count": crashes}))
    return flash


def test_a_water_node_that_cannot_start_sleeps_its_report_interval_and_retries(
    tmp_path: Path,
) -> None:
    flash = _broken_flash(tmp_path)
    with EmulatedBoard(BOARD, fs_dir=flash) as board:
        sleep = board.wait_event("deepsleep", timeout_s=30)
        assert sleep["ms"] == 7000  # its report_s, not the REPL for ever
        log = bytes(board.serial_log).decode(errors="replace")
        assert "start failed (1/3 before safe mode)" in log
        assert "asleep for 7 s, then it tries again" in log
        assert json.loads((flash / "crashes.json").read_text()) == {"count": 1}
        board.wait_event("wake", timeout_s=15)  # the timer: it tries again
        board.wait_event("deepsleep", timeout_s=30, after=len(board.events))
        assert json.loads((flash / "crashes.json").read_text()) == {"count": 2}


def test_a_water_node_in_safe_mode_sleeps_too(tmp_path: Path) -> None:
    flash = _broken_flash(tmp_path, crashes=3)
    with EmulatedBoard(BOARD, fs_dir=flash) as board:
        sleep = board.wait_event("deepsleep", timeout_s=30)
        assert sleep["ms"] == 7000
        assert "safe mode: the node crashed at start 3 times" in board.wait_output("tries again")


def test_started_clears_the_crash_count_of_a_node_whose_main_never_returns(
    tmp_path: Path,
) -> None:
    flash = install(tmp_path / "flash", BOARD, start=False, compiled=True)
    (flash / "crashes.json").write_text(json.dumps({"count": 2}))
    with EmulatedBoard(BOARD, fs_dir=flash) as board:
        out = board_exec(
            board,
            "from node.start import started\nstarted()\nprint(open('/crashes.json').read())",
        )
        assert json.loads(out) == {"count": 0}
