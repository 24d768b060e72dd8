"""The "both cores busy" load of issue 19's 100 ms target: a CPU hog (a tight loop, one
core) and a disk writer (64 KiB writes, each followed by an fsync, at a steady rate) in
the file system of the gateway's data folder, each a process of its own, started for the
measured window and stopped after it. Both gateways of a side-by-side run get the same
load, so their ratios compare.

The disk writer keeps its rate with a fixed schedule (it does not catch up after a slow
fsync: a disk that cannot keep up shows as a lower achieved rate, printed with the
results), and rewrites the same 64 MiB of its file, so a long run does not fill the disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CHUNK_BYTES = 64 * 1024
DISK_RATE_BYTES_S = 4 * 1024 * 1024
FILE_BYTES = 64 * 1024 * 1024  # the writer wraps around within this much of its file

_HOG = "while True:\n    pass\n"

_WRITER = """
import os, signal, sys, time
path, rate, chunk, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def stop(*_):
    raise SystemExit
signal.signal(signal.SIGTERM, stop)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
block = os.urandom(chunk)
every = chunk / rate
start = next_at = time.monotonic()
offset = written = 0
try:
    while True:
        os.pwrite(fd, block, offset)
        os.fsync(fd)
        written += chunk
        offset = (offset + chunk) % size
        next_at += every
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()  # behind: no catching up in a burst
finally:
    print(written, time.monotonic() - start, flush=True)
"""


def describe(rate_bytes_s: float = DISK_RATE_BYTES_S) -> str:
    """One line for a table's header: what the load is."""
    return (
        f"load: a CPU hog (a tight loop on one core) and a disk writer "
        f"({rate_bytes_s / 1024 / 1024:g} MiB/s in {CHUNK_BYTES // 1024} KiB writes + fsync, "
        "in the data folder's file system) during the measured window"
    )


class BusyLoad:
    """The CPU hog and the disk writer, running while the ``with`` block runs. ``folder``
    is where the writer's file goes (the gateway's data folder, or beside it: the same
    file system). ``achieved`` is the writer's measured rate once the block is done."""

    def __init__(self, folder: Path, rate_bytes_s: float = DISK_RATE_BYTES_S) -> None:
        self.folder = Path(folder)
        self.rate_bytes_s = rate_bytes_s
        self.achieved_bytes_s: float | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._file = self.folder / "busy-disk-writer.bin"

    def __enter__(self) -> BusyLoad:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._procs.append(subprocess.Popen([sys.executable, "-c", _HOG]))
        argv = [sys.executable, "-c", _WRITER, str(self._file), str(self.rate_bytes_s)]
        argv += [str(CHUNK_BYTES), str(FILE_BYTES)]
        self._procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
        return self

    def __exit__(self, *exc: object) -> None:
        hog, writer = self._procs
        hog.kill()
        hog.wait()
        writer.terminate()  # it prints what it wrote, then ends
        try:
            out, _ = writer.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            writer.kill()
            out, _ = writer.communicate()
        lines = out.split()
        if len(lines) >= 2:
            written, elapsed = float(lines[-2]), float(lines[-1])
            self.achieved_bytes_s = written / elapsed if elapsed > 0 else None
        self._procs = []
        try:
            os.unlink(self._file)
        except FileNotFoundError:
            pass

    def summary(self) -> str:
        """The writer's achieved rate against the asked one."""
        if self.achieved_bytes_s is None:
            return "disk writer: no write finished"
        return (
            f"disk writer achieved {self.achieved_bytes_s / 1024 / 1024:.2f} of "
            f"{self.rate_bytes_s / 1024 / 1024:g} MiB/s"
        )


def _sleep_check() -> None:  # pragma: no cover - a manual check: python -m peerkit.busy
    with BusyLoad(Path(".")) as load:
        time.sleep(3)
    print(load.summary())


if __name__ == "__main__":
    _sleep_check()
