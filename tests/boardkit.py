"""Helpers for tests that drive an emulated board with the real mpremote."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
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


class Terminal:
    """``polekit ARGS`` on a pseudo-terminal that is its controlling terminal, as in a
    person's shell: with the terminal's line discipline in force, a 0x03 typed there is
    SIGINT for the command unless the command turned signals off."""

    def __init__(self, *args: str) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.cooked = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polekit", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,  # its own session, with this terminal as its own
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            env={**os.environ, "TERM": "xterm"},
        )
        self.out = bytearray()
        self._reading = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while self._reading:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    self.out.extend(os.read(self.master, 4096))
                except OSError:  # EIO: nobody has the terminal open any more
                    return

    def text(self) -> str:
        text = bytes(self.out).decode(errors="replace").replace("\r\n", "\n")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # colours and cursor moves off

    def wait_for(self, pattern: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.text(), re.M):
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text()[-2000:]}"
            time.sleep(0.05)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout_s: float = 10) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reading = False
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reading = False
        os.close(self.master)
        os.close(self.slave)
