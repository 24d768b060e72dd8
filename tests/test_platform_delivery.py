"""Delivery to several platforms with real parts (mosquitto, pymodbus, `polekit gateway
run`): senml and thingsboard at once each get every poll; one platform's broker away does
not hold back the other, and its backlog arrives when it is back; a kill -9 loses nothing
either platform had committed (each device's seq has no gap, per platform)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from platkit import platform_process, pole_code, start_devices, write_platform_config

from polekit.hil.broker import LocalBroker
from polekit.protocols import senml

from gwkit import Collector, run, until


def tb_seqs(messages: list, code: str) -> list[int]:
    out = []
    for m in messages:
        if m.topic == "v1/gateway/telemetry":
            for item in json.loads(m.payload).get(code, []):
                out.append(item["values"]["seq"])
    return out


def senml_seqs(messages: list, code: str) -> list[int]:
    out = []
    for m in messages:
        if m.topic.endswith(f"/data/{code}"):
            pack = senml.resolve(senml.decode_cbor(m.payload), now=0)
            out.append(int(next(r["v"] for r in pack if r["n"].endswith(":seq"))))
    return out


def test_two_platforms_each_get_everything_and_one_outage_holds_back_nothing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        units = (1, 2)
        devices = await start_devices(units)
        code = pole_code(1)
        try:
            with (
                LocalBroker(kind="mosquitto") as home,
                LocalBroker(kind="mosquitto", persistent=True) as tb,
            ):
                platforms = [
                    {"kind": "senml"},
                    {"kind": "thingsboard", "access_token": "t", "url": tb.url},
                ]
                config = write_platform_config(tmp_path, home, platforms, devices, units, 0.1)
                async with (
                    Collector(home.host, home.port) as ours,
                    Collector(tb.host, tb.port, topic_filter="v1/gateway/#") as theirs,
                ):
                    with platform_process(tmp_path, home, config) as gw:
                        await until(lambda: len(tb_seqs(theirs.messages, code)) >= 3, 30, "tb")
                        await until(lambda: len(senml_seqs(ours.messages, code)) >= 3, 30, "senml")
                        # ThingsBoard's broker goes away: SenML goes on meanwhile
                        tb.stop()
                        before = len(senml_seqs(ours.messages, code))
                        await until(
                            lambda: len(senml_seqs(ours.messages, code)) >= before + 15,
                            15,
                            "SenML packs while ThingsBoard is away",
                        )
                        health = await asyncio.to_thread(gw.health)
                        assert health is not None
                        tb_health = next(
                            p for p in health["platforms"] if p["kind"] == "thingsboard"
                        )
                        assert not tb_health["connected"] and tb_health["queue_depth"] > 0
                        # a kill -9 while ThingsBoard's backlog waits on disk
                        gw.proc.kill()
                        gw.proc.wait()
                    tb.start()
                    async with Collector(tb.host, tb.port, topic_filter="v1/gateway/#") as back:
                        with platform_process(tmp_path, home, config, "gateway2.log"):
                            sent = len(senml_seqs(ours.messages, code))
                            await until(
                                lambda: max(tb_seqs(back.messages, code), default=0) >= sent,
                                30,
                                "ThingsBoard's backlog and new data",
                            )
                    for c in (pole_code(1), pole_code(2)):
                        for got in (
                            senml_seqs(ours.messages, c),
                            tb_seqs(theirs.messages, c) + tb_seqs(back.messages, c),
                        ):
                            have = sorted(set(got))
                            assert have == list(range(1, have[-1] + 1)), (c, have)
        finally:
            await devices.stop()

    run(scenario(), timeout_s=200)
