"""How fast the emulated board runs MicroPython against an ESP32, and the CPU share that
brings it to the chip's speed (hil/throttle.py).

The measure is Pystone 1.2 as micropython-lib's pystone_lowmem (hil/vmlib/_pystone.py), the
program behind the published figure: an ESP32 at 240 MHz runs it at 1661 pystones/s with
MicroPython v1.12's official firmware (https://github.com/micropython/micropython/issues/5673,
500 passes, CPU at 240 MHz). A pass allocates, and the WebAssembly port collects garbage only
between calls from JavaScript, so the VM runs short rounds (RUN_PASSES) in separate calls.
"""

from __future__ import annotations

import statistics
from typing import Protocol

ESP32_PYSTONES = 1661  # per second, ESP32 at 240 MHz, MicroPython 1.12 (see above)
RUN_PASSES = 500


class Runs(Protocol):
    def exec(self, code: str) -> str: ...


def pystones(board: Runs, rounds: int = 9) -> float:
    """The board's median Pystone rate over ``rounds`` short runs (its REPL must be free)."""
    # timed around the call, not by Pystone's own sum: it subtracts the time of an empty loop,
    # and a throttled board may be stopped during that loop, which would inflate the rate
    run = (
        "from _pystone import pystones\nfrom time import ticks_ms, ticks_diff\n"
        f"t = ticks_ms()\npystones({RUN_PASSES})\nprint(ticks_diff(ticks_ms(), t))"
    )
    rates = [RUN_PASSES * 1000 / max(1, int(board.exec(run))) for _ in range(rounds)]
    return statistics.median(rates)


def chip_share(vm_pystones: float) -> float:
    """The CPU share at which a VM measured at ``vm_pystones`` runs as fast as an ESP32."""
    return min(1.0, ESP32_PYSTONES / vm_pystones)
