"""Helpers for tests that drive an emulated board with the real mpremote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
