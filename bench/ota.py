"""Over-the-air updates over RS-485: transfer efficiency, update time per node, a street.

The path a user runs: the real node bundle (``polekit build --sign``), emulated pole nodes
with the real firmware of an earlier release whose every node and protocols module differs
(tests/otagwkit.py earlier_release: the whole bundle is sent, none of it copied on the
node) on hil's virtual RS-485 line paced at the baud rate (11 bits a character, t3.5
between frames), and the gateway itself (``Gateway``: its bus task polling
every node, its rollout runner and Modbus transfer client, its SQLite database, a real
broker). Figures:

- transfer: file bytes per second while a node takes its files, over the line's payload
  maximum under Modbus timing: 240 data bytes per function-16 request (255 bytes on the
  wire, answered in 8), each frame followed by t3.5: ``240 / ((255 + 8) * 11 / baud +
  2 * t3.5)``. Target >= 0.8. The polling of the node goes on meanwhile at [ota]
  poll_interval (10 s), and counts against the transfer as it does in the field;
- update time per node: from the push to the node confirming the new version (its
  signature check, transfer, hash check, restart, trial of ``ota_trial_s``);
- a street of nodes on 2 buses: the rollout's total time, one canary then batches, one
  transfer at a time per bus. A street of 4 (``--street-nodes``) at 115200 baud runs for
  real, each node's transfer on the rollout's clock, against the model; 20 emulated boards
  do not fit beside the gateway on 2 cores, so the 20-node figure is the model's, from the
  measured per-node times and the gap the street showed between two transfers on a bus
  (the node's commit).

    .venv/bin/python bench/ota.py [--baud 9600 --baud 115200] [--street-nodes 4]
    .venv/bin/python bench/ota.py --smoke      # 115200 only, one node, a 2-node street
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from otagwkit import make_key, pole_codes, pole_line, rtu_bus, signed_bundle  # noqa: E402

from polekit.gateway.app import Gateway  # noqa: E402
from polekit.gateway.config import parse_config  # noqa: E402
from polekit.gateway.ota.transport import Progress, Pushed  # noqa: E402
from polekit.hil.broker import LocalBroker  # noqa: E402
from polekit.protocols import modbus, ota  # noqa: E402

TRIAL_S = 5  # the nodes' ota_trial_s (their minimum)


def payload_max_bps(baud: int) -> float:
    """File bytes a second the line carries at most under Modbus timing."""
    request = 1 + 1 + 2 + 2 + 1 + 2 * (ota.DATA_HEADER_REGS + ota.CHUNK_BYTES // 2) + 2
    answer = 8
    seconds = (request + answer) * modbus.char_time_s(baud) + 2 * modbus.t35_s(baud)
    return ota.CHUNK_BYTES / seconds


class Timed:
    """A transport wrapped to time each push's file transfer (first to last chunk), and to
    keep the least free heap each node reported in its status block during the update
    (the window's ``heap_low``, read at every status read of the transfer)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.transfers: dict[str, tuple[float, float, int]] = {}  # device: (t0, t1, bytes)
        self.heap_low: dict[str, int] = {}
        read = inner._status

        async def recorded(device: str) -> dict[str, Any]:
            s: dict[str, Any] = await read(device)
            if s.get("heap_low"):
                self.heap_low[device] = min(self.heap_low.get(device, 1 << 30), s["heap_low"])
            return s

        inner._status = recorded

    def line_of(self, device: str) -> str:
        return str(self.inner.line_of(device))

    async def status(self, device: str) -> Any:
        return await self.inner.status(device)

    async def push(
        self, device: str, manifest: bytes, sig: bytes, files: list[bytes], progress: Progress
    ) -> Pushed:
        marks: list[tuple[float, int]] = []

        def seen(have: int, total: int, sent: int = 0) -> None:
            marks.append((time.monotonic(), sent))  # bytes on the link, not files copied
            progress(have, total, sent)

        pushed: Pushed = await self.inner.push(device, manifest, sig, files, seen)
        if len(marks) >= 2:
            self.transfers[device] = (marks[0][0], marks[-1][0], marks[-1][1] - marks[0][1])
        return pushed


async def rollout(
    tmp: Path, key: Path, bundle: Path, baud: int, per_bus: list[int], batch_size: int
) -> tuple[
    float, dict[str, Any], dict[str, tuple[float, float, int]], dict[str, int], list[list[str]]
]:
    """Nodes on ``len(per_bus)`` lines at ``baud``; one rollout to all of them through a
    Gateway; (total seconds, reports by device, transfer timings by device, the least free
    heap each node reported, the devices of each line)."""
    codes_of = [pole_codes(n, 100 + 50 * i) for i, n in enumerate(per_bus)]
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(LocalBroker())
        lines = [
            stack.enter_context(
                pole_line(tmp / f"bus{i}", key, codes, baud, TRIAL_S, changed="all")
            )[0]
            for i, codes in enumerate(codes_of)
        ]
        buses = []
        devices = []
        for i, (line, codes) in enumerate(zip(lines, codes_of, strict=True)):
            bus = rtu_bus(line.endpoint(), baud) | {"name": f"line{i}"}
            buses.append(bus)
            devices += [
                {"code": c, "bus": f"line{i}", "unit": u, "map": "pole-env", "poll_interval": 1}
                for u, c in enumerate(codes, 1)
            ]
        data = tmp / f"data-{baud}-{len(devices)}"
        config = parse_config(
            {
                "gateway": {"id": "gw-bench", "data_dir": str(data)},
                "mqtt": {"url": broker.url},
                "bus": buses,
                "device": devices,
                "status": {"enabled": False},
                "ota": {
                    "public_key": str(key.with_suffix(".pub")),
                    "batch_size": batch_size,
                    "trial_wait": 300,
                },
            },
            tmp / "gateway.toml",
        )
        gw = Gateway(config)
        timed: dict[int, Timed] = {}
        for code, transport in list(gw.ota.transports.items()):
            wrapped = timed.setdefault(id(transport), Timed(transport))
            gw.ota.transports[code] = wrapped
        task = asyncio.create_task(gw.run())
        try:
            everyone = [c for codes in codes_of for c in codes]
            deadline = time.monotonic() + 60
            while not all(
                s.online for b in gw.buses.values() for s in b.devices.values()
            ):  # every node answers its polls first
                if time.monotonic() > deadline:
                    raise RuntimeError("the nodes did not come up")
                await asyncio.sleep(0.2)
            started = time.monotonic()
            await gw.ota.start(str(bundle), everyone, batch_size, "bench")
            while gw.ota.last is None:
                await asyncio.sleep(0.2)
            total = time.monotonic() - started
            last = gw.ota.last
        finally:
            gw.stop()
            await task
    transfers: dict[str, tuple[float, float, int]] = {}
    heap: dict[str, int] = {}
    for t in timed.values():
        transfers.update(t.transfers)
        heap.update(t.heap_low)
    return total, {d.device: d.report() for d in last.devices}, transfers, heap, codes_of


def first_device(transfers: dict[str, tuple[float, float, int]]) -> str:
    """The canary: the device whose transfer began first."""
    return min(transfers, key=lambda d: transfers[d][0])


def street_estimate(nodes: int, transfer_s: float, update_s: float, gap_s: float) -> float:
    """A street's rollout time from one node's figures: the canary alone; then on the bus
    without it (half the nodes, rounded up) the transfers one after another, each ``gap_s``
    after the one before (that node's commit: it hashes every file while the line waits),
    and the last node's restart and trial after its transfer. Each node's restart and trial
    overlap the next transfer on its bus."""
    per_bus = nodes - nodes // 2
    return update_s + per_bus * transfer_s + (per_bus - 1) * gap_s + (update_s - transfer_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baud", type=int, action="append", help="9600 and 115200 by default")
    parser.add_argument(
        "--street-nodes",
        type=int,
        default=4,
        help="run a street of N nodes on 2 buses for real (4; 0: none): the 20-node estimate "
        "takes the gap between two transfers on a bus from it",
    )
    parser.add_argument("--street-baud", type=int, default=115200)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="115200, 1 node, 2-node street")
    args = parser.parse_args()
    # a request the node does not answer (its reset) is the gateway's to count and retry, as
    # `polekit gateway run` does: pymodbus's own lines would bury the figures
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    bauds = args.baud or ([115200] if args.smoke else [9600, 115200])
    street = 2 if args.smoke else args.street_nodes
    street_baud = 115200 if args.smoke else args.street_baud
    tmp = Path(tempfile.mkdtemp(prefix="polekit-bench-ota-"))
    key = make_key(tmp, "bench")
    bundle = signed_bundle(tmp / "bundle", key, "0.2")
    size = sum(f.stat().st_size for f in (bundle / "lib").rglob("*") if f.is_file())
    print(f"bundle: {size} bytes of files, {len(list((bundle / 'lib').rglob('*.*')))} files")
    print(
        f"{'baud':>7} {'max B/s':>8} {'achieved':>9} {'ratio':>6} {'transfer s':>11} "
        f"{'update s':>9} {'result':>8} {'heap low':>9}"
    )
    per_node: dict[int, tuple[float, float]] = {}
    gap_s = None  # between two transfers on one bus, measured by a street run
    for baud in bauds:
        total, reports, transfers, heap, _ = asyncio.run(
            rollout(tmp / f"b{baud}", key, bundle, baud, [1], 1)
        )
        ((device, report),) = reports.items()
        t0, t1, moved = transfers[device]
        achieved = moved / (t1 - t0)
        peak = payload_max_bps(baud)
        per_node[baud] = (t1 - t0, float(report["duration_s"]))
        print(
            f"{baud:>7} {peak:>8.0f} {achieved:>9.0f} {achieved / peak:>6.2f} {t1 - t0:>11.1f} "
            f"{report['duration_s']:>9.1f} {report['result']:>8} {heap.get(device, 0):>9}"
        )
    if street:
        half = [street - street // 2, street // 2]
        total, reports, transfers, _, lines = asyncio.run(
            rollout(tmp / "street", key, bundle, street_baud, half, args.batch_size)
        )
        ok = sum(r["result"] == "updated" for r in reports.values())
        print(
            f"street: {street} nodes on 2 buses at {street_baud} baud, batch {args.batch_size}: "
            f"{total:.0f} s for the rollout, {ok} of {street} updated"
        )
        # each node's transfer on the rollout's clock (from the canary's first byte) and
        # its whole update: where the time goes, against the model below
        first = min(t0 for t0, _, _ in transfers.values())
        for device in sorted(transfers, key=lambda d: transfers[d][0]):
            t0, t1, moved = transfers[device]
            print(
                f"  {device}: transfer {t0 - first:5.0f} to {t1 - first:5.0f} s "
                f"({moved} bytes), update {reports[device]['duration_s']} s"
            )
        gaps = [
            transfers[b][0] - transfers[a][1]
            for codes in lines
            for a, b in zip(codes, codes[1:], strict=False)
            if transfers[b][0] > transfers[a][1] and a != first_device(transfers)
        ]
        if gaps:
            gap_s = sum(gaps) / len(gaps)
            print(f"  between two transfers on a bus (the node's commit): {gap_s:.1f} s")
        if street_baud in per_node and gap_s is not None:  # the model, against this street
            model = street_estimate(street, *per_node[street_baud], gap_s)
            print(
                f"street model for {street} nodes: {model:.0f} s; measured / model = "
                f"{total / model:.2f}"
            )
    print(
        "heap low: the least free heap a node reported during its update (the board gives "
        "MicroPython 112,640 bytes)"
    )
    if not args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from ed25519 import measure  # bench/ed25519.py: the node's signature check

        v = measure()
        print(
            f"signature check of the update manifest ({v['size']} bytes): "
            f"{v['sync_ms']} ms in the VM, ~{v['sync_ms'] * v['ratio'] / 1000:.1f} s at ESP32 "
            f"speed (the VM is {v['ratio']:.1f}x an ESP32's Pystones), ok={v['ok']}"
        )
    for baud, (transfer_s, update_s) in per_node.items():
        if gap_s is None:
            print(f"street estimate at {baud} baud: run a street (--street-nodes 4) for it")
            continue
        estimate = street_estimate(20, transfer_s, update_s, gap_s)
        print(
            f"street estimate: 20 nodes on 2 buses at {baud} baud: about {estimate / 60:.0f} "
            f"min ({transfer_s:.0f} s a transfer, {update_s:.0f} s a whole update, "
            f"{gap_s:.0f} s between transfers)"
        )


if __name__ == "__main__":
    main()
