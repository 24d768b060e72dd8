"""Faults against a real gateway process: N random kill -9s, a broker outage, a full disk.

pymodbus devices number every read they answer in their ``node_seq`` register, so each
pack at the broker names its read: produced (reads answered), delivered (distinct packs at
the broker or still queued), lost (answered, never delivered; split into reads lost before
commit around a kill -9 and other loss), duplicates (packs delivered twice), crashes (the
gateway exiting by itself). Target: 0 silent loss, 0 crashes, duplicates only after kill -9.
The full disk phase runs on a 2 MB tmpfs when root (else it is skipped and says so).

    .venv/bin/python bench/faults.py [--kills 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gwproc import CountingDevices, GatewayProcess, node_seq_of, write_config  # noqa: E402

from polekit.gateway.queue import DurableQueue  # noqa: E402
from polekit.hil.broker import LocalBroker  # noqa: E402
from polekit.protocols import identity, senml  # noqa: E402

from gwkit import Collector, until  # noqa: E402

UNITS = [1, 2, 3, 4]
AFTER_KILL_S = 0.25  # the next gateway takes far longer than this to start polling
CODES = {u: identity.make("371600", "PL", 200 + u) for u in UNITS}


async def phase(name: str, tmp: Path, data: Path, kills: int, outage: bool, disk: bool) -> None:
    devices = await CountingDevices(UNITS).start()
    crashes = 0
    kill_times: list[float] = []
    with LocalBroker() as broker:
        config = write_config(
            tmp / f"{name}.toml",
            data,
            broker.url,
            [
                {"code": CODES[u], "bus": "b", "unit": u, "map": "pole-env", "poll_interval": 0.05}
                for u in UNITS
            ],
            [{"name": "b", "type": "tcp", "host": "127.0.0.1", "port": devices.tcp_port}],
        )
        log = tmp / f"{name}.log"
        rng = random.Random(13)
        async with Collector(broker.host, broker.port) as sub:
            gw = GatewayProcess(config, log)
            await until(lambda: len(sub.messages) > 10, timeout_s=30, what="packs")
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                kill_times.append(time.monotonic())
                gw.proc.kill()
                gw.proc.wait()
                gw = GatewayProcess(config, log)
                await asyncio.sleep(0.3)
            if outage or disk:
                broker.stop()
                hog = None
                t_end = time.monotonic() + (180 if disk else 20)  # until the disk is full
                while time.monotonic() < t_end:
                    h = await asyncio.to_thread(gw.health)
                    if disk and h and h["queue"]["disk_full"] and hog is None:
                        hog = data / "hog"
                        fd = os.open(hog, os.O_WRONLY | os.O_CREAT)
                        try:
                            while True:
                                os.write(fd, b"\0" * 4096)
                        except OSError:
                            pass
                        os.close(fd)
                        t_end = time.monotonic() + 5  # polling on with not a byte free
                    if not gw.alive():
                        crashes += 1
                        gw = GatewayProcess(config, log)
                    await asyncio.sleep(0.5)
                if hog is not None:
                    hog.unlink()
                broker.start()
                await sub.__aexit__(None, None, None)
                await sub.__aenter__()
            await asyncio.sleep(3)
            h = await asyncio.to_thread(gw.health)
            await until(
                lambda: (gw.health() or {"queue": {"depth": 1}})["queue"]["depth"] < 5,
                timeout_s=120,
                what="drain",
            )
            if not gw.alive():
                crashes += 1
            stopped_at = time.monotonic()
            gw.proc.terminate()  # the devices answer on while it finishes its last poll
            await asyncio.to_thread(gw.proc.wait, 30)
            dropped = h["queue"]["dropped"] if h else 0
            lat = h["queue"]["commit_latency_ms"] if h else {}
            await asyncio.sleep(0.5)
        q = DurableQueue(data / "queue.sqlite3")
        left = await q.peek(100_000)
        q.close()
    await devices.stop()
    produced = delivered = lost_window = lost_other = dup = 0
    other: list[str] = []  # when each read lost outside a kill's window was answered
    for u in UNITS:
        packs = [node_seq_of(p) for p in sub.packs(CODES[u])]
        packs += [
            node_seq_of(senml.resolve(senml.decode_cbor(m.payload), now=0))
            for m in left
            if m.topic.endswith(CODES[u])
        ]
        counts = Counter(packs)
        answered = devices.answered[u]
        produced += len(answered)
        delivered += len(counts)
        dup += sum(c - 1 for c in counts.values())
        for n in set(answered) - set(counts):
            # answered up to 1 s before a kill, or just after it: the devices share this
            # loop, which kill(), wait() and the next start hold up, so a request the
            # killed gateway sent is answered a moment later, to a dead socket
            if any(-AFTER_KILL_S < k - answered[n] < 1.0 for k in kill_times):
                lost_window += 1
            else:
                lost_other += 1
                near = min(kill_times + [stopped_at], key=lambda k: abs(k - answered[n]))
                what = "the stop" if near == stopped_at else "a kill"
                other.append(f"unit {u} read {n}: {answered[n] - near:+.3f} s from {what}")
    silent = lost_other - dropped if lost_other > dropped else 0
    print(
        f"{name:10} produced {produced:6} delivered {delivered:6} lost {lost_window + lost_other:5}"
        f" (before commit at a kill {lost_window}, dropped and counted {dropped}, silent {silent})"
        f" duplicates {dup:5} crashes {crashes}  answer->commit ms {lat}"
    )
    if silent:  # where to look: a read answered next to the stop, or while the gateway ran
        print("    lost outside a kill's window:", "; ".join(other[:5]))


async def main(kills: int) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        await phase("kill -9", tmp, tmp / "d1", kills, False, False)
        await phase("outage", tmp, tmp / "d2", 0, True, False)
        if os.geteuid() == 0:
            small = tmp / "small"
            small.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True
            )
            try:
                await phase("full disk", tmp, small, 0, True, True)
            finally:
                subprocess.run(["umount", "-l", str(small)], check=True)
        else:
            print("full disk: skipped (mounting a 2 MB tmpfs needs root)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    asyncio.run(main(parser.parse_args().kills))
