"""Put the node firmware, its board map and a config into a flash folder.

The emulated board boots from such a folder (``polekit emulate`` installs the firmware
this way unless ``--bare``); ``polekit deploy`` puts the same bundle on a real board over
its REPL. Both take their files from ``polekit.firmware.deploy.bundle``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from polekit.boards import Board
from polekit.firmware.deploy.bundle import DEFAULT_MPY, board_map, build

__all__ = ["board_map", "install"]


def install(
    flash: Path | str,
    board: str | Board,
    config: dict[str, Any] | None = None,
    start: bool = True,
    compiled: bool = False,
) -> Path:
    """Write /lib/node, /lib/protocols, /lib/umqtt, /main.py, /board.json and /config.json
    into ``flash`` (a host folder). An existing /config.json and /state.json are kept unless
    ``config`` is given; ``config`` is laid over the board's reference settings (its
    ``[config]`` table).
    With ``start=False`` there is no /main.py: the libraries only, nothing runs. With
    ``compiled=True`` the libraries go in as .mpy (main.py stays source, as it must)."""
    flash = Path(flash)
    bundle = build(board, DEFAULT_MPY if compiled else None)
    for lib in ("lib/node", "lib/protocols", "lib/umqtt"):
        if (flash / lib).exists():
            shutil.rmtree(flash / lib)
    for path, data in bundle.files.items():
        if path == "main.py" and not start:
            continue
        out = flash / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    # the files above are slot A, confirmed: an update's boot record must not point elsewhere
    for record in ("ota/boot.json", "ota/boot.json.new"):
        (flash / record).unlink(missing_ok=True)
    config_file = flash / "config.json"
    if config is not None or not config_file.exists():
        config_file.write_text(json.dumps({**bundle.config, **(config or {})}))
    return flash
