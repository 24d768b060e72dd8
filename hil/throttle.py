"""Run an emulated board at a share of the host's CPU: the chip's speed instead of the VM's.

The WebAssembly VM runs MicroPython many times faster than a 240 MHz ESP32 (hil/chip_speed.py
measures by how much), so loop stalls, the watchdog and timing budgets that matter on the chip
never show. The board's Node process (the VM's worker and the "hardware" around it) is stopped
and continued in slices of ``slice_s``: it runs ``share`` of each slice, while time (ticks_ms,
the UART's baud rate, the watchdog) goes on at the wall clock's pace, as on the chip.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable


class CpuThrottle:
    """Holds the process ``pid()`` names to ``share`` (0 < share <= 1) of the CPU until
    ``stop()``, which always leaves it running."""

    def __init__(self, pid: Callable[[], int | None], share: float, slice_s: float = 0.05):
        if not 0 < share <= 1:
            raise ValueError(f"a CPU share is more than 0 and at most 1, not {share}")
        self.pid = pid
        self.share = share
        self.slice_s = slice_s
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

    def _run(self) -> None:
        while not self._done.is_set():
            time.sleep(self.share * self.slice_s)
            with self._lock:
                if self._done.is_set() or self.share >= 1:
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
