"""The emulated board: the real MicroPython VM behind a pseudo-terminal, as a USB board is.

``EmulatedBoard`` starts Node with ``hil/js/board.mjs`` (the board's "hardware"; the VM
runs in a worker thread, one per boot) and bridges its serial bytes to a pseudo-terminal,
so mpremote, pyserial and pytest-embedded open ``board.repl`` exactly like /dev/ttyUSB0.
The flash persists across soft resets for the board's lifetime, and in ``fs_dir`` on the
host if one is given. Everything the board printed is kept in ``serial_log``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

from polekit.boards import Board, load
from polekit.hil.mpvm import VMLIB, MicroPythonNotFoundError, find_micropython

_BOARD_JS = Path(__file__).with_name("js") / "board.mjs"


class EmulatorError(RuntimeError):
    """The emulated board could not start or stopped answering; the message says why."""


class EmulatedBoard:
    """One emulated board; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, board: str | Board, fs_dir: Path | str | None = None) -> None:
        self.board = board if isinstance(board, Board) else load(board)
        self._own_fs = fs_dir is None
        self.fs_dir = Path(fs_dir) if fs_dir else Path(tempfile.mkdtemp(prefix="polekit-flash-"))
        self.fs_dir.mkdir(parents=True, exist_ok=True)
        self.serial_log = bytearray()
        self.events: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._master = self._slave = -1
        self.repl = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._config_file = ""

    def __enter__(self) -> EmulatedBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0) -> EmulatedBoard:
        """Boot the board; returns when its REPL is ready on ``self.repl``."""
        node = shutil.which("node")
        if node is None:
            raise MicroPythonNotFoundError(
                "Node.js is needed for the emulated board: install `nodejs`"
            )
        config = {
            "mjs": str(find_micropython()),
            "heapBytes": self.board.heap_bytes,
            "board": self.board.name,
            "chip": self.board.chip,
            "fsDir": str(self.fs_dir),
            "romDir": str(VMLIB),
        }
        fd, self._config_file = tempfile.mkstemp(suffix=".json", prefix="polekit-board-")
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)  # no echo, no line editing: a serial port passes bytes as they are
        self.repl = os.ttyname(self._slave)
        self._proc = subprocess.Popen(
            [node, str(_BOARD_JS), self._config_file],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._pump, name=f"board-{self.board.name}", daemon=True
        )
        self._thread.start()
        threading.Thread(target=self._read_events, daemon=True).start()
        self.wait_event("booted", timeout_s)
        return self

    def wait_event(self, name: str, timeout_s: float = 10.0, after: int = 0) -> dict[str, Any]:
        """Wait for board event ``name`` (booted, soft-reset...) after index ``after``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in self.events[after:]:
                if e.get("event") == name:
                    return e
                if e.get("event") == "crash-loop":
                    crashes = [x for x in self.events if x.get("event") == "vm-crash"]
                    raise EmulatorError(f"the emulated VM keeps crashing: {crashes[-1:]}")
            if self._proc is not None and self._proc.poll() is not None:
                raise EmulatorError(
                    f"the emulator exited ({self._proc.returncode}); events: {self.events[-5:]}"
                )
            time.sleep(0.01)
        raise EmulatorError(f"no {name!r} from the emulated {self.board.name} within {timeout_s} s")

    def _read_events(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append(
                    {"event": "stderr", "text": line.decode(errors="replace").rstrip()}
                )

    def _pump(self) -> None:
        assert (
            self._proc is not None
            and self._proc.stdin is not None
            and self._proc.stdout is not None
        )
        out = self._proc.stdout.fileno()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master, out], [], [], 0.1)
            except (OSError, ValueError):
                return
            if self._master in ready:
                try:
                    data = os.read(self._master, 4096)
                    self._proc.stdin.write(data)
                except OSError:
                    return
            if out in ready:
                data = os.read(out, 65536)
                if not data:
                    return
                self.serial_log += data
                try:
                    os.write(self._master, data)
                except OSError:
                    return

    def stop(self) -> None:
        """Power off: flash contents are saved to ``fs_dir`` first."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        if self._config_file:
            os.unlink(self._config_file)
            self._config_file = ""
