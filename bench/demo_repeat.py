"""The demo's verdict on a loaded machine: `polekit demo` run N times while every core is
busy, its PASS count and each failure's verdict.

    .venv/bin/python bench/demo_repeat.py [--runs 20] [--duration 60] [--hogs N]

The hogs are busy-loop processes, one per core by default (``--hogs 0``: an idle machine),
started before the first run and ended by their PIDs after the last. Each run is the demo
as a user starts it (``polekit demo --json``, a subprocess); its exit status must follow its
verdict. The demo must pass every time: an alarm not seen, a command not acknowledged or a
reading lost on a busy machine is a defect, not bad luck.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HOG = "while True:\n    pass\n"


def start_hogs(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` processes that each keep one core busy."""
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n)]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        os.kill(hog.pid, signal.SIGTERM)
    for hog in hogs:
        hog.wait(timeout=10)


def one_run(args: argparse.Namespace) -> tuple[str, float, dict[str, object]]:
    """(verdict, seconds, summary) of one demo run."""
    started = time.monotonic()
    command = [sys.executable, "-m", "polekit", "demo", "--json"]
    command += ["--duration", str(args.duration), "--poles", str(args.poles)]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = demo.communicate(timeout=args.duration + 300)
    except BaseException:  # Ctrl-C or a hung run: the demo stops its own boards and broker
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=60)
        raise
    result = subprocess.CompletedProcess(command, demo.returncode, stdout, stderr)
    seconds = time.monotonic() - started
    try:
        summary = json.loads(result.stdout)
        verdict = str(summary.get("verdict"))
    except ValueError:
        summary = {}
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        verdict = f"FAIL: no summary (exit {result.returncode}): {tail[0]}"
    else:
        if (result.returncode == 0) != (verdict == "PASS"):
            verdict = f"FAIL: exit status {result.returncode} with verdict {verdict}"
    if verdict != "PASS" and args.keep:  # the run's own words, for whoever looks into it
        log = Path(args.keep) / f"run-{time.strftime('%H%M%S')}.stderr"
        log.write_text(result.stderr)
        verdict += f" (stderr in {log})"
    return verdict, seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="each demo's --duration")
    parser.add_argument("--poles", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1, help="busy processes")
    parser.add_argument("--keep", metavar="DIR", help="keep each failed run's stderr in DIR")
    args = parser.parse_args()

    hogs = start_hogs(args.hogs)
    print(
        f"{args.runs} demo runs of {args.duration:.0f} s, {args.poles} poles, with "
        f"{len(hogs)} busy-loop processes on {os.cpu_count()} cores (PIDs "
        f"{', '.join(str(h.pid) for h in hogs) or 'none'})",
        flush=True,
    )
    failures: list[tuple[int, str]] = []
    rtts: list[float] = []
    try:
        for i in range(1, args.runs + 1):
            verdict, seconds, summary = one_run(args)
            rtt = summary.get("command_rtt_ms")
            if isinstance(rtt, (int, float)):
                rtts.append(float(rtt))
            rs485: dict[str, int] = summary.get("rs485") or {}  # type: ignore[assignment]
            print(
                f"run {i:2d}: {seconds:5.1f} s, lamp command {rtt} ms, RS-485 "
                f"{rs485.get('no_response')} of {rs485.get('transactions')} unanswered: "
                f"{verdict}",
                flush=True,
            )
            if verdict != "PASS":
                failures.append((i, verdict))
    finally:
        stop_hogs(hogs)
    passed = args.runs - len(failures)
    print(f"\n{passed} of {args.runs} runs passed")
    if rtts:
        print(
            f"lamp command round trip: median {sorted(rtts)[len(rtts) // 2]:.0f} ms, "
            f"max {max(rtts):.0f} ms"
        )
    for i, verdict in failures:
        print(f"run {i}: {verdict}")
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
