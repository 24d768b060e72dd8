"""Helpers for tests that drive an emulated board with the real mpremote."""

from __future__ import annotations

import subprocess
import sys
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


def library_board(tmp_path_factory: Any) -> Iterator[EmulatedBoard]:
    """An emulated pole board with the node's libraries on its flash and nothing running
    (no main.py): for driving drivers and modules from the REPL. A fixture body."""
    from polekit.firmware.install import install

    flash = tmp_path_factory.mktemp("flash")
    install(flash, "pole-env-esp32", start=False)
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as b:
        yield b
