"""hil/throttle.py holds a real process to its CPU share in CPU time it really got, also on a
host that other processes keep busy (a throttle counted in wall-clock slices gave a busy
process half its share next to two CPU hogs on this 2-core machine), and leaves it running
when it stops."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from polekit.hil.throttle import CpuThrottle, cpu_seconds

BUSY = [sys.executable, "-c", "while True: pass"]


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(BUSY)
    yield proc
    proc.kill()
    proc.wait()


def share_got(proc: subprocess.Popen[bytes], seconds: float) -> float:
    cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
    assert cpu0 is not None and cpu1 is not None
    return (cpu1 - cpu0) / (wall1 - wall0)


@pytest.mark.parametrize("hogs", [0, 2])
def test_a_busy_process_gets_its_share_of_the_cpu_also_next_to_cpu_hogs(busy, hogs):
    others = [subprocess.Popen(BUSY) for _ in range(hogs)]
    throttle = CpuThrottle(lambda: busy.pid, 0.2)
    try:
        time.sleep(0.3)
        got = share_got(busy, 2.0)
    finally:
        throttle.stop()
        for other in others:
            other.kill()
            other.wait()
    print(f"share 0.2 next to {hogs} CPU hogs: got {got:.3f} CPU-seconds a second")
    assert 0.2 * 0.8 <= got <= 0.2 * 1.25


def test_stop_leaves_the_process_running(busy):
    throttle = CpuThrottle(lambda: busy.pid, 0.05)
    time.sleep(0.5)
    throttle.stop()
    assert share_got(busy, 0.5) > 0.5  # a stopped process would get none


def test_a_share_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="CPU share"):
        CpuThrottle(lambda: None, 0)
