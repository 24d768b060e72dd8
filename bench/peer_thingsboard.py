"""polekit's gateway side by side with ThingsBoard IoT Gateway 3.8.5 on the same work.

Both gateways poll the same simulated Modbus devices (pymodbus, counting every read) and
publish to the same mosquitto on loopback, one after the other, as processes of their own
with their default on-disk (polekit) or memory (peer) queue. One table: values/s against
nominal, CPU % and us of CPU per delivered value, RSS and its slope, polls lost (exact),
duplicates, reconnect time after a broker outage. Cases: 50 units x 10 holding registers at
100, 50, 20 and 10 ms over Modbus TCP; 10 RTU slaves on a 19200 baud line paced like a real
one, one of them silent (the others' rate against nominal). The simulator's own ceiling (a
bare pymodbus client reading as fast as it can) is printed first, so the ratios mean
something. The peer runs with two configs: ``best`` (one range read of a unit's 10
registers) and ``usual`` (one request per register).

Run on demand, never in the test command; the peer lives in a scratch virtualenv:

    .venv/bin/python bench/peer_thingsboard.py --install-peer     # once (PyPI)
    .venv/bin/python bench/peer_thingsboard.py                    # about 45 min
    .venv/bin/python bench/peer_thingsboard.py --duration 10 --outage 5 --cases tcp-100ms
    .venv/bin/python bench/peer_thingsboard.py --busy --cases tcp-100ms   # both cores busy

``--busy`` runs each gateway's measured window beside a CPU hog and a disk writer
(peerkit/busy.py), the load of the issue's 100 ms target. The run ends with a line per
target of issue 19 (value, target, PASS or MISS).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from peerkit import peer_side, polekit_side
from peerkit.cases import CASES, Case
from peerkit.runner import MakeLaunch, Result, Timing, run_case
from peerkit.simulator import Simulator, ceiling
from peerkit.table import LEGEND, row, table, targets

from polekit.hil.broker import mosquitto_path


def gateways(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(label, launch maker) for each gateway to run on a case, polekit first."""
    out: list[tuple[str, Any]] = []
    if args.only in (None, "polekit"):

        def polekit(case: Case) -> MakeLaunch:
            return lambda ep, broker, d: polekit_side.launch(
                case, ep, broker.url, d, args.buses, args.max_in_flight
            )

        out.append(("polekit", polekit))
    if args.only in (None, "peer"):
        for flavour in args.peer_configs.split(","):

            def peer(case: Case, flavour: str = flavour) -> MakeLaunch:
                return lambda ep, broker, d: peer_side.launch(
                    case, ep, broker.port, d, args.peer_venv, flavour
                )

            out.append((f"peer-{flavour}", peer))
    return out


def print_ceiling(seconds: float) -> dict[str, float]:
    """Measure and print what the simulator serves to a bare pymodbus client."""
    spec = CASES["tcp-10ms"].spec
    with Simulator(spec) as sim:
        one = ceiling(spec, sim.endpoint, seconds, 1)
        four = ceiling(spec, sim.endpoint, seconds, 4)
    print(
        f"simulator ceiling (bare pymodbus client, {spec.registers} registers a read, "
        f"{len(spec.units)} units): {one:,.0f} values/s on 1 connection, "
        f"{four:,.0f} on 4 connections"
    )
    return {"one_connection": one, "four_connections": four}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--install-peer", action="store_true", help="install the peer, exit")
    parser.add_argument("--peer-venv", type=Path, default=peer_side.DEFAULT_VENV)
    parser.add_argument(
        "--peer-python", default=sys.executable, help="the Python that makes the peer's venv"
    )
    parser.add_argument("--duration", type=float, default=60.0, help="s measured per case")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--outage", type=float, default=20.0, help="s the broker is away")
    parser.add_argument("--drain", type=float, default=60.0, help="s allowed to drain")
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--only", choices=("polekit", "peer"))
    parser.add_argument("--peer-configs", default=",".join(peer_side.FLAVOURS))
    parser.add_argument("--buses", type=int, default=1, help="polekit [[bus]] entries (TCP)")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=4,
        help="polekit TCP transactions in flight, when its config accepts max_in_flight",
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="a CPU hog and a 4 MiB/s fsync'ing disk writer during each measured window",
    )
    parser.add_argument("--ceiling", type=float, default=5.0, help="s per ceiling measure")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--keep", type=Path, help="keep configs and logs in this folder")
    args = parser.parse_args(argv)

    if args.install_peer:
        peer_side.install(args.peer_venv, args.peer_python)
        print(f"ThingsBoard IoT Gateway {peer_side.PEER_VERSION} installed in {args.peer_venv}")
        return 0
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; known: {', '.join(CASES)}")
    bad = [f for f in args.peer_configs.split(",") if f not in peer_side.FLAVOURS]
    if bad:
        parser.error(f"unknown peer config {', '.join(bad)}; known: best, usual")
    if mosquitto_path() is None:
        print("mosquitto is not installed: apt-get install mosquitto", file=sys.stderr)
        return 1
    if args.only != "polekit":
        peer_side.check_installed(args.peer_venv)

    timing = Timing(args.duration, args.warmup, args.outage, drain_s=args.drain, busy=args.busy)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="polekit-peer-bench-") as tmp:
        base = args.keep or Path(tmp)
        ceilings = print_ceiling(args.ceiling)
        print(table([], args.busy))
        for name in args.cases.split(","):
            for label, make in gateways(args):
                result = run_case(CASES[name], make(CASES[name]), base / name / label, timing)
                results.append(result)
                print(row(result), flush=True)
    print()
    print(table(results, args.busy))
    print(LEGEND)
    print()
    # the ceiling the gateway could reach: its connections to the endpoint
    ceiling = ceilings["four_connections" if args.max_in_flight > 1 else "one_connection"]
    print("\n".join(targets(results, ceiling)))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "ceiling_values_per_s": ceilings,
                    "timing": vars(timing),
                    "results": [r.as_dict() for r in results],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
