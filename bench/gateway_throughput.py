"""Gateway throughput end to end: source -> pipeline -> SQLite queue -> mosquitto, QoS 1.

A synthetic source hands poll results (the pole-env map's 23 points per poll) for many
devices to the gateway's real pipeline as fast as it takes them; the real durable queue
stores them and the real uplink publishes them to a real mosquitto on loopback, each
message leaving the queue only after its PUBACK. Measured in this process (the gateway and
the source; the broker is its own process):

  phase 1, broker up:   readings/s acknowledged by the broker, CPU seconds per 10,000
                        readings, peak RSS;
  phase 2, broker down: RSS sampled each second while readings pile up on disk (flat?);
  phase 3, broker back: seconds to reconnect and to drain the backlog.

Targets (issue 3): >= 20,000 readings/s on one core (<= 50 us CPU a reading), RSS under
60 MB and flat.

    .venv/bin/python bench/gateway_throughput.py [--seconds 10] [--devices 50]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from polekit.gateway.app import Gateway
from polekit.gateway.config import parse_config
from polekit.hil.broker import LocalBroker
from polekit.protocols import identity, modbus


def rss_mb() -> float:
    """Resident set size of this process now, in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(seconds: float, n_devices: int) -> None:
    regmap = modbus.register_map("pole-env")
    values_template = [(p, 1 if p.dtype != "bool" else True) for p in regmap]
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        codes = [identity.make("371600", "PL", i + 1) for i in range(n_devices)]
        config = parse_config(
            {
                "gateway": {"id": "bench", "data_dir": tmp, "queue_max_mb": 2048},
                "mqtt": {"url": broker.url},
                "bus": [{"name": "none", "type": "tcp", "host": "127.0.0.1", "port": 1}],
                "device": [
                    {"code": c, "bus": "none", "unit": 1 + i % 247, "map": "pole-env"}
                    for i, c in enumerate(codes)
                ],
                "status": {"enabled": False},
            },
            Path(tmp) / "bench.toml",
        )
        gw = Gateway(config)
        gw.buses.clear()  # the synthetic source below replaces the Modbus buses
        task = asyncio.create_task(gw.run())
        while not gw.uplink.connected:
            await asyncio.sleep(0.01)

        async def produce(duration: float) -> int:
            polls = 0
            end = time.monotonic() + duration
            while time.monotonic() < end:
                now = time.time()
                await asyncio.gather(
                    *(gw._on_poll(d, values_template, now) for d in config.devices)
                )
                polls += len(config.devices)
            return polls

        per_poll = len(values_template)
        # phase 1
        cpu0, t0, pub0 = cpu_s(), time.monotonic(), gw.uplink.published
        polls = await produce(seconds)
        while gw.queue.depth:
            await asyncio.sleep(0.01)
        elapsed, cpu = time.monotonic() - t0, cpu_s() - cpu0
        readings = (gw.uplink.published - pub0) * per_poll
        assert gw.uplink.published - pub0 == polls
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000
        print(
            f"phase 1, broker up: {readings} readings ({polls} packs of {per_poll}) "
            f"in {elapsed:.1f} s"
        )
        print(
            f"  throughput        {readings / elapsed:>10.0f} readings/s   (target 20000; ratio "
            f"{readings / elapsed / 20000:.2f})"
        )
        print(
            f"  CPU               {cpu / readings * 1e4:>10.2f} s per 10,000 readings = "
            f"{cpu / readings * 1e6:.1f} us/reading "
            f"(target 50; ratio {cpu / readings * 1e6 / 50:.2f})"
        )
        print(f"  peak RSS          {peak:>10.1f} MB (target < 60)")
        # phase 2
        broker.stop()
        while gw.uplink.connected:
            await asyncio.sleep(0.01)
        samples = []
        offline_polls = 0
        for _ in range(int(seconds)):
            offline_polls += await produce(1.0)
            samples.append(rss_mb())
        print(
            f"phase 2, broker down: {offline_polls * per_poll} readings queued on disk "
            f"({gw.queue.size_bytes / 1e6:.1f} MB); RSS each second: "
            + " ".join(f"{s:.1f}" for s in samples)
            + " MB"
        )
        print(f"  RSS growth first->last second: {samples[-1] - samples[0]:+.1f} MB")
        # phase 3
        t_back = time.monotonic()
        broker.start()
        while not gw.uplink.connected:
            await asyncio.sleep(0.005)
        reconnect = time.monotonic() - t_back
        while gw.queue.depth:
            await asyncio.sleep(0.01)
        drain = time.monotonic() - t_back
        print(
            f"phase 3, broker back: reconnected in {reconnect:.2f} s (target < 2), "
            f"{offline_polls} queued packs drained in {drain:.1f} s "
            f"({offline_polls * per_poll / drain:.0f} readings/s)"
        )
        gw.stop()
        await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.devices))


if __name__ == "__main__":
    main()
