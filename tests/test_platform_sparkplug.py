"""The sparkplug adapter seen by a Sparkplug B host application built on pysparkplug
(tests/refs/spb_host.py, in .venv-refs/sparkplug), on a real mosquitto, with a gateway
process polling a pymodbus device: NBIRTH/DBIRTH/DDATA decode with the right metrics,
datatypes, units and seq; a DCMD writes the Modbus register and the written value comes
back in a DDATA; NCMD Rebirth re-births; kill -9 of the gateway gives NDEATH (the will)
with the session's bdSeq, and the next session counts bdSeq on."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
from platkit import (
    platform_bench,
    platform_process,
    reference_python,
    start_devices,
    write_platform_config,
)

from polekit.hil.broker import LocalBroker

from gwkit import gateway_running, run, until

HERE = Path(__file__).parent
GROUP, EDGE = "city-poles", "cabinet-17"


class Host:
    """The pysparkplug host in a process of its own; ``lines`` is what it decoded."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, broker: LocalBroker) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            reference_python("sparkplug"),
            str(HERE / "refs" / "spb_host.py"),
            broker.host,
            str(broker.port),
            GROUP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._task = asyncio.create_task(self._read())
        await until(lambda: any(x["type"] == "ready" for x in self.lines), 20, "the host")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    def of(self, kind: str, device: str | None = None) -> list[dict[str, Any]]:
        return [
            x for x in self.lines if x["type"] == kind and (device is None or x["device"] == device)
        ]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def metrics(line: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in line["metrics"]}


def test_sparkplug_host_decodes_births_and_data_commands_come_back_ndeath_on_kill(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        units = (1,)
        devices = await start_devices(units)
        await devices.set(1, "temperature", 21.5)
        await devices.set(1, "pm2_5", 12)
        host = Host()
        code = "371600PL000001C"
        try:
            with LocalBroker(kind="mosquitto") as broker:
                await host.start(broker)
                platform = {"kind": "sparkplug", "group_id": GROUP, "edge_node_id": EDGE}
                config = write_platform_config(tmp_path, broker, platform, devices, units)
                with platform_process(tmp_path, broker, config) as gw:
                    await until(lambda: len(host.of("DDATA", code)) >= 3, 30, "DDATA")
                    nbirth = host.of("NBIRTH")[0]
                    assert nbirth["seq"] == 0 and nbirth["edge"] == EDGE
                    node = metrics(nbirth)
                    bdseq = node["bdSeq"]["value"]
                    assert node["bdSeq"]["datatype"] == "INT64"
                    assert node["Node Control/Rebirth"] == {
                        **node["Node Control/Rebirth"],
                        "datatype": "BOOLEAN",
                        "value": False,
                    }
                    dbirth = host.of("DBIRTH", code)[0]
                    born = metrics(dbirth)
                    assert born["temperature"]["datatype"] == "DOUBLE"
                    assert born["lamp_on"]["datatype"] == "BOOLEAN"
                    birth_units = next(x for x in host.of("units") if x["topic"].endswith(code))
                    assert birth_units["units"]["temperature"] == "Cel"
                    assert birth_units["units"]["pm2_5"] == "ug/m3"
                    data = metrics(host.of("DDATA", code)[-1])
                    assert data["temperature"]["value"] == 21.5
                    assert data["pm2_5"]["value"] == 12
                    # seq: 0 at NBIRTH, then +1 a message, in the order the host got them
                    seqs = [
                        x["seq"]
                        for x in host.lines
                        if x["type"] in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH")
                    ]
                    assert seqs == [i % 256 for i in range(len(seqs))], seqs

                    # a DCMD reaches the Modbus device; the value written comes back
                    await host.send(
                        {"dcmd": code, "edge": EDGE, "metrics": [["lamp_level", "DOUBLE", 30]]}
                    )
                    await until(
                        lambda: any(
                            metrics(x).get("lamp_level", {}).get("value") == 30
                            for x in host.of("DDATA", code)
                        ),
                        15,
                        "lamp_level 30 in a DDATA",
                    )
                    assert await devices.get(1, "lamp_level") == 30

                    # NCMD Rebirth: a new NBIRTH (same bdSeq, seq 0) and DBIRTH
                    await host.send({"rebirth": EDGE})
                    await until(lambda: len(host.of("NBIRTH")) >= 2, 15, "the rebirth")
                    again = host.of("NBIRTH")[1]
                    assert again["seq"] == 0 and metrics(again)["bdSeq"]["value"] == bdseq

                    gw.proc.kill()  # kill -9: the broker publishes the will
                    await until(lambda: len(host.of("NDEATH")) >= 1, 15, "NDEATH")
                    assert host.of("NDEATH")[0]["bdSeq"] == bdseq
                with platform_process(tmp_path, broker, config, "gateway2.log"):
                    await until(lambda: len(host.of("NBIRTH")) >= 3, 30, "the next session")
                    assert metrics(host.of("NBIRTH")[2])["bdSeq"]["value"] == (bdseq + 1) % 256
        finally:
            await host.stop()
            await devices.stop()

    run(scenario(), timeout_s=150)


def _qos_seen(tmp_path: Path, qos: int | None) -> dict[str, set[int]]:
    """The QoS each Sparkplug message type arrives with at a QoS 1 subscriber (a host
    subscribes at QoS 1: a message arrives at the lower of the two), from a gateway in
    process with ``qos`` set (None: the default)."""
    table: dict[str, Any] = {"kind": "sparkplug", "group_id": GROUP, "edge_node_id": EDGE}
    if qos is not None:
        table["qos"] = qos
    seen: dict[str, set[int]] = {}
    tmp_path.mkdir()

    async def scenario() -> None:
        async with platform_bench(tmp_path, table, run_gateway=False) as bench:
            assert bench.gateway is not None
            b = bench.broker
            async with aiomqtt.Client(b.host, b.port, identifier="qos-host") as host:
                await host.subscribe(f"spBv1.0/{GROUP}/#", qos=1)
                async with gateway_running(bench.gateway, b.host, b.port):
                    async with asyncio.timeout(15):
                        async for m in host.messages:
                            kind = str(m.topic).split("/")[2]
                            seen.setdefault(kind, set()).add(m.qos)
                            if {"NBIRTH", "DBIRTH", "DDATA"} <= set(seen):
                                break

    run(scenario(), timeout_s=40)
    return seen


def test_births_and_data_are_qos1_by_default_and_qos0_with_qos_0(tmp_path: Path) -> None:
    # Sparkplug 3.0 asks QoS 0 for NBIRTH/DBIRTH/DDATA; `qos = 0` must give exactly that,
    # for the queued DDATA too (the default QoS 1 is a documented deviation: durability)
    default = _qos_seen(tmp_path / "default", None)
    assert default["DDATA"] == {1}, default
    strict = _qos_seen(tmp_path / "strict", 0)
    assert strict == {"NBIRTH": {0}, "DBIRTH": {0}, "DDATA": {0}}, strict
