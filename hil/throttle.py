"""Run an emulated board at a share of the host's CPU: the chip's speed instead of the VM's.

The WebAssembly VM runs MicroPython many times faster than a 240 MHz ESP32 (hil/chip_speed.py
measures by how much), so loop stalls, the watchdog and timing budgets that matter on the chip
never show. The board's Node process (the VM's worker and the "hardware" around it) is stopped
and continued so that it gets ``share`` CPU-seconds per wall-clock second, while time
(ticks_ms, the UART's baud rate, the watchdog) goes on at the wall clock's pace, as on the chip.

The share is counted in CPU time the process really got (the kernel's per-thread run time in
/proc), not in wall time it was let run: on a busy host a process that is let run for a slice
may get a fraction of it, and a board held to wall-clock slices then runs slower than the
chip, by however much the rest of the host happens to load it (one full test run made a
boot-time read time out that way). Here it stays continued until it has had its CPU time, so
it keeps the chip's speed as long as the host has that much to give. Idle time does not build
up credit beyond one slice: a board that waited on its UART does not then run a burst at the
VM's speed. Without /proc (not Linux) the share falls back to wall-clock slices.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """CPU time the process ``pid`` has had, all its threads, in seconds; None without /proc.

    Each thread's scheduler run time (``/proc/<pid>/task/<tid>/schedstat``, nanoseconds) where
    the kernel keeps it, else the process's user and system time in clock ticks (``stat``).
    Threads that ended take their run time with them: the VM's worker lives as long as the
    process, so that is what the throttle counts."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    try:
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:  # a thread that just ended
                continue
        return total / 1e9
    except (OSError, ValueError, IndexError):  # no schedstat in this kernel
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


class CpuThrottle:
    """Holds the process ``pid()`` names to ``share`` (0 < share <= 1) of one CPU until
    ``stop()``, which always leaves it running."""

    def __init__(self, pid: Callable[[], int | None], share: float, slice_s: float = 0.05):
        if not 0 < share <= 1:
            raise ValueError(f"a CPU share is more than 0 and at most 1, not {share}")
        self.pid = pid
        self.share = share
        self.slice_s = slice_s
        self.stopped_s = 0.0  # wall time the process was held stopped, for the curious
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-throttle", daemon=True)
        self._thread.start()

    def _signal(self, sig: signal.Signals) -> None:
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # the board is being powered off
                pass

    def _cpu(self) -> float | None:
        pid = self.pid()
        return None if pid is None else cpu_seconds(pid)

    def _run(self) -> None:
        if self.share >= 1:
            return
        if self._cpu() is None:
            self._run_by_wall_clock()
            return
        cap = self.share * self.slice_s  # the most CPU time idle waiting may save up
        budget = cap  # CPU seconds the process may still use
        wall, cpu = time.monotonic(), self._cpu()
        running = True
        while not self._done.is_set():
            if budget > 0:
                # let it run until it may have used its budget (one thread at full speed);
                # on a busy host it will have had less, and runs on
                self._done.wait(max(0.0005, budget))
            else:
                self._done.wait(max(0.0005, -budget / self.share))  # until it is owed again
            now, used = time.monotonic(), self._cpu()
            if used is None:  # the board was powered off or restarted: count afresh
                wall, cpu, budget = now, self._cpu(), cap
                continue
            if cpu is None:
                cpu = used
            budget = min(cap, budget + self.share * (now - wall) - (used - cpu))
            if not running:
                self.stopped_s += now - wall
            wall, cpu = now, used
            with self._lock:
                if self._done.is_set():
                    break
                if budget > 0 and not running:
                    self._signal(signal.SIGCONT)
                    running = True
                elif budget <= 0 and running:
                    self._signal(signal.SIGSTOP)
                    running = False

    def _run_by_wall_clock(self) -> None:
        while not self._done.is_set():
            time.sleep(self.share * self.slice_s)
            with self._lock:
                if self._done.is_set():
                    continue
                self._signal(signal.SIGSTOP)
            self._done.wait((1 - self.share) * self.slice_s)
            with self._lock:
                self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """End the throttling; the process runs freely from here."""
        with self._lock:
            self._done.set()
            self._signal(signal.SIGCONT)
        self._thread.join(timeout=2)
