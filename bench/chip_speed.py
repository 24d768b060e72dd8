"""The emulated board's speed against an ESP32's, and what --hil-chip-speed achieves.

    .venv/bin/python bench/chip_speed.py [--board pole-env-esp32] [--rounds 15]

Pystone 1.2 (micropython-lib's pystone_lowmem, hil/vmlib/_pystone.py) in the board's VM, in
short rounds (the WebAssembly port collects garbage only between calls from JavaScript),
against the published ESP32 figure: 1661 pystones/s at 240 MHz, MicroPython 1.12
(https://github.com/micropython/micropython/issues/5673). Then the same at the CPU share that
makes the board as fast as the chip (hil/throttle.py).
"""

from __future__ import annotations

import argparse

from polekit.hil.chip_speed import ESP32_PYSTONES, chip_share, pystones
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.pytest_plugin import Board


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", default="pole-env-esp32")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with EmulatedBoard(args.board) as target:
        board = Board(target)
        vm = pystones(board, args.rounds)
        print(f"VM      {vm:8.0f} pystones/s")
        print(f"ESP32   {ESP32_PYSTONES:8.0f} pystones/s (240 MHz, MicroPython 1.12)")
        print(f"ratio   {vm / ESP32_PYSTONES:8.1f}x the chip")
        share = chip_share(vm)
        target.throttle(share)
        slowed = pystones(board, max(3, args.rounds // 3))
        print(
            f"share   {share:8.3f} of the CPU: {slowed:.0f} pystones/s, "
            f"{slowed / ESP32_PYSTONES:.2f} of the chip's speed (uncorrected)"
        )


if __name__ == "__main__":
    main()
