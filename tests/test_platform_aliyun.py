"""The aliyun adapter built from a [platform] table: what it sends for a poll, a device
going offline and a reconnect, how it reads property sets and service calls and answers
them. The Alink pieces it assembles are proved against Alibaba's own SDK in
test_platform_alink_reference.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polekit.gateway.platforms import alink_dialect as alink
from polekit.gateway.platforms.base import Reading
from polekit.protocols import identity

from platform_units import adapter, body, problems

PK, DN, DS = "a1PoleGw0x", "pole-gw-01", "gateway-secret"
SUB_PK = "a1SubEnv0y"
CODES = tuple(identity.make("330100", "EN", i + 1) for i in range(7))
T = 1_750_000_000.25
TABLE: dict[str, Any] = {
    "kind": "aliyun",
    "product_key": PK,
    "device_name": DN,
    "device_secret": DS,
    "sub_product_key": SUB_PK,
    "sub_devices": {c: f"secret-{i}" for i, c in enumerate(CODES)},
    "names": {"temperature": "CurrentTemperature"},
}


def test_login_is_signed_with_hmacsha256_and_securemode_from_tls(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    c = a.connection(T)
    ours = alink.login(PK, DN, DS, "1750000000250", alink.SECURE_TCP)
    assert (c.client_id, c.username, c.password) == (ours.client_id, ours.username, ours.password)
    assert "securemode=3," in c.client_id  # mqtt:// (no TLS) in the test's [mqtt]
    assert c.needs_clock and c.expires_at is None


def test_each_connect_adds_the_topology_then_logs_in_five_at_a_time(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    out = a.on_connect()
    topics = [o.topic for o in out]
    topo, login = alink.topo_add_topic(PK, DN), alink.batch_login_topic(PK, DN)
    assert topics == [topo, topo, login, login]
    sent = [p["deviceName"] for o in out[:2] for p in body(o)["params"]]
    assert sent == list(CODES)
    first = body(out[2])["params"]["deviceList"]
    assert len(first) == 5 and {d["productKey"] for d in first} == {SUB_PK}
    # each signed with its own secret
    d = first[1]
    assert d["sign"] == alink.sub_device_signature(
        SUB_PK, CODES[1], "secret-1", d["clientId"], d["timestamp"]
    )
    assert len(a.on_connect()) == 4  # and again after a reconnect


def test_a_poll_is_a_property_post_on_the_sub_devices_topic(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    readings = [Reading("temperature", 21.5, "Cel"), Reading("energy", 7_200_000, "J")]
    [out] = a.readings(CODES[0], readings, T)
    assert out.topic == f"/sys/{SUB_PK}/{CODES[0]}/thing/event/property/post"
    ms = 1_750_000_000_250
    assert body(out, 12) == {
        "id": "12",
        "version": "1.0",
        "params": {
            "CurrentTemperature": {"value": 21.5, "time": ms},
            "energy": {"value": 2.0, "time": ms},
            "seq": {"value": 12, "time": ms},
        },
        "method": "thing.event.property.post",
    }


def test_offline_logs_the_device_out_and_online_logs_it_in(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    [out] = a.device_status(CODES[2], False, T)
    assert out.topic == alink.batch_logout_topic(PK, DN)
    assert body(out)["params"] == [{"productKey": SUB_PK, "deviceName": CODES[2]}]
    [back] = a.device_status(CODES[2], True, T)
    assert back.topic == alink.batch_login_topic(PK, DN)


def test_property_set_becomes_our_command_and_is_answered(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    topic = f"/sys/{SUB_PK}/{CODES[3]}/thing/service/property/set"
    assert (f"/sys/{SUB_PK}/{CODES[3]}/thing/service/#", 1) in a.subscriptions()
    down = {"id": "88", "version": "1.0", "params": {"lamp_level": 30}}
    d = a.downlink(topic, json.dumps(down).encode())
    [c] = d.commands
    assert c.device == CODES[3] and json.loads(c.body) == {"id": "88", "set": {"lamp_level": 30}}
    [r] = a.command_result(c.device, c.reply, {"id": "88", "ok": True, "set": {"lamp_level": 30}})
    assert r.topic == topic + "_reply"
    assert body(r) == {"id": "88", "code": 200, "data": {"lamp_level": 30}}
    [r] = a.command_result(c.device, c.reply, {"id": "88", "ok": False, "error": "no answer"})
    assert body(r) == {"id": "88", "code": 500, "data": {}, "message": "no answer"}


def test_a_service_call_is_a_command_answered_on_its_reply_topic(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    topic = f"/sys/{SUB_PK}/{CODES[0]}/thing/service/setLamp"
    d = a.downlink(topic, b'{"id":"5","params":{"lamp_on":true}}')
    [c] = d.commands
    [r] = a.command_result(c.device, c.reply, {"id": "5", "ok": True, "set": {"lamp_on": True}})
    assert r.topic == topic + "_reply"


def test_a_call_for_a_stranger_is_refused_at_once(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    topic = f"/sys/{SUB_PK}/nobody/thing/service/property/set"
    d = a.downlink(topic, b'{"id":"6","params":{"a":1}}')
    [r] = d.publish
    assert not d.commands and r.topic == topic + "_reply" and body(r)["code"] == 500


def test_refused_posts_are_counted(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, CODES, T)
    reply = f"/sys/{SUB_PK}/{CODES[0]}/thing/event/property/post_reply"
    a.downlink(reply, b'{"id":"1","code":200,"data":{}}')
    d = a.downlink(reply, b'{"id":"2","code":6106,"message":"map size must less than 200"}')
    assert a.refused == 1 and d.ignored and "6106" in d.ignored


def test_config_problems_are_named(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        {
            "kind": "aliyun",
            "product_key": PK,
            "device_name": DN,
            "device_secrett": "x",
            "sub_devices": {"A": {"secret": "x"}, "B": "s"},
            "sign_method": "hmacsha265",
        },
    )
    assert "platform.device_secrett: unknown key; did you mean 'device_secret'?" in text
    assert "platform.device_secret: required" in text
    assert "platform.sub_devices.A.secret: unknown key; did you mean 'device_secret'?" in text
    assert "platform.sub_devices.A: needs its device secret" in text
    assert "platform.sub_devices.B: needs a product key" in text
    assert "did you mean 'hmacsha256'?" in text


def test_the_documented_example_is_a_valid_config(tmp_path: Path) -> None:
    from polekit.gateway.platforms import adapter_class

    example = adapter_class("aliyun").EXAMPLE
    a = adapter(tmp_path, example, (), 1_750_000_000.0)
    assert a.connection(1_750_000_000.0).password
