"""A board's REPL as the field tools use it: mpremote's serial transport (a port path or an
``rfc2217://`` URL), in the raw REPL, with the few board operations deploy needs."""

from __future__ import annotations

import json
import time
from typing import Any

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport


class LinkError(RuntimeError):
    """The board cannot be reached or did something unexpected; the message says which
    port and what to try."""


# Runs on the board: sha256 of each given file (None when missing), in one round trip.
_HASHES = """
import hashlib, binascii, json
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(b if n == 512 else b[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
print(json.dumps({p: _h(p) for p in %r}))
"""

# Runs on the board: every file under the given folders (so deploy removes stale ones).
_WALK = """
import os, json
def _w(d, out):
    try:
        items = list(os.ilistdir(d))
    except OSError:
        return out
    for it in items:
        p = d + '/' + it[0]
        if it[1] & 0x4000:
            _w(p, out)
        else:
            out.append(p[1:])
    return out
out = []
for d in %r:
    _w('/' + d, out)
print(json.dumps(out))
"""

_INFO = """
import sys, json, machine, gc, os
try:
    st = os.statvfs('/')
    free = st[0] * st[3]
except Exception:
    free = -1
print(json.dumps({
    'micropython': '.'.join(str(v) for v in sys.implementation.version[:3]),
    'mpy': getattr(sys.implementation, '_mpy', 0),
    'machine': getattr(sys.implementation, '_machine', sys.platform),
    'unique_id': ''.join('%02x' % b for b in machine.unique_id()),
    'flash_free': free,
}))
"""


class BoardLink:
    """The raw REPL of the board on ``port``; a context manager."""

    def __init__(self, port: str, baudrate: int = 115200) -> None:
        self.port = port
        try:
            self.transport = SerialTransport(port, baudrate=baudrate)
        except (TransportError, OSError) as exc:
            raise LinkError(
                f"{port}: cannot open the serial port ({exc}); is the board plugged in, and "
                "may you use it (`polekit doctor`)?"
            ) from None
        self.enter()

    def enter(self, timeout_s: float = 10) -> None:
        """Stop whatever runs (Ctrl-C) and enter the raw REPL."""
        try:
            self.transport.enter_raw_repl(soft_reset=False, timeout_overall=timeout_s)
        except TransportError as exc:
            raise LinkError(
                f"{self.port}: no MicroPython REPL answers ({exc}). Is MicroPython flashed "
                "(`polekit flash`) and the port the board's?"
            ) from None

    def close(self) -> None:
        try:
            self.transport.exit_raw_repl()
        finally:
            self.transport.close()

    def __enter__(self) -> BoardLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(self, code: str, timeout_s: float = 30) -> str:
        """Run ``code``; its output. LinkError with the board's traceback on failure."""
        try:
            out = self.transport.exec(code)
        except TransportExecError as exc:
            raise LinkError(f"{self.port}: the board failed:\n{exc.error_output}") from None
        except TransportError as exc:
            raise LinkError(f"{self.port}: lost the board ({exc})") from None
        return out.decode(errors="replace").strip()

    def json(self, code: str) -> Any:
        out = self.exec(code)
        try:
            return json.loads(out.splitlines()[-1])
        except (ValueError, IndexError):
            raise LinkError(
                f"{self.port}: unexpected answer from the board: {out[-300:]!r}"
            ) from None

    def info(self) -> dict[str, Any]:
        """MicroPython version, .mpy version, unique id (the chip's base MAC), free flash."""
        return dict(self.json(_INFO))

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 hex of each file (paths without the leading /), None when missing."""
        found = self.json(_HASHES % (["/" + p for p in paths],))
        return {p[1:]: h for p, h in found.items()}

    def files_under(self, folders: list[str]) -> list[str]:
        return list(self.json(_WALK % (folders,)))

    def write(self, path: str, data: bytes, progress: Any = None) -> None:
        """Write a file, creating its folders."""
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/" + "/".join(parts[:i])
            self.exec(f"import os\ntry:\n os.mkdir({folder!r})\nexcept OSError:\n pass")
        try:
            self.transport.fs_writefile(
                "/" + path, data, chunk_size=512, progress_callback=progress
            )
        except (TransportError, OSError) as exc:
            raise LinkError(f"{self.port}: writing /{path} failed: {exc}") from None

    def remove(self, path: str) -> None:
        self.exec(f"import os\nos.remove({'/' + path!r})")

    def hard_reset(self) -> None:
        """machine.reset(): the chip restarts (the port stays open)."""
        try:
            self.transport.exec_raw_no_follow("import machine\nmachine.reset()")
        except TransportError:
            pass
        self.transport.in_raw_repl = False
        time.sleep(0.3)

    def wait_for_output(self, marks: tuple[bytes, ...], timeout_s: float = 30) -> bytes:
        """Read what the board prints until one of ``marks`` is followed by a newline (the
        friendly REPL, e.g. after a reset); all that was read."""
        serial = self.transport.serial
        seen = b""
        saved, serial.timeout = serial.timeout, 0.2
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                seen += serial.read(max(1, serial.in_waiting))
                for mark in marks:
                    at = seen.find(mark)
                    if at >= 0 and b"\n" in seen[at:]:
                        return seen
            return seen
        finally:
            serial.timeout = saved
