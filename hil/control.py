"""The emulated board's control channel: a Unix socket speaking JSON lines.

``polekit emulate`` serves one next to each board so that tests, the demo and people at a
shell can reach the board's physical world while the firmware runs. One request a line,
one reply a line:

    {"op": "set", "values": {"sht3x.temperature": 31.5, "adxl345.tilt": 12}} -> {"ok": true}
    {"op": "get", "paths": ["lamp.level"]}         -> {"ok": true, "values": {"lamp.level": 40.0}}
    {"op": "reset"} | {"op": "power-cycle", "off_s": 0.5}                -> {"ok": true}
    {"op": "line", "fault": "drop" | "corrupt", "bytes": 4}  (the RS-485 line) -> {"ok": true}
    {"op": "log", "tail": 2000}                     -> {"ok": true, "text": "...serial log..."}
    {"op": "ports"}                                 -> {"ok": true, "repl": ..., "uarts": {...}}
    {"op": "flash-read", "offset": 4096, "length": 64}  (raw SPI flash) -> {"ok": true, "hex": ".."}
    {"op": "strap-reset", "download": true}  (reset with BOOT held: the ROM bootloader) -> ok

Errors come back as {"error": "<what and how to fix it>"}.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from polekit.hil import socket_path
from polekit.hil.emulator import ControlError, EmulatedBoard


class ControlServer:
    """Serves ``board``'s control channel on the Unix socket ``path`` (in a thread)."""

    def __init__(self, board: EmulatedBoard, path: Path | str) -> None:
        self.board = board
        self.path = str(path)
        socket_path.claim(self.path)  # OSError when a file or a live board is there
        handler = self._handler()
        self._server = socketserver.ThreadingUnixStreamServer(self.path, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._server.shutdown()
        self._server.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """One request to one reply (also usable in-process)."""
        b = self.board
        op = req.get("op")
        try:
            if op == "set":
                for path, value in dict(req.get("values", {})).items():
                    b.set(path, value)
                return {"ok": True}
            if op == "get":
                return {"ok": True, "values": {p: b.get(p) for p in req.get("paths", [])}}
            if op == "reset":
                b.reset()
                return {"ok": True}
            if op == "power-cycle":
                b.power_cycle(float(req.get("off_s", 0.1)))
                return {"ok": True}
            if op == "line":
                line = b.rs485_line
                if line is None:
                    return {"error": "this board has no RS-485 line"}
                n = int(req.get("bytes", 1))
                (line.drop_next if req.get("fault") == "drop" else line.corrupt_next)(n)
                return {"ok": True}
            if op == "log":
                return {
                    "ok": True,
                    "text": bytes(b.serial_log[-int(req.get("tail", 4000)) :]).decode(
                        errors="replace"
                    ),
                }
            if op == "ports":
                return {"ok": True, "repl": b.repl, "uarts": b.uarts}
            if op == "flash-read":
                offset, length = int(req.get("offset", 0)), int(req.get("length", 0))
                size = b.board.flash_size_mb * 1024 * 1024
                if offset < 0 or length < 0 or offset + length > size:
                    return {"error": f"flash-read outside the {size}-byte flash"}
                return {"ok": True, "hex": b.read_spi_flash(offset, length).hex()}
            if op == "strap-reset":
                b.strap_reset(download=bool(req.get("download")))
                return {"ok": True}
            return {
                "error": f"unknown op {op!r}; ops: set, get, reset, power-cycle, line, log, "
                "ports, flash-read, strap-reset"
            }
        except ControlError as exc:
            return {"error": str(exc)}

    def _handler(self) -> type[socketserver.StreamRequestHandler]:
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    try:
                        req = json.loads(line)
                        reply = (
                            server.handle(req)
                            if isinstance(req, dict)
                            else {"error": "send a JSON object"}
                        )
                    except ValueError as exc:
                        reply = {"error": f"not JSON: {exc}"}
                    self.wfile.write((json.dumps(reply) + "\n").encode())

        return Handler


def call(path: Path | str, request: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
