"""Gateway CPU per delivered value on the real Modbus path, and where it goes.

A pymodbus TCP server on loopback (its own process) serves ``--units`` devices of
``--registers`` holding registers each; mosquitto (its own process) is the broker; the
gateway runs as ``polekit gateway run`` in a process of its own with the default on-disk
queue, polling every device each ``--interval`` seconds. This process subscribes and
counts every pack that reaches the broker. After a warm-up, for ``--seconds``:

  delivered values/s  packs received x registers a pack, against the nominal rate
  CPU us/value        the gateway process's user + system CPU (/proc, all its threads)
                      over the same window, divided by the values delivered in it

``--profile N`` runs the gateway under cProfile instead (every thread: the event loop and
the queue's writer thread) and prints the top N functions by own time. The profiler slows
the gateway down, and most where a function is small and called often (the CBOR encoder's
per-item calls weigh about 4x their real share): read the CPU figure of a run without it,
the profile for where to look, and time a suspect on its own before and after a change.

    .venv/bin/python bench/profile_gateway.py [--seconds 15] [--interval 0.05] [--profile 25]
    .venv/bin/python bench/profile_gateway.py --interval 0.01 --max-in-flight 4 --runs 3

``--runs N`` repeats the measure N times (a fresh gateway each time) and prints the
medians; ``--busy`` runs the window beside a CPU hog and a disk writer (peerkit/busy.py);
``--max-in-flight`` gives the bus that many connections to the endpoint. The run ends with
a PASS/MISS line per target (CPU per value, ratio to nominal).

Short runs (10-20 s) on a shared machine; compare before and after in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerkit.busy import BusyLoad, describe  # noqa: E402 - bench/ is not a package
from peerkit.table import CPU_US_MAX  # noqa: E402

from polekit.hil.broker import LocalBroker
from polekit.protocols import identity

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far, all its threads: system time
    is the kernel's work for it (sockets, epoll, futexes of thread hand-offs, file writes),
    which a Python profiler does not see."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S  # utime, stime (14, 15)


def switches(pid: int) -> int:
    """Context switches of process ``pid`` so far, all its threads: each hand-off between
    threads, or wait for a socket or the disk, is one or two."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid``, in MB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def gateway_toml(
    data_dir: Path,
    broker_url: str,
    modbus_port: int,
    units: int,
    registers: int,
    interval: float,
    max_in_flight: int = 1,
) -> str:
    """A gateway config: one TCP bus, ``units`` devices sharing one ``[[map]]`` of
    ``registers`` u16 points."""
    lines = [
        f'[gateway]\nid = "bench"\ndata_dir = "{data_dir}"\n',
        f'[mqtt]\nurl = "{broker_url}"\n',
        "[status]\nenabled = false\n",
        f'[[bus]]\nname = "sim"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {modbus_port}\n'
        f"timeout = 1.0\nmax_in_flight = {max_in_flight}\n",
        '[[map]]\nname = "bench"\n',
    ]
    for r in range(registers):
        lines.append(f'[[map.point]]\nname = "r{r}"\naddress = {r}\n')
    for unit in range(1, units + 1):
        code = identity.make("371600", "PL", unit)
        lines.append(
            f'[[device]]\ncode = "{code}"\nbus = "sim"\nunit = {unit}\nmap = "bench"\n'
            f"poll_interval = {interval}\n"
        )
    return "\n".join(lines)


# ---- child processes ----------------------------------------------------------------


def serve_modbus(units: int, registers: int) -> None:
    """The simulated devices: print the TCP port, then serve until killed."""
    from polekit.hil.fieldbus import SimulatedBus
    from polekit.protocols.modbus import Point, RegisterMap

    regmap = RegisterMap("bench", [Point(f"r{r}", r) for r in range(registers)])

    async def main() -> None:
        sim = await SimulatedBus(
            {u: regmap for u in range(1, units + 1)}, tcp=("127.0.0.1", 0)
        ).start()
        for u in range(1, units + 1):
            for r in range(registers):
                await sim.set(u, f"r{r}", (u * 100 + r) % 65536)
        print(sim.tcp_port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_profiled(config_path: Path, out: Path) -> None:
    """``polekit gateway run`` with cProfile in every thread; stats saved to ``out``.
    Each thread's profiler counts that thread's CPU time (not wall time: a thread waiting
    for the disk or the network costs nothing)."""
    import cProfile
    import pstats
    import threading

    from polekit.gateway.app import Gateway
    from polekit.gateway.cli import _load, setup_logging

    profiles: list[cProfile.Profile] = []

    def start_in_thread(*_: object) -> None:
        # the first event of a new thread: hand the thread over to a profiler of its own
        p = cProfile.Profile(time.thread_time)
        profiles.append(p)
        p.enable()

    threading.setprofile(start_in_thread)
    config = _load(config_path)
    setup_logging("warning", "text")

    async def main() -> None:
        gw = Gateway(config)
        gw.install_signal_handlers()
        await gw.run()

    main_profile = cProfile.Profile(time.thread_time)
    main_profile.enable()
    try:
        asyncio.run(main())
    finally:
        main_profile.disable()
        threading.setprofile(None)
        stats = pstats.Stats(main_profile)
        for p in profiles:
            p.disable()
            stats.add(p)
        stats.dump_stats(str(out))


# ---- the bench ----------------------------------------------------------------------


async def count_packs(url_port: int, counter: list[int], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", url_port, identifier="bench-counter") as client:
        await client.subscribe("polekit/v1/bench/data/#", qos=0)
        ready.set()
        async for _ in client.messages:
            counter[0] += 1


async def bench(args: argparse.Namespace) -> tuple[float, float]:
    """One measure: (delivered values/s, CPU us per value); prints its figures."""
    nominal = args.units * args.registers / args.interval
    here = Path(__file__).resolve()
    with (
        tempfile.TemporaryDirectory(prefix="polekit-profile-") as tmp,
        tempfile.TemporaryDirectory(prefix="polekit-profile-", dir="/dev/shm") as shm_dir,
        LocalBroker() as broker,
    ):
        tmp_path = Path(tmp)
        shm = shm_dir if args.tmpfs else None
        sim = subprocess.Popen(
            [sys.executable, str(here), "--serve-modbus", str(args.units), str(args.registers)],
            stdout=subprocess.PIPE,
            start_new_session=True,
            cwd=tmp,  # not the checkout: PYTHONPATH may point the children at another tree
        )
        gw: subprocess.Popen[bytes] | None = None
        counter = [0]
        ready = asyncio.Event()
        sub = asyncio.create_task(count_packs(broker.port, counter, ready))
        try:
            assert sim.stdout is not None
            port = int(sim.stdout.readline())
            config = tmp_path / "gateway.toml"
            config.write_text(
                gateway_toml(
                    Path(shm) / "data" if shm else tmp_path / "data",
                    broker.url,
                    port,
                    args.units,
                    args.registers,
                    args.interval,
                    args.max_in_flight,
                )
            )
            config.chmod(0o600)
            await asyncio.wait_for(ready.wait(), 10)
            prof = tmp_path / "gateway.prof"
            argv = (
                [sys.executable, str(here), "--run-profiled", str(config), str(prof)]
                if args.profile
                else [*_polekit(), "gateway", "run", "-c", str(config), "--log-level", "warning"]
            )
            gw = subprocess.Popen(argv, start_new_session=True, cwd=tmp)
            await asyncio.sleep(args.warmup)
            if gw.poll() is not None:
                raise SystemExit(f"the gateway exited with {gw.returncode} during warm-up")
            load = BusyLoad(Path(shm or tmp) / "data") if args.busy else None
            with load if load is not None else contextlib.nullcontext():
                u0, k0 = cpu_split(gw.pid)
                n0, t0, s0 = counter[0], time.monotonic(), switches(gw.pid)
                await asyncio.sleep(args.seconds)
                u1, k1 = cpu_split(gw.pid)
                n1, t1, s1 = counter[0], time.monotonic(), switches(gw.pid)
            rss = rss_mb(gw.pid)
            values = (n1 - n0) * args.registers
            rate = values / (t1 - t0)
            cpu = u1 - u0 + k1 - k0
            print(
                f"{args.units} units x {args.registers} registers every {args.interval * 1000:g} ms"
                f" (nominal {nominal:,.0f} values/s), {t1 - t0:.1f} s"
                + (", queue on tmpfs" if args.tmpfs else ", queue on disk")
                + f", max_in_flight {args.max_in_flight}"
                + (" UNDER cProfile" if args.profile else "")
            )
            if load is not None:
                print(f"  {describe()}; {load.summary()}")
            print(f"  delivered   {rate:>9,.0f} values/s   ratio to nominal {rate / nominal:.2f}")
            print(
                f"  CPU         {cpu / values * 1e6 if values else float('nan'):>9.1f} us/value"
                f"    ({cpu / (t1 - t0) * 100:.0f} % of a core; goal 30 us, ratio "
                f"{cpu / values * 1e6 / 30 if values else float('nan'):.2f})"
            )
            if values:
                user_us, sys_us = (u1 - u0) / values * 1e6, (k1 - k0) / values * 1e6
                print(f"  of which    {user_us:>9.1f} us user, {sys_us:.1f} us system (kernel)")
            print(
                f"  switches    {(s1 - s0) / max(n1 - n0, 1):>9.1f} a pack (context switches, all"
                " threads)"
            )
            print(f"  RSS         {rss:>9.1f} MB")
            result = (rate, cpu / values * 1e6 if values else float("nan"))
        finally:
            if gw is not None and gw.poll() is None:
                gw.send_signal(signal.SIGTERM)
                try:
                    gw.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    gw.kill()
                    gw.wait()
            sim.kill()
            sim.wait()
            sub.cancel()
            await asyncio.gather(sub, return_exceptions=True)
        if args.profile:
            import pstats

            if not prof.exists():
                raise SystemExit(f"no profile: the gateway ended with {gw and gw.returncode}")
            stats = pstats.Stats(str(prof))
            print("\nCPU time by area (own time, all threads, under the profiler):")
            for area, share in by_area(stats):
                print(f"  {share * 100:5.1f} %  {area}")
            print(f"\ntop {args.profile} by own time (all threads):")
            stats.sort_stats("tottime").print_stats(args.profile)
    return result


async def bench_runs(args: argparse.Namespace) -> None:
    """``--runs`` measures, their medians, and a PASS/MISS line per target."""
    nominal = args.units * args.registers / args.interval
    results = []
    for i in range(args.runs):
        if args.runs > 1:
            print(f"run {i + 1} of {args.runs}:")
        results.append(await bench(args))
    rate = statistics.median(r[0] for r in results)
    us = statistics.median(r[1] for r in results)
    if args.runs > 1:
        rates = ", ".join(f"{r[0]:,.0f}" for r in results)
        uss = ", ".join(f"{r[1]:.1f}" for r in results)
        print(f"medians of {args.runs}: {rate:,.0f} values/s ({rates}); {us:.1f} us/value ({uss})")
    print("targets (issue 19):")
    goal = 0.98 if args.interval >= 0.1 else 0.95
    for ok, what in (
        (us <= CPU_US_MAX, f"CPU per delivered value {us:.1f} us, target <= {CPU_US_MAX:g} us"),
        (rate / nominal >= goal, f"ratio to nominal {rate / nominal:.3f}, target >= {goal}"),
    ):
        print(f"  {'PASS' if ok else 'MISS'}  {what}")


# where a function's own time goes: the first pattern found in "file:function" names the area
AREAS = (
    ("/protocols/", "polekit protocols (SenML, CBOR, model, Modbus codec)"),
    ("/gateway/queue.py", "polekit queue (Python side)"),
    ("/gateway/", "polekit gateway (other)"),
    ("sqlite3", "SQLite (statements, commits)"),
    ("/pymodbus/", "pymodbus"),
    ("/paho/", "paho-mqtt"),
    ("/aiomqtt/", "aiomqtt"),
    ("_socket.socket", "socket send/recv (syscalls)"),
    ("epoll", "epoll (syscall)"),
    ("/concurrent/", "thread hand-offs (concurrent.futures, threading, queue)"),
    ("/threading.py", "thread hand-offs (concurrent.futures, threading, queue)"),
    ("_queue.", "thread hand-offs (concurrent.futures, threading, queue)"),
    ("_thread.", "thread hand-offs (concurrent.futures, threading, queue)"),
    ("/asyncio/", "asyncio"),
    ("_asyncio.", "asyncio"),
    ("_contextvars", "asyncio"),
    ("/selectors.py", "asyncio"),
    ("/logging/", "logging"),
)


def by_area(stats: Any) -> list[tuple[str, float]]:
    """Own time summed by area, largest first, as fractions of the total. A built-in
    (len, isinstance, list.append...) counts for the areas of its callers."""

    def area_of(file: str, func: str) -> str | None:
        where = f"{file}:{func}"
        return next((name for pattern, name in AREAS if pattern in where), None)

    totals: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, own, _cum, callers) in stats.stats.items():
        area = area_of(file, func)
        if area is None and file == "~" and callers:
            for (c_file, _c_line, c_func), c_stats in callers.items():
                c_area = area_of(c_file, c_func) or "other"
                totals[c_area] = totals.get(c_area, 0.0) + c_stats[2]
            continue
        totals[area or "other"] = totals.get(area or "other", 0.0) + own
    whole = sum(totals.values()) or 1.0
    return sorted(((a, t / whole) for a, t in totals.items()), key=lambda e: -e[1])


def _polekit() -> list[str]:
    return [sys.executable, "-m", "polekit"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-modbus":
        serve_modbus(int(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--run-profiled":
        run_profiled(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.05, help="poll interval, s")
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--registers", type=int, default=10)
    parser.add_argument(
        "--tmpfs",
        action="store_true",
        help="queue in /dev/shm: commits cost no disk wait (CPU comparisons on a busy disk)",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="run under cProfile, print top N"
    )
    parser.add_argument("--max-in-flight", type=int, default=1, help="connections of the bus")
    parser.add_argument("--runs", type=int, default=1, help="measures; medians printed")
    parser.add_argument(
        "--busy", action="store_true", help="a CPU hog and a disk writer during the window"
    )
    asyncio.run(bench_runs(parser.parse_args()))


if __name__ == "__main__":
    main()
