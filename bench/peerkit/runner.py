"""One gateway on one case, measured: start the devices, the broker, the subscriber and
the gateway; measure a window; take the broker away for a while; let everything drain;
count.

Phases (all times in seconds):
1. start: the gateway runs until its first value arrives, then ``warmup`` more;
2. window (``duration``): values delivered, CPU and RSS of the gateway's process tree,
   sampled every second;
3. outage: mosquitto stopped for ``outage_s`` and started again on the same port;
   reconnect time = from the broker listening again to the first value the gateway read
   after the broker had gone (one it could not have sent before);
4. drain: the devices stop answering (the poll count stops); the gateway delivers what it
   holds until nothing new arrives for ``settle_s`` (or ``drain_s`` have passed).
Polls lost = polls the devices answered - distinct polls delivered (a backlog still
undelivered after ``drain_s`` counts as lost, and says so).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peerkit import procstat
from peerkit.busy import BusyLoad
from peerkit.cases import Case
from peerkit.launch import Launch
from peerkit.simulator import Simulator
from peerkit.subscriber import Poll, Subscriber
from polekit.hil.broker import LocalBroker

# (devices' endpoint, broker, this run's folder) -> a gateway ready to start
MakeLaunch = Callable[[Any, LocalBroker, Path], Launch]


@dataclass(frozen=True)
class Timing:
    """How long each phase lasts (see the module docstring)."""

    duration: float = 60.0
    warmup: float = 3.0
    outage_s: float = 20.0
    start_timeout: float = 60.0
    reconnect_timeout: float = 120.0
    settle_s: float = 3.0
    drain_s: float = 60.0
    busy: bool = False  # a CPU hog and a disk writer during the window (peerkit.busy)


@dataclass
class Result:
    """One row of the table."""

    case: str
    gateway: str
    nominal: float
    busy: bool = False
    values_per_s: float = 0.0
    cpu_pct: float = 0.0
    cpu_us_per_value: float | None = None
    rss_mb: float = 0.0
    rss_slope_mb_min: float = 0.0
    polls_served: int = 0
    polls_delivered: int = 0
    polls_lost: int = 0
    duplicates: int = 0
    reconnect_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.values_per_s / self.nominal if self.nominal else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def _wait(until: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            return False
        time.sleep(step_s)
    return True


def _start(launch: Launch) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TB_GW_")}
    log = open(launch.log or launch.cwd / "gateway.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        launch.argv,
        cwd=launch.cwd,
        env={**env, **launch.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C at the terminal reaches the bench, not the gateway
    )


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_case(case: Case, make: MakeLaunch, run_dir: Path, timing: Timing) -> Result:
    """Run one gateway (from ``make``) on ``case``; everything it started is stopped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with Simulator(case.spec) as sim, LocalBroker(persistent=True) as broker:
        launch = make(sim.endpoint, broker, run_dir)
        result = Result(
            case.name, launch.gateway, case.nominal, busy=timing.busy, notes=list(launch.notes)
        )
        sub = Subscriber(broker.host, broker.port, launch.topic, "polekit-bench-subscriber")
        sub.start()
        helper = launch.helper(broker.host, broker.port) if launch.helper else None
        proc = _start(launch)
        try:
            _measure(case, launch, proc, sim, broker, sub, timing, result)
        finally:
            _stop(proc, launch.stop_signal)
            sub.stop()
            if helper is not None:
                helper.stop()
        if proc.returncode not in (0, -launch.stop_signal) and proc.returncode is not None:
            result.notes.append(f"gateway exited with {proc.returncode}; see {launch.log}")
    return result


def _measure(
    case: Case,
    launch: Launch,
    proc: subprocess.Popen[bytes],
    sim: Simulator,
    broker: LocalBroker,
    sub: Subscriber,
    timing: Timing,
    result: Result,
) -> None:
    # 1. start
    if not _wait(lambda: bool(sub.messages) or proc.poll() is not None, timing.start_timeout):
        result.notes.append(f"nothing delivered within {timing.start_timeout:.0f} s of start")
    if proc.poll() is not None:
        result.notes.append(f"gateway exited at start ({proc.returncode}); see {launch.log}")
        return
    time.sleep(timing.warmup)
    # 2. window (under the busy load when asked: its writer in the gateway's file system)
    load = BusyLoad(launch.cwd) if timing.busy else None
    with load if load is not None else contextlib.nullcontext():
        t0 = time.monotonic()
        marks = {"window": time.time()}  # wall-clock starts of the phases, for gateways' times
        first = procstat.sample(proc.pid)
        times, rss = [0.0], [first.rss_bytes / 1e6]
        last = first
        while (now := time.monotonic()) < t0 + timing.duration:
            time.sleep(min(1.0, t0 + timing.duration - now))
            last = procstat.sample(proc.pid)
            times.append(time.monotonic() - t0)
            rss.append(last.rss_bytes / 1e6)
        t1 = time.monotonic()
    if load is not None:
        result.notes.append(load.summary())
    cpu_s = last.cpu_s - first.cpu_s
    # 3. outage
    broker.stop()
    gone_wall = marks["outage"] = time.time()
    time.sleep(timing.outage_s)
    broker.start()
    up = time.monotonic()
    marks["broker back"] = time.time()
    seen = len(sub.messages)
    arrived: list[float] = []

    def new_value_arrived() -> bool:
        nonlocal seen
        batch = sub.messages[seen:]
        seen += len(batch)
        arrived.extend(p.arrived for p in launch.decode(batch) if p.content_s > gone_wall)
        return bool(arrived)

    if _wait(new_value_arrived, timing.reconnect_timeout, step_s=0.02):
        result.reconnect_s = min(arrived) - up
    else:
        result.notes.append(f"no new value within {timing.reconnect_timeout:.0f} s of the broker")
    # 4. drain
    sim.quiet()
    marks["drain"] = time.time()
    time.sleep(0.5)  # answers already on their way are counted or not, either way exactly
    drain_end = time.monotonic() + timing.drain_s
    count = len(sub.messages)
    quiet_since = time.monotonic()
    while time.monotonic() < drain_end:
        time.sleep(0.2)
        if len(sub.messages) != count:
            count, quiet_since = len(sub.messages), time.monotonic()
        elif time.monotonic() - quiet_since >= timing.settle_s:
            break
    else:
        result.notes.append(f"still delivering {timing.drain_s:.0f} s after the devices stopped")
    served = sim.served()
    _count(case, launch, sub.messages, served, t0, t1, cpu_s, times, rss, result)
    if result.polls_lost > 0:
        result.notes.append(_lost_by_phase(launch, sub.messages, served, marks))


def _count(
    case: Case,
    launch: Launch,
    messages: list[tuple[float, str, bytes]],
    served: dict[int, int],
    t0: float,
    t1: float,
    cpu_s: float,
    times: list[float],
    rss: list[float],
    result: Result,
) -> None:
    polls: list[Poll] = launch.decode(messages)
    firsts: dict[tuple[str, Any], Poll] = {}
    for p in polls:
        firsts.setdefault((p.device, p.key), p)
    in_window = sum(p.values for p in firsts.values() if t0 <= p.arrived < t1)
    elapsed = t1 - t0
    result.values_per_s = in_window / elapsed
    result.cpu_pct = cpu_s / elapsed * 100
    result.cpu_us_per_value = cpu_s / in_window * 1e6 if in_window else None
    result.rss_mb = max(rss)
    result.rss_slope_mb_min = procstat.slope_per_min(times, rss)
    result.duplicates = len(polls) - len(firsts)
    result.polls_served = sum(served.values())
    result.polls_delivered = sum(1 for p in firsts.values() if p.counter is not None)
    result.polls_lost = result.polls_served - result.polls_delivered


def _lost_by_phase(
    launch: Launch,
    messages: list[tuple[float, str, bytes]],
    served: dict[int, int],
    marks: dict[str, float],
) -> str:
    """Where the lost polls were: each missing read number is placed at the time the
    gateway gave the next read of that unit it did deliver; "tail" when it delivered no
    later read of that unit (a backlog never sent, or a gateway that stopped delivering)."""
    delivered: dict[int, dict[int, float]] = {}
    for p in launch.decode(messages):
        unit = launch.unit_of(p.device)
        if unit is not None and p.counter is not None:
            delivered.setdefault(unit, {})[p.counter] = p.content_s
    phases = ["start", *marks, "tail"]
    lost = dict.fromkeys(phases, 0)
    for unit, count in served.items():
        if count > 0xFFFF:
            return "lost by phase: not known (a unit's read counter wrapped)"
        got = delivered.get(unit, {})
        after: float | None = None
        for n in range(count, 0, -1):
            if n in got:
                after = got[n]
                continue
            phase = "tail" if after is None else "start"
            for name, at in marks.items():
                if after is not None and after >= at:
                    phase = name
            lost[phase] += 1
    return "lost by phase: " + ", ".join(f"{k} {v}" for k, v in lost.items())
