"""Alibaba Cloud Alink: our login, sub-device topology/login signatures, topics and bodies
against Alibaba's own Python Link SDK, ``aliyun-iot-linkkit`` (PyPI, linkkit/linkkit.py),
run for real: it connects to a local MQTT endpoint that records its CONNECT and what it
publishes, and we compute ours for the same inputs (its timestamps and ids included).

What the SDK does not cover is checked against Alibaba's documentation:
https://www.alibabacloud.com/help/doc-detail/73742.htm (the CONNECT fields, signmethod
hmacsha256, timestamps in milliseconds)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from linkkit import linkkit  # aliyun-iot-linkkit, in the dev extra

from polekit.gateway.platforms import alink_dialect as alink

from gwkit import run, until
from mqtt_recorder import MqttRecorder

# the SDK builds its paho client with paho's deprecated callback API version 1
pytestmark = pytest.mark.filterwarnings("ignore:Callback API version 1:DeprecationWarning")

PK, DN, DS = "a1PoleGw0x", "pole-gw-01", "Q2xvdWRTZWNyZXRGb3JUZXN0aW5nMTIz"
SUB = alink.SubDevice("a1SubEnv0y", "330100EN0000016", "c3ViLWRldmljZS1zZWNyZXQtMDAx")

# the smallest thing model the SDK needs to post properties (its "post" event lists them)
TSL = {
    "events": [{"identifier": "post", "outputData": [{"identifier": "temperature"}]}],
    "services": [
        {"identifier": "set", "inputData": [{"identifier": "lamp_level"}]},
        {"identifier": "get", "outputData": []},
        {"identifier": "reboot", "inputData": []},
    ],
}


@pytest.fixture(autouse=True)
def _paho2_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """linkkit 1.2.13 calls paho-mqtt 1.x's ``loop(timeout, max_packets)``; paho 2 (which
    aiomqtt needs) dropped the unused ``max_packets``, so the SDK's network loop would
    spin on a TypeError. Only that argument is dropped; the SDK's code runs as shipped."""
    paho = linkkit.mqtt.Client
    loop = paho.loop
    monkeypatch.setattr(paho, "loop", lambda self, timeout=1.0, *_unused: loop(self, timeout))


async def _start_sdk(rec: MqttRecorder, tmp_path: Path) -> Any:
    tsl = tmp_path / "tsl.json"
    tsl.write_text(json.dumps(TSL))
    lk = linkkit.LinkKit(host_name="127.0.0.1", product_key=PK, device_name=DN, device_secret=DS)
    lk.config_mqtt(port=rec.port, secure="", endpoint="127.0.0.1", keep_alive=60)
    assert lk.thing_setup(str(tsl)) == 0
    lk.connect_async()
    await until(lambda: lk.check_state() == linkkit.LinkKit.LinkKitState.CONNECTED, what="SDK up")
    return lk


def test_login_equals_the_sdks(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with MqttRecorder() as rec:
            lk = await _start_sdk(rec, tmp_path)
            try:
                sent = rec.connects[0]
            finally:
                lk.disconnect()
        # the SDK signs with hmacsha1 over clientId = "{pk}&{dn}" and a timestamp of its own
        fields = re.fullmatch(r"(.+?)\|(.*)\|", sent.client_id)
        assert fields, sent.client_id
        params = dict(kv.split("=", 1) for kv in fields.group(2).split(","))
        ours = alink.login(
            PK,
            DN,
            DS,
            params["timestamp"],
            secure_mode=int(params["securemode"]),
            sign_method=params["signmethod"],
            client_id=fields.group(1),
        )
        assert sent.username == ours.username == f"{DN}&{PK}"
        assert sent.password == ours.password
        # our client id carries the same securemode, signmethod and timestamp (the SDK adds
        # fields of its own: ext, _ss, lan, _v)
        our_params = dict(kv.split("=", 1) for kv in ours.client_id.split("|")[1].split(","))
        assert our_params == {k: params[k] for k in ("securemode", "signmethod", "timestamp")}
        assert ours.client_id.startswith(fields.group(1) + "|")
        assert params["securemode"] == "3"  # plain TCP, as configured (secure="")

    run(scenario())


def test_hmacsha256_login_follows_the_documented_rule() -> None:
    # docs: content = "clientId{id}deviceName{dn}productKey{pk}timestamp{ts}" (sorted), the
    # HMAC named by signmethod, keyed by the device secret; the SDK itself only signs sha1
    import hashlib
    import hmac

    creds = alink.credentials(PK, DN, DS, 1_700_000_000.123)
    ts = "1700000000123"
    content = f"clientId{PK}.{DN}deviceName{DN}productKey{PK}timestamp{ts}"
    assert creds.password == hmac.new(DS.encode(), content.encode(), hashlib.sha256).hexdigest()
    assert creds.client_id == f"{PK}.{DN}|securemode=2,signmethod=hmacsha256,timestamp={ts}|"
    assert creds.expires_at_s is None


def test_topology_add_and_batch_login_equal_the_sdks(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with MqttRecorder() as rec:
            lk = await _start_sdk(rec, tmp_path)
            try:
                sub = [SUB.product_key, SUB.device_name, SUB.device_secret]
                assert lk.gateway_add_subdev_topo([sub])[0] == 0
                assert lk.gateway_login_subdev([sub])[0] == 0
                topo_topic = alink.topo_add_topic(PK, DN)
                login_topic = alink.batch_login_topic(PK, DN)
                await until(
                    lambda: bool(rec.on(topo_topic) and rec.on(login_topic)), what="SDK posts"
                )
            finally:
                lk.disconnect()
        theirs = json.loads(rec.on(topo_topic)[0].payload)
        ts = int(theirs["params"][0]["timestamp"])
        ours = alink.topo_add(theirs["id"], [SUB], ts)
        assert ours.pop("method") == "thing.topo.add"  # in the docs' example; the SDK omits it
        assert ours == theirs

        theirs = json.loads(rec.on(login_topic)[0].payload)
        entry = theirs["params"]["deviceList"][0]
        # the SDK signs a client id of its own making; the rule is the same for any
        signed_as = alink.SubDevice(
            SUB.product_key, SUB.device_name, SUB.device_secret, entry["clientId"]
        )
        ours = alink.batch_login(theirs["id"], [signed_as], int(entry["timestamp"]))
        theirs.pop("version")  # the SDK adds one; the docs' batch_login example has none
        assert ours == theirs

    run(scenario())


def test_property_post_and_set_reply_equal_the_sdks(tmp_path: Path) -> None:
    async def scenario() -> None:
        changed: list[dict[str, Any]] = []
        async with MqttRecorder() as rec:
            lk = await _start_sdk(rec, tmp_path)
            lk.on_thing_prop_changed = lambda params, userdata: changed.append(params)
            try:
                post_topic = alink.property_post_topic(PK, DN)
                values = {"temperature": {"value": 21.5, "time": 1_700_000_000_123}}
                assert lk.thing_post_property(values)[0] == 0
                await until(lambda: bool(rec.on(post_topic)), what="SDK property post")

                set_topic = alink.sys_topic(PK, DN, "thing/service/property/set")
                down = {"id": "42", "version": "1.0", "params": {"lamp_level": 40}}
                down["method"] = "thing.service.property.set"
                # Alibaba's broker subscribes a device to its /sys topics by itself; the SDK
                # relies on that and subscribes to nothing, so the recorder just sends
                await rec.send(set_topic, json.dumps(down).encode())
                reply = alink.reply_topic(set_topic)
                await until(lambda: bool(rec.on(reply)), what="SDK set reply")
                await until(lambda: bool(changed), what="SDK callback")
            finally:
                lk.disconnect()
        theirs = json.loads(rec.on(post_topic)[0].payload)
        assert alink.property_post(theirs["id"], {"temperature": 21.5}, 1_700_000_000_123) == theirs

        call = alink.parse_service_call(set_topic, json.dumps(down).encode())
        assert (call.product_key, call.device_name, call.service) == (PK, DN, "property/set")
        assert call.params == changed[0]
        assert alink.service_reply(call.id, True) == json.loads(rec.on(reply)[0].payload)

    run(scenario())


def test_service_reply_topic_and_body_equal_the_sdks(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with MqttRecorder() as rec:
            lk = await _start_sdk(rec, tmp_path)
            try:
                assert lk.thing_answer_service("reboot", "77", 200, {"done": True}) == 0
                topic = alink.reply_topic(alink.sys_topic(PK, DN, "thing/service/reboot"))
                await until(lambda: bool(rec.on(topic)), what="SDK service reply")
            finally:
                lk.disconnect()
        assert json.loads(rec.on(topic)[0].payload) == alink.service_reply(
            "77", True, {"done": True}
        )

    run(scenario())


def test_a_failed_call_is_answered_with_its_reason() -> None:
    body = alink.service_reply("9", False, message="lamp_level: 140 is above 100")
    assert body == {"id": "9", "code": 500, "data": {}, "message": "lamp_level: 140 is above 100"}


@pytest.mark.parametrize(
    "topic, payload, why",
    [
        ("/sys/pk/dn/thing/event/property/post", b"{}", "not an Alink service topic"),
        ("/sys/pk/dn/thing/service/property/set_reply", b"{}", "is a reply"),
        ("/sys/pk/dn/thing/service/property/set", b"[1]", "not a JSON object"),
        ("/sys/pk/dn/thing/service/property/set", b"{", "not JSON"),
        ("/sys/pk/dn/thing/service/property/set", b'{"params": {}}', "no id"),
        ("/sys/pk/dn/thing/service/property/set", b'{"id": "1", "params": []}', "params"),
    ],
)
def test_bad_downlinks_are_refused_with_a_reason(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(alink.AlinkMessageError, match=why):
        alink.parse_service_call(topic, payload)


def test_replies_are_read() -> None:
    r = alink.parse_reply(b'{"id":"3","code":200,"data":{}}')
    assert r.ok and r.id == "3"
    r = alink.parse_reply(b'{"id":"4","code":6100,"message":"device not found"}')
    assert not r.ok and r.message == "device not found"
    with pytest.raises(alink.AlinkMessageError):
        alink.parse_reply(b'{"id":"4"}')
