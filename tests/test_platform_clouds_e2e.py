"""IoTDA, OneNET and Alibaba end to end: pymodbus pole devices on Modbus TCP, the gateway
(in process, and as ``polekit gateway run`` for kill -9), a real mosquitto, and a test
client playing the platform: it reads what arrives on the platform's own topics and
sends the platform's own downlinks.

For each kind: readings arrive on the right topic with the platform's names, the model's
units (the console's: ug/m3, hPa) and the poll's time; a command for a sub-device reaches
the Modbus register and its result reaches the platform's reply topic; a broker outage
then a kill -9 lose no sequence number. The CONNECT each adapter sends is checked
against the platform's reference (the algorithm of its SDK) on a recording endpoint,
since mosquitto cannot check an HMAC password."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from gwproc import GatewayProcess
from platkit import (
    platform_bench,
    platform_process,
    platform_toml,
    pole_code,
    start_devices,
    write_platform_config,
)

from polekit.gateway.platforms import onenet_dialect
from polekit.hil.broker import LocalBroker

from gwkit import Collector, Received, run, until
from mqtt_recorder import MqttRecorder

KEY = "KuF3NT/jUBJ62LNBB/A8XZA9CqS3Cu79B/ABmfA1UCw="
CODE = pole_code(1)


@dataclass(frozen=True)
class Post:
    """One data message as the platform reads it."""

    device: str
    values: dict[str, Any]
    time_s: float
    seq: int


@dataclass(frozen=True)
class Kind:
    table: dict[str, Any]
    topic_filter: str  # what the platform's side subscribes to
    data_topic: str
    read: Callable[[Received], Post]
    command: Callable[[str, int], tuple[str, bytes]]  # (device code, lamp level)
    reply_topic: str
    reply_ok: Callable[[dict[str, Any]], bool]


def _iotda_read(m: Received) -> Post:
    [dev] = json.loads(m.payload)["devices"]
    [svc] = dev["services"]
    t = calendar.timegm(time.strptime(svc["event_time"][:19], "%Y-%m-%dT%H:%M:%S"))
    props = dict(svc["properties"])
    return Post(dev["device_id"], props, t + int(svc["event_time"][20:23]) / 1000, props.pop("seq"))


def _thing_read(params: dict[str, Any], device: str) -> Post:
    times = {v["time"] for v in params.values()}
    values = {k: v["value"] for k, v in params.items()}
    assert len(times) == 1, times
    return Post(device, values, times.pop() / 1000, values.pop("seq"))


def _onenet_read(m: Received) -> Post:
    [entry] = json.loads(m.payload)["params"]
    return _thing_read(entry["properties"], entry["identity"]["deviceName"])


def _aliyun_read(m: Received) -> Post:
    return _thing_read(json.loads(m.payload)["params"], m.topic.split("/")[3])


GW_IOTDA = "6512a3f0b8c4a5f1d2e3c4b5_gw"
KINDS = {
    "iotda": Kind(
        {"kind": "iotda", "device_id": GW_IOTDA, "secret": "s3cr3t", "service_id": "pole"},
        "$oc/#",
        f"$oc/devices/{GW_IOTDA}/sys/gateway/sub_devices/properties/report",
        _iotda_read,
        lambda code, level: (
            f"$oc/devices/{GW_IOTDA}/sys/commands/request_id=rq-1",
            json.dumps(
                {
                    "object_device_id": code,
                    "service_id": "pole",
                    "command_name": "set",
                    "paras": {"lamp_level": level},
                }
            ).encode(),
        ),
        f"$oc/devices/{GW_IOTDA}/sys/commands/response/request_id=rq-1",
        lambda b: b["result_code"] == 0,
    ),
    "onenet": Kind(
        {
            "kind": "onenet",
            "product_id": "Uq8Nn3cZ1f",
            "device_name": "gw01",
            "key": KEY,
            "sub_product_id": "SubProd01",
        },
        "$sys/#",
        "$sys/Uq8Nn3cZ1f/gw01/thing/pack/post",
        _onenet_read,
        lambda code, level: (
            "$sys/Uq8Nn3cZ1f/gw01/thing/sub/property/set",
            json.dumps(
                {
                    "id": "101",
                    "version": "1.0",
                    "params": {
                        "productID": "SubProd01",
                        "deviceName": code,
                        "params": {"lamp_level": level},
                    },
                }
            ).encode(),
        ),
        "$sys/Uq8Nn3cZ1f/gw01/thing/sub/property/set_reply",
        lambda b: b["code"] == 200 and b["id"] == "101",
    ),
    "aliyun": Kind(
        {
            "kind": "aliyun",
            "product_key": "a1PoleGw0x",
            "device_name": "pole-gw-01",
            "device_secret": "gateway-secret",
            "sub_product_key": "a1SubEnv0y",
            "sub_devices": {CODE: "sub-secret"},
        },
        "/#",
        f"/sys/a1SubEnv0y/{CODE}/thing/event/property/post",
        _aliyun_read,
        lambda code, level: (
            f"/sys/a1SubEnv0y/{code}/thing/service/property/set",
            json.dumps(
                {
                    "id": "55",
                    "version": "1.0",
                    "params": {"lamp_level": level},
                    "method": "thing.service.property.set",
                }
            ).encode(),
        ),
        f"/sys/a1SubEnv0y/{CODE}/thing/service/property/set_reply",
        lambda b: b["code"] == 200 and b["id"] == "55",
    ),
}


def _queued(gw: GatewayProcess) -> int:
    """The platform's queue depth on the process's /health (0 until it is up)."""
    health = gw.health()
    return health["platforms"][0]["queue_depth"] if health else 0


def _posts(sub: Collector, kind: Kind) -> list[Post]:
    return [kind.read(m) for m in sub.messages if m.topic == kind.data_topic]


@pytest.mark.parametrize("name", list(KINDS))
def test_readings_arrive_with_the_platforms_names_units_and_time(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]

    async def scenario() -> None:
        async with platform_bench(tmp_path, kind.table, run_gateway=False) as bench:
            await bench.devices.set(1, "temperature", 21.5)
            await bench.devices.set(1, "pm2_5", 12)
            async with Collector(
                bench.broker.host, bench.broker.port, topic_filter=kind.topic_filter
            ) as platform:
                from gwkit import gateway_running

                assert bench.gateway is not None
                started = time.time()
                async with gateway_running(bench.gateway, bench.broker.host, bench.broker.port):
                    await until(lambda: len(_posts(platform, kind)) >= 3, 15, f"{name} posts")
                posts = _posts(platform, kind)
        p = posts[0]
        assert p.device == CODE
        assert p.values["temperature"] == 21.5  # Cel
        assert p.values["pm2_5"] == 12.0  # ug/m3: the console's unit, not SenML's kg/m3
        assert {"humidity", "lamp_on", "lamp_level", "uptime"} <= set(p.values)
        assert started - 1 <= p.time_s <= time.time() + 1
        seqs = [q.seq for q in posts]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        # the session announced the sub-device before its data
        topics = [m.topic for m in platform.messages]
        first_post = topics.index(kind.data_topic)
        if name == "onenet":
            assert "$sys/Uq8Nn3cZ1f/gw01/thing/sub/login" in topics[:first_post]
        if name == "aliyun":
            assert "/sys/a1PoleGw0x/pole-gw-01/thing/topo/add" in topics[:first_post]
            assert "/ext/session/a1PoleGw0x/pole-gw-01/combine/batch_login" in topics[:first_post]

    run(scenario())


@pytest.mark.parametrize("name", list(KINDS))
def test_a_command_reaches_the_device_and_its_result_the_reply_topic(
    tmp_path: Path, name: str
) -> None:
    kind = KINDS[name]

    async def scenario() -> None:
        async with platform_bench(tmp_path, kind.table) as bench:
            async with Collector(
                bench.broker.host, bench.broker.port, topic_filter=kind.topic_filter
            ) as platform:
                await until(lambda: bool(_posts(platform, kind)), 15, f"{name} up")
                topic, payload = kind.command(CODE, 40)
                await platform.publish(topic, payload)
                await until(lambda: bool(platform.on(kind.reply_topic)), 10, f"{name} reply")
                assert await bench.devices.get(1, "lamp_level") == 40
                reply = json.loads(platform.on(kind.reply_topic)[0].payload)
                assert kind.reply_ok(reply), reply

    run(scenario())


class PlatformSide:
    """The platform's subscriber through broker outages: a persistent session (the broker
    keeps its QoS 1 messages while it is away, and keeps them over a restart with
    persistence on, as a production broker does) that reconnects by itself."""

    def __init__(self, host: str, port: int, topic_filter: str) -> None:
        self.host, self.port, self.topic_filter = host, port, topic_filter
        self.messages: list[Received] = []
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PlatformSide:
        self._task = asyncio.create_task(self._run())
        await until(lambda: self.connected, 10, "the platform side to connect")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"platform-{id(self)}", clean_session=False
                ) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self.connected = True
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self.messages.append(Received(str(m.topic), payload, m.retain))
            except aiomqtt.MqttError:
                self.connected = False
                await asyncio.sleep(0.1)  # retry pace while the broker is down


@pytest.mark.parametrize("name", list(KINDS))
def test_broker_outage_then_kill9_lose_no_sequence_number(tmp_path: Path, name: str) -> None:
    kind = KINDS[name]

    async def scenario() -> list[int]:
        broker = LocalBroker(kind="mosquitto", persistent=True).start()
        devices = await start_devices((1,))
        try:
            path = write_platform_config(tmp_path, broker, kind.table, devices, (1,))
            async with PlatformSide(broker.host, broker.port, kind.topic_filter) as platform:

                def posts() -> list[Post]:
                    return [kind.read(m) for m in platform.messages if m.topic == kind.data_topic]

                with platform_process(tmp_path, broker, path) as gw:
                    await until(lambda: len(posts()) >= 2, 20, "first posts")
                    broker.stop()
                    # polls go on into the platform's queue while its broker is away
                    await until(lambda: _queued(gw) >= 5, 20, "a backlog in the queue")
                    broker.start()
                    n = len(posts())
                    await until(lambda: _queued(gw) == 0, 30, "the backlog sent")
                    await until(lambda: len(posts()) >= n + 5, 20, "the backlog received")
                    gw.proc.kill()  # kill -9, in the middle of polling and publishing
                    gw.proc.wait(timeout=10)
                n = len(posts())
                with platform_process(tmp_path, broker, path, "gateway2.log"):
                    await until(lambda: len(posts()) >= n + 3, 30, "posts after the kill")
                return sorted({p.seq for p in posts()})
        finally:
            await devices.stop()
            broker.stop()

    seqs = run(scenario(), timeout_s=150)
    assert seqs[0] == 1 and seqs == list(range(1, seqs[-1] + 1)), f"gaps in {seqs}"


def test_connects_carry_the_platforms_signed_logins(tmp_path: Path) -> None:
    """What the gateway actually sends at CONNECT, seen by a recording endpoint, against
    each platform SDK's algorithm at the time the CONNECT was made."""

    async def scenario() -> None:
        devices = await start_devices((1,))
        try:
            async with MqttRecorder() as rec:
                url = f"mqtt://127.0.0.1:{rec.port}"
                tables = [{**KINDS[k].table, "url": url, "name": k} for k in KINDS]
                path = tmp_path / "gateway.toml"
                assert devices.tcp_port is not None
                path.write_text(
                    platform_toml(tmp_path / "data", url, tables, devices.tcp_port, (1,))
                )
                t0 = time.time()
                with platform_process(tmp_path, LocalBroker(kind="mosquitto"), path):
                    await until(
                        lambda: len({c.username for c in rec.connects}) >= 3, 20, "CONNECTs"
                    )
                t1 = time.time()
        finally:
            await devices.stop()
        by_user = {c.username: c for c in rec.connects}

        # IoTDA (huaweicloud-iot-device-sdk-python utils/iot_util.py): HMAC-SHA256 keyed by
        # the UTC hour YYYYMMDDHH over the secret
        c = by_user[GW_IOTDA]
        stamp = c.client_id.rsplit("_", 1)[1]
        assert stamp in {time.strftime("%Y%m%d%H", time.gmtime(t)) for t in (t0, t1)}
        assert c.client_id == f"{GW_IOTDA}_0_1_{stamp}"
        assert c.password == hmac.new(stamp.encode(), b"s3cr3t", hashlib.sha256).hexdigest()

        # OneNET (official C SDK dev_token.c, vectors in test_platform_onenet.py)
        c = by_user["Uq8Nn3cZ1f"]
        assert c.client_id == "gw01"
        fields = dict(kv.split("=", 1) for kv in (c.password or "").split("&"))
        et = int(fields["et"])
        assert t0 + 7 * 86400 - 1 <= et <= t1 + 7 * 86400
        assert c.password == onenet_dialect.token(KEY, "products/Uq8Nn3cZ1f/devices/gw01", et)

        # Alibaba (docs 73742 / aliyun-iot-linkkit): sorted params, HMAC-SHA256 hex
        c = by_user["pole-gw-01&a1PoleGw0x"]
        ts = c.client_id.split("timestamp=")[1].rstrip("|")
        content = (
            f"clientIda1PoleGw0x.pole-gw-01deviceNamepole-gw-01productKeya1PoleGw0xtimestamp{ts}"
        )
        assert (
            c.client_id
            == f"a1PoleGw0x.pole-gw-01|securemode=3,signmethod=hmacsha256,timestamp={ts}|"
        )
        assert (
            c.password == hmac.new(b"gateway-secret", content.encode(), hashlib.sha256).hexdigest()
        )
        assert t0 * 1000 - 1 <= int(ts) <= t1 * 1000 + 1

    run(scenario(), timeout_s=60)
