"""`polekit monitor` on an emulated board (timestamps, keys to the REPL, Ctrl-] quits, reset
causes explained); `polekit doctor` is tested in test_doctor.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from polekit.firmware.deploy.monitor import annotate
from polekit.hil.emulator import EmulatedBoard

from boardkit import Terminal, polekit_emulate


def test_reset_causes_and_levels_are_explained() -> None:
    style, text = annotate("rst:0xf (BROWNOUT_RST),boot:0x13 (SPI_FAST_FLASH_BOOT)")
    assert style == "magenta" and text.endswith(
        "<- brownout: the supply dipped (check the pole's power)"
    )
    assert annotate("rst:0x7 (TG0WDT_SYS_RESET)")[1].endswith("a task hung (the node's watchdog)")
    assert annotate("Traceback (most recent call last):")[0] == "bold red"
    assert annotate("polekit: warning: the loop was blocked for 120 ms")[0] == "yellow"
    assert annotate("polekit node 371600PL000001C up, unit 1")[0] == "green"
    assert annotate("plain text") == ("", "plain text")


def test_ctrl_c_in_the_monitor_stops_the_node_and_ctrl_bracket_quits(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    # the node's watchdog would reset the board 5 s after Ctrl-C (as a real ESP32's does):
    # off here, so a slow machine has the REPL for as long as the test needs it
    (fs / "config.json").write_text('{"unit": 1, "watchdog_ms": 0}')
    with polekit_emulate("--fs", str(fs)) as ports:
        term = Terminal("monitor", "--port", ports["repl"])
        try:
            term.wait_for("Ctrl-] quits")
            term.type(b"\x03")  # Ctrl-C: for the board, not for the monitor
            term.wait_for("KeyboardInterrupt")  # the node's loop was interrupted...
            term.wait_for(r"^\d\d:\d\d:\d\d\.\d{3} >>> ")  # ...and the REPL prompt shows
            assert term.proc.poll() is None, term.text()
            term.type(b"print(6 * 7)\r")
            term.wait_for(r"^\d\d:\d\d:\d\d\.\d{3} 42$")
            assert termios.tcgetattr(term.slave)[3] & termios.ISIG == 0  # raw while it runs
            term.type(b"\x1d")  # Ctrl-]
            assert term.wait() == 0, term.text()
            assert termios.tcgetattr(term.slave) == term.cooked  # the terminal as it was
            lines = term.text().splitlines()
            assert lines[-1] == "--- monitor closed ---"
            # every other line is the board's, stamped: nothing of the monitor's own (the
            # board's KeyboardInterrupt traceback is the board's)
            unstamped = [ln for ln in lines[1:-1] if not re.match(r"\d\d:\d\d:\d\d\.\d{3} ", ln)]
            assert not unstamped, term.text()
        finally:
            term.close()


def test_the_monitor_restores_the_terminal_when_the_board_goes_away(tmp_path: Path) -> None:
    with polekit_emulate("--fs", str(tmp_path / "fs")) as ports:
        term = Terminal("monitor", "--port", ports["repl"])
        term.wait_for("Ctrl-] quits")
        assert termios.tcgetattr(term.slave)[3] & termios.ISIG == 0
    try:  # the board is gone (its emulator stopped): the port fails under the monitor
        code = term.wait()
        text = term.text()
        assert code == 1, text
        assert f"{ports['repl']}:" in text and "polekit doctor" in text
        assert "Traceback" not in text
        assert termios.tcgetattr(term.slave) == term.cooked
    finally:
        term.close()


def test_monitor_shows_the_log_with_timestamps_and_passes_keys(tmp_path: Path) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs") as board:
        proc = subprocess.Popen(
            [sys.executable, "-m", "polekit", "monitor", "--port", board.repl],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},  # piped, as into `tee`: lines still come at once
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        out = bytearray()
        chunks = iter(lambda: proc.stdout.read1(4096), b"")  # as it comes, until the end
        reader = threading.Thread(target=lambda: [out.extend(c) for c in chunks], daemon=True)
        reader.start()
        proc.stdin.write(b"print('hello', 6 * 7)\n")  # typed keys wait until the port is open
        proc.stdin.flush()
        board.wait_output("hello 42")
        stamped = re.compile(rb"^\d\d:\d\d:\d\d\.\d{3} hello 42$", re.M)
        deadline = time.monotonic() + 10
        while not stamped.search(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.stdin.write(b"\x1d")  # Ctrl-]
        proc.stdin.flush()
        proc.wait(timeout=10)
        reader.join(timeout=10)
    text = out.decode()
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert stamped.search(out), text
    assert "Ctrl-] quits" in text and "monitor closed" in text
