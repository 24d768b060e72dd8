"""The emulated board's ROM modules (hil/vmlib: machine, the virtual peripherals, socket...),
precompiled to .mpy once and cached.

On the chip these modules are in flash and take no heap. In the VM they are imported at
boot, and importing source means compiling it on the board's heap: the compiler's garbage is
collected afterwards, but between the module objects it leaves holes, and a heap in pieces
refuses a large block long before it is full (with source ROM modules the largest free block
after boot was 69 KB of the 110 KB free; precompiled, 96 KB). So the board loads .mpy files,
compiled by the same mpy-cross the node bundle uses, cached by the sources' hash in the
user's cache folder; when they cannot be compiled the board loads the sources and says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from polekit.hil.mpvm import VMLIB

log = logging.getLogger("polekit.hil.vmrom")


def _cache_root() -> Path:
    given = os.environ.get("POLEKIT_CACHE_DIR")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "polekit"


def _digest(mpy: str) -> str:
    h = hashlib.sha256(mpy.encode())
    for src in sorted(VMLIB.iterdir()):
        if src.is_file():
            h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def rom_dir() -> Path:
    """The folder the board loads its ROM from: the cached .mpy build of hil/vmlib, made
    now if missing; hil/vmlib itself (sources) when it cannot be made."""
    from polekit.firmware.deploy.bundle import DEFAULT_MPY, BundleError, compile_module

    folder = _cache_root() / "rom" / _digest(DEFAULT_MPY)
    if folder.is_dir():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
        try:
            for src in sorted(VMLIB.iterdir()):
                if not src.is_file():
                    continue
                if src.suffix == ".py":
                    data = compile_module(src.read_bytes(), f"rom/{src.name}", DEFAULT_MPY)
                    (tmp / f"{src.stem}.mpy").write_bytes(data)
                else:
                    shutil.copy(src, tmp / src.name)
            try:
                tmp.rename(folder)  # whole or not at all; another board may have won the race
            except OSError:
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, BundleError) as exc:
        log.warning("emulated board: ROM modules load as source (heap in pieces): %s", exc)
        return VMLIB
    return folder
