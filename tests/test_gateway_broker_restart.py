"""A broker restart (issue 19 item 4): a real mosquitto stopped and started under a running
gateway process. What the broker acknowledged is not sent again after the reconnect, so a
subscriber sees no pack twice; a stop is a warning in the log, never an error.

One case is outside the gateway's reach: when the broker closes the connection while a
batch is being written, the write fails (EPIPE) and paho closes the socket without reading
the PUBACKs already waiting in it, so that batch's acknowledged tail comes again (same
seq). Measured: only outages that ended in "Broken pipe" ever repeated packs (23-25 of a
200-message window), never a clean close or a reset. The test holds the gateway to that:
no repeat after any other outage, at most one in-flight window after such a one."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gwproc import CountingDevices, GatewayProcess, write_config

from polekit.gateway.uplink import BATCH
from polekit.hil.broker import LocalBroker
from polekit.protocols import identity

from gwkit import Collector, run, until

CODES = {u: identity.make("371600", "PL", 400 + u) for u in (1, 2, 3, 4)}
RESTARTS = 5


def test_broker_restarts_send_no_acknowledged_pack_again_and_log_no_error(
    tmp_path: Path,
) -> None:
    sessions: list[list[tuple[str, int]]] = []  # the packs seen while each broker ran

    async def scenario() -> tuple[Counter[tuple[str, int]], str]:
        # (the collector connects before the gateway, which retries up to a second apart)
        devices = await CountingDevices(list(CODES)).start()
        broker = LocalBroker().start()
        seen: Counter[tuple[str, int]] = Counter()
        config = write_config(
            tmp_path / "gateway.toml",
            tmp_path / "data",
            broker.url,
            [
                {"code": c, "bus": "b", "unit": u, "map": "pole-env", "poll_interval": 0.05}
                for u, c in CODES.items()
            ],
            [{"name": "b", "type": "tcp", "host": "127.0.0.1", "port": devices.tcp_port}],
        )
        gw = GatewayProcess(config, tmp_path / "gateway.log")

        def health() -> dict[str, Any]:
            return gw.health() or {"queue": {"depth": 1}, "mqtt": {"connected": True}}

        try:
            for _ in range(RESTARTS + 1):
                async with Collector(broker.host, broker.port) as sub:
                    # stopped while the backlog of the last outage is on its way: a batch
                    # of publishes in flight, part of it acknowledged
                    deadline = time.monotonic() + 30
                    while len(sub.on("/data/" + CODES[1])) < 5:  # looked at every ms
                        assert time.monotonic() < deadline, "no backlog"
                        await asyncio.sleep(0.001)
                    broker.stop()
                    await asyncio.sleep(0.2)  # whatever was on its way arrives
                got = [(code, s) for code in CODES.values() for s in sub.seqs(code)]
                seen.update(got)
                sessions.append(got)
                await until(lambda: not health()["mqtt"]["connected"], what="the gateway to see")
                await asyncio.sleep(2.0)  # a backlog piles up in the queue meanwhile
                broker.start()
            gw.proc.send_signal(signal.SIGTERM)  # the devices answer on while it stops
            assert await asyncio.to_thread(gw.proc.wait, 20) == 0, gw.output()[-3000:]
        finally:
            if gw.alive():
                gw.proc.kill()
                gw.proc.wait()
            broker.stop()
            await devices.stop()
        return seen, gw.output()

    seen, log = run(scenario(), timeout_s=150)
    lines = log.splitlines()
    assert sum(" WARNING " in ln and "broker unreachable" in ln for ln in lines) >= RESTARTS
    errors = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln]
    assert not errors, errors
    outages = [ln for ln in lines if " WARNING " in ln and "broker unreachable" in ln]
    for i, got in enumerate(sessions):
        assert len(set(got)) == len(got), f"a pack came twice while broker {i} ran"
    for i in range(RESTARTS):
        again = set(sessions[i]) & set(sessions[i + 1])  # seen, then sent again
        if "Broken pipe" in outages[i]:  # a write that failed: see the module's docstring
            assert len(again) <= BATCH, (len(again), outages[i])
        else:
            assert not again, f"{len(again)} packs sent again after: {outages[i]}"
    assert len(seen) > RESTARTS * 5, "too few packs to say anything"
