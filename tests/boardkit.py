"""Helpers for tests that drive an emulated board with the real mpremote."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polekit.hil.emulator import EmulatedBoard

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def board_exec(board: EmulatedBoard, code: str, timeout_s: float = 60) -> str:
    """Run ``code`` on the board without resetting it (mpremote resume exec); its output,
    stripped. Fails with the board's traceback."""
    result = subprocess.run(
        [MPREMOTE, "connect", board.repl, "resume", "exec", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def board_exec_until(board: EmulatedBoard, code: str, want: str, timeout_s: float = 10) -> str:
    """Run ``code`` on the board until it prints ``want``: for what the board's hardware
    makes on its own schedule (a sensor streaming a frame a second), which a fixed sleep
    would miss on a busy machine. Its last output, for the caller to assert on."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = board_exec(board, code)
        if out == want or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def library_board(tmp_path_factory: Any) -> Iterator[EmulatedBoard]:
    """An emulated pole board with the node's libraries on its flash and nothing running
    (no main.py): for driving drivers and modules from the REPL. A fixture body."""
    from polekit.firmware.install import install

    flash = tmp_path_factory.mktemp("flash")
    install(flash, "pole-env-esp32", start=False)
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as b:
        yield b


def polekit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``polekit ARGS`` as a user runs it; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "polekit", *args], capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def polekit_emulate(*args: str) -> Iterator[dict[str, Any]]:
    """``polekit emulate ARGS --json`` in the background, as a user starts it: the ports it
    prints; on leaving, SIGTERM, and the command must exit cleanly (0)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "polekit", "emulate", *args, "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
