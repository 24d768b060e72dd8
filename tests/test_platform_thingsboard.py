"""The thingsboard adapter against ThingsBoard's own gateway client: a real gateway with a
pymodbus device on a real mosquitto publishes; tb-mqtt-client's TBGatewayMqttClient
(ThingsBoard's published Python SDK, run from .venv-refs/thingsboard by
tests/refs/tb_gateway.py) publishes the same content; topics and JSON structure must match
message by message. Also: names, units and times of the readings, and an RPC that writes
the Modbus device and is answered on v1/gateway/rpc with its id."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from platkit import platform_bench, reference_python

from gwkit import Collector, run, until

TOKEN = "tb-test-token"
HERE = Path(__file__).parent


def _gateway_messages(messages: list[Any]) -> list[tuple[str, Any]]:
    return [(m.topic, json.loads(m.payload)) for m in messages if m.topic.startswith("v1/gateway/")]


def _steps(ours: list[tuple[str, Any]]) -> list[list[Any]]:
    # what our adapter sent, as calls of ThingsBoard's client with the same content
    steps: list[list[Any]] = []
    for topic, body in ours:
        if topic == "v1/gateway/connect":
            steps.append(["connect", body["device"], body["type"]])
        elif topic == "v1/gateway/disconnect":
            steps.append(["disconnect", body["device"]])
        elif topic == "v1/gateway/telemetry":
            ((device, items),) = body.items()
            steps.append(["telemetry", device, items[0]])
        elif topic == "v1/gateway/attributes":
            for device, attrs in body.items():
                steps.append(["attributes", device, attrs])
        elif topic == "v1/gateway/rpc":
            steps.append(["rpc_reply", body["device"], body["id"], body["data"]])
    return steps


def test_thingsboard_messages_match_tb_mqtt_client_and_rpc_writes_the_device(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        platform = {"kind": "thingsboard", "access_token": TOKEN}
        async with platform_bench(tmp_path, platform, units=(1,), poll_s=0.2) as bench:
            code = bench.codes[1]
            await bench.devices.set(1, "temperature", 21.5)
            await bench.devices.set(1, "pm2_5", 12)
            sub = bench.sub
            assert sub is not None
            started = time.time()
            await until(lambda: len(bench.topics("v1/gateway/telemetry")) >= 3, 20, "telemetry")
            request = {
                "device": code,
                "data": {"id": 42, "method": "set", "params": {"lamp_level": 40}},
            }
            await sub.publish("v1/gateway/rpc", json.dumps(request).encode())
            await until(
                lambda: any(b'"success"' in m.payload for m in sub.on("v1/gateway/rpc")),
                10,
                "the RPC reply",
            )
            assert await bench.devices.get(1, "lamp_level") == 40  # the Modbus register
            assert bench.gateway is not None
            bench.gateway.stop()  # a clean stop: every device disconnected
            await until(lambda: len(bench.topics("v1/gateway/disconnect")) >= 1, 10, "disconnect")
            ours = [
                (t, b)
                for t, b in _gateway_messages(sub.messages)
                if not (t == "v1/gateway/rpc" and "method" in b.get("data", {}))
            ]
        # the readings: our names, units (attributes), ms times, the device's values
        telemetry = [b for t, b in ours if t == "v1/gateway/telemetry"]
        item = telemetry[-1][code][0]
        assert started * 1000 - 1000 < item["ts"] <= time.time() * 1000
        assert item["values"]["temperature"] == 21.5 and item["values"]["pm2_5"] == 12
        seqs = [b[code][0]["values"]["seq"] for b in telemetry]
        assert seqs == list(range(1, len(seqs) + 1))  # the device's sequence, no gap
        attributes = next(b for t, b in ours if t == "v1/gateway/attributes")
        assert attributes[code]["units"]["temperature"] == "Cel"
        assert attributes[code]["units"]["pm2_5"] == "ug/m3"
        reply = next(b for t, b in ours if t == "v1/gateway/rpc")
        assert reply == {
            "device": code,
            "id": 42,
            "data": {"success": True, "set": {"lamp_level": 40}},
        }

        # ThingsBoard's client sends the same content: the same topics and JSON
        from polekit.hil.broker import LocalBroker

        with LocalBroker(kind="mosquitto") as broker:
            async with Collector(broker.host, broker.port, topic_filter="v1/gateway/#") as ref:
                steps = _steps(ours)
                proc = await asyncio.create_subprocess_exec(
                    reference_python("thingsboard"),
                    str(HERE / "refs" / "tb_gateway.py"),
                    broker.host,
                    str(broker.port),
                    TOKEN,
                    json.dumps(steps),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0 and b"done" in out, err.decode()[-2000:]
                await until(lambda: len(ref.messages) >= len(ours), 10, "the reference's messages")
                theirs = _gateway_messages(ref.messages)
        assert len(theirs) == len(ours) >= 7, (len(theirs), len(ours))
        for mine, reference in zip(ours, theirs, strict=True):
            assert mine == reference

    run(scenario(), timeout_s=150)


if __name__ == "__main__":
    sys.exit("run with pytest")
