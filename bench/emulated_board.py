"""The emulated board's own costs: boot time, soft-reset time, REPL round trip, memory.

    .venv/bin/python bench/emulated_board.py [--board pole-env-esp32] [--rounds 50]

Round trip: one raw-REPL command (Ctrl-D with a one-line statement) and its OK, measured
with pyserial on the board's pseudo-terminal, so it counts the emulator and not mpremote's
own process start-up. RSS is the Node process that runs the board (VM worker included).
"""

from __future__ import annotations

import argparse
import statistics
import time

import serial

from polekit.hil.emulator import EmulatedBoard


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def read_until(port: serial.Serial, marker: bytes, timeout_s: float = 10) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(marker):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {marker!r} in {data[-200:]!r}")
        data += port.read(1)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", default="pole-env-esp32")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    boots = []
    for attempt in range(5):
        start = time.monotonic()
        board = EmulatedBoard(args.board).start()
        boots.append(time.monotonic() - start)
        if attempt < 4:
            board.stop()
    print(
        "boot to REPL (process start, VM load, boot.py): "
        f"median {statistics.median(boots) * 1000:.0f} ms "
        f"(min {min(boots) * 1000:.0f}, max {max(boots) * 1000:.0f}) over {len(boots)}"
    )
    with serial.Serial(board.repl, 115200, timeout=1) as port:
        port.write(b"\r\x03\x03\x01")
        read_until(port, b"raw REPL; CTRL-B to exit\r\n>")
        rtts = []
        for _ in range(args.rounds):
            start = time.monotonic()
            port.write(b"x = 1\x04")
            read_until(port, b"\x04>")
            rtts.append(time.monotonic() - start)
        print(
            f"raw REPL round trip: median {statistics.median(rtts) * 1000:.2f} ms, "
            f"p90 {sorted(rtts)[int(len(rtts) * 0.9)] * 1000:.2f} ms over {args.rounds}"
        )
        resets = []
        for _ in range(5):
            start = time.monotonic()
            port.write(b"\x04")
            read_until(port, b"raw REPL; CTRL-B to exit\r\n>")
            resets.append(time.monotonic() - start)
        print(f"soft reset (Ctrl-D, new VM): median {statistics.median(resets) * 1000:.0f} ms")
    assert board._proc is not None  # noqa: SLF001 - the bench reads the process it measures
    print(f"RSS of the board's Node process: {rss_mb(board._proc.pid):.1f} MB")  # noqa: SLF001
    board.stop()


if __name__ == "__main__":
    main()
