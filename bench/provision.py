"""Field tooling costs on emulated boards: deploy time against the bundle's size, and flash
throughput against the serial line's limit.

    .venv/bin/python bench/provision.py [--image-kib 256]

Deploy: the bundle's bytes over the REPL, against the time those bytes need on a 115200-baud
line (10 bits a byte). The emulated REPL is a pseudo-terminal without a baud rate, so its
ratio shows the deploy's own overhead (raw-REPL round trips, the maintenance reset, the
self-test), not the wire's.

Flash: the emulated ROM bootloader takes bytes in at its UART's baud rate, so the ratio of
bytes written a second to the line's limit (baud / 10) is what a real board would show,
less the USB adapter's latency. Random image bytes, so the flasher stub's compression
cannot help (real MicroPython images compress to about 60 %).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from polekit.firmware.deploy.bundle import build
from polekit.firmware.deploy.deploy import deploy
from polekit.firmware.deploy.flash import flash_image
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.rfc2217 import Rfc2217Server
from polekit.hil.rom import make_app_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-kib", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="polekit-bench-"))

    bundle = build("pole-env-esp32")
    size = bundle.size()
    with EmulatedBoard("pole-env-esp32", fs_dir=work / "deploy") as board:
        first = deploy(board.repl, "pole-env-esp32")
        again = deploy(board.repl, "pole-env-esp32")
    wire = size * 10 / 115200
    print(f"deploy: bundle {size} bytes ({len(bundle.files)} files); at 115200 baud the bytes")
    print(
        f"  alone need {wire:.2f} s. First deploy {first.seconds:.2f} s "
        f"(ratio {first.seconds / wire:.2f} of the wire time), unchanged re-deploy "
        f"{again.seconds:.2f} s ({again.unchanged} files unchanged)"
    )

    image = work / "image.bin"
    n = make_app_image(str(image), os.urandom(args.image_kib * 1024))
    print(f"flash: {n} bytes of incompressible image")
    for baud, path in ((115200, "pty"), (460800, "pty"), (460800, "rfc2217")):
        with EmulatedBoard(
            "pole-env-esp32", fs_dir=work / f"f{baud}{path}", bootloader=path == "pty"
        ) as board:
            bridge = Rfc2217Server(board) if path == "rfc2217" else None
            port = bridge.url if bridge else board.repl
            marks: list[float] = []
            t0 = time.monotonic()
            report = flash_image(
                port,
                image,
                "pole-env-esp32",
                baud=baud,
                progress=lambda done, total, marks=marks: marks.append(time.monotonic()),
            )
            total = time.monotonic() - t0
            if bridge:
                bridge.close()
        write_s = marks[-1] - marks[0] if len(marks) > 1 else total
        rate = n / write_s
        limit = baud / 10
        how = "ROM loader" if path == "pty" else "stub, compressed (DTR/RTS reset)"
        print(
            f"  {baud:>6} baud via {path:<8} {how:<34} write {write_s:6.2f} s: "
            f"{rate / 1000:6.1f} kB/s, line limit {limit / 1000:5.1f} kB/s, "
            f"ratio {rate / limit:.2f}; whole command {total:.1f} s "
            f"(MAC {report.mac})"
        )


if __name__ == "__main__":
    main()
