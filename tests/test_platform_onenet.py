"""China Mobile OneNET: the login token against OneNET's official C SDK's
dev_token_generate() (tests/vectors/platforms/onenet_sdk_tokens.json: the SDK's function
compiled and run; algorithm at https://open.iot.10086.cn/doc/multiprotocol/book/manual/
auth/token.html), bodies and topics against the examples of OneNET's OneJSON
documentation (open.iot.10086.cn/doc/iot_platform/book/device-connect&manager/thing-model/
protocol/OneJSON/, read in its copy at github.com/warrlon/warrlon iotgz-docs/subbook/...
/OneJSON/property&event.md (设备属性上报), subdevice-loginout.md (子设备上线) and
subdevice-data.md (子设备属性设置)), then the adapter built from a [platform] table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from polekit.gateway.platforms import onenet_dialect as onenet
from polekit.gateway.platforms.base import Reading

from platform_units import adapter, body, problems

VECTORS = json.loads(
    (Path(__file__).parent / "vectors/platforms/onenet_sdk_tokens.json").read_text()
)
CODE = "330100EN0000016"
T = 1_750_000_000.25


@pytest.mark.parametrize(
    "case", VECTORS["tokens"], ids=lambda c: c["method"] + "-" + c["device_name"]
)
def test_token_equals_the_official_sdks(case: dict[str, Any]) -> None:
    res = onenet.device_res(case["product_id"], case["device_name"])
    assert onenet.token(case["key"], res, case["et"], case["method"]) == case["token"]


def test_credentials_carry_the_token_and_its_expiry() -> None:
    case = VECTORS["tokens"][0]
    c = onenet.credentials(
        case["product_id"], case["device_name"], case["key"], case["et"] - 3600, 3600
    )
    assert (c.client_id, c.username, c.password) == (
        case["device_name"],
        case["product_id"],
        case["token"],
    )
    assert c.expires_at_s == case["et"]


def test_unknown_method_and_bad_key_are_refused() -> None:
    with pytest.raises(ValueError, match="sha1"):
        onenet.token("AAAA", "products/p/devices/d", 1, "sha512")
    with pytest.raises(ValueError):
        onenet.token("not base64!", "products/p/devices/d", 1)


def test_property_post_is_the_documented_body() -> None:
    # the docs' example: {"id": "123", "version": "1.0", "params": {"Power": {"value": "on",
    # "time": 1524448722123}, "WF": {"value": 23.6, "time": 1524448722123}}}
    ours = onenet.property_post("123", {"Power": "on", "WF": 23.6}, 1524448722123)
    assert ours == {
        "id": "123",
        "version": "1.0",
        "params": {
            "Power": {"value": "on", "time": 1524448722123},
            "WF": {"value": 23.6, "time": 1524448722123},
        },
    }


def test_sub_device_property_set_is_read_and_answered_as_documented() -> None:
    doc = {
        "id": "123",
        "version": "1.0",
        "params": {
            "deviceName": "device1",
            "productID": "product1",
            "params": {"temperature": "30.5", "humidity": "20.5"},
        },
    }
    ps = onenet.parse_property_set(True, json.dumps(doc).encode())
    assert (ps.id, ps.product_id, ps.device_name) == ("123", "product1", "device1")
    assert ps.values == {"temperature": "30.5", "humidity": "20.5"}
    assert onenet.set_reply("123", True, "xxxx") == {"id": "123", "code": 200, "msg": "xxxx"}


def test_sub_login_and_pack_post_are_the_documented_bodies() -> None:
    assert onenet.sub_login("123", "product1", "device1") == {
        "id": "123",
        "version": "1.0",
        "params": {"productID": "product1", "deviceName": "device1"},
    }
    entry = onenet.pack_entry("p", "d", {"ParkStatus": 1}, None)
    assert onenet.pack_post("1", [entry]) == {
        "id": "1",
        "version": "1.0",
        "params": [
            {
                "identity": {"productID": "p", "deviceName": "d"},
                "properties": {"ParkStatus": {"value": 1}},
            }
        ],
    }


def test_message_ids_are_at_most_13_digits() -> None:
    assert onenet.message_id(10**13 + 5) == "5"
    assert onenet.message_id(42) == "42"


# --- the adapter ------------------------------------------------------------------------
TOKEN = VECTORS["tokens"][0]
TABLE: dict[str, Any] = {
    "kind": "onenet",
    "product_id": TOKEN["product_id"],
    "device_name": TOKEN["device_name"],
    "key": TOKEN["key"],
    "sub_product_id": "SubProd01",
}


def _topic(path: str) -> str:
    return f"$sys/{TOKEN['product_id']}/{TOKEN['device_name']}/{path}"


def test_adapter_login_is_the_sdks_token_renewed_before_expiry(tmp_path: Path) -> None:
    lifetime = 7 * 86400
    a = adapter(tmp_path, TABLE, (CODE,), TOKEN["et"] - lifetime)
    c = a.connection(TOKEN["et"] - lifetime)
    assert (c.client_id, c.username, c.password) == (
        TOKEN["device_name"],
        TOKEN["product_id"],
        TOKEN["token"],
    )
    assert c.expires_at == TOKEN["et"] and c.needs_clock
    assert a.connection(TOKEN["et"] - lifetime + 60).password != c.password


def test_adapter_posts_a_poll_for_its_sub_device(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, (CODE,), T)
    [out] = a.readings(CODE, [Reading("pm2_5", 1.2e-8, "kg/m3"), Reading("lamp_on", True, None)], T)
    assert out.topic == _topic("thing/pack/post") and out.device == CODE
    ms = 1_750_000_000_250
    assert body(out, 31) == {
        "id": "31",
        "version": "1.0",
        "params": [
            {
                "identity": {"productID": "SubProd01", "deviceName": CODE},
                "properties": {
                    "pm2_5": {"value": 12.0, "time": ms},
                    "lamp_on": {"value": True, "time": ms},
                    "seq": {"value": 31, "time": ms},
                },
            }
        ],
    }


def test_adapter_logs_sub_devices_in_at_each_connect_and_out_when_they_stop(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, (CODE,), T)
    [login] = a.on_connect()
    assert login.topic == _topic("thing/sub/login")
    assert body(login)["params"] == {"productID": "SubProd01", "deviceName": CODE}
    [logout] = a.device_status(CODE, False, T)
    assert logout.topic == _topic("thing/sub/logout")
    assert (_topic("thing/sub/property/set"), 1) in a.subscriptions()


def test_adapter_turns_a_sub_property_set_into_our_command_and_replies(tmp_path: Path) -> None:
    a = adapter(tmp_path, {**TABLE, "names": {"lamp_level": "LampLevel"}}, (CODE,), T)
    down = {
        "id": "77",
        "version": "1.0",
        "params": {"productID": "SubProd01", "deviceName": CODE, "params": {"LampLevel": 40}},
    }
    d = a.downlink(_topic("thing/sub/property/set"), json.dumps(down).encode())
    [c] = d.commands
    assert c.device == CODE and json.loads(c.body) == {"id": "77", "set": {"lamp_level": 40}}
    [r] = a.command_result(CODE, c.reply, {"id": "77", "ok": True, "set": {"lamp_level": 40}})
    assert r.topic == _topic("thing/sub/property/set_reply")
    assert body(r) == {"id": "77", "code": 200, "msg": "success"}
    [r] = a.command_result(
        CODE, c.reply, {"id": "77", "ok": False, "error": "lamp_level: 140 > 100"}
    )
    assert body(r) == {"id": "77", "code": 500, "msg": "lamp_level: 140 > 100"}


def test_adapter_reads_replies_and_counts_refusals(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, (CODE,), T)
    d = a.downlink(_topic("thing/pack/post/reply"), b'{"id":"3","code":200,"msg":"success"}')
    assert not d.commands and a.refused == 0
    d = a.downlink(
        _topic("thing/pack/post/reply"), b'{"id":"4","code":2402,"msg":"device not online"}'
    )
    assert d.ignored and "2402" in d.ignored and a.refused == 1


def test_adapter_answers_a_set_for_a_device_it_does_not_have(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, (CODE,), T)
    down = {"id": "5", "params": {"productID": "x", "deviceName": "y", "params": {"a": 1}}}
    d = a.downlink(_topic("thing/sub/property/set"), json.dumps(down).encode())
    [r] = d.publish
    assert not d.commands and body(r)["code"] == 500


def test_config_problems_are_named(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        {
            "kind": "onenet",
            "product_id": "p1",
            "device_nme": "d",
            "key": "not base64!",
            "method": "sha265",
        },
    )
    assert "platform.device_nme: unknown key; did you mean 'device_name'?" in text
    assert "platform.device_name: required" in text
    assert "platform.key: ***: not base64" in text and "not base64!" not in text
    assert "did you mean 'sha256'?" in text


def test_the_documented_example_is_a_valid_config(tmp_path: Path) -> None:
    from polekit.gateway.platforms import adapter_class

    example = adapter_class("onenet").EXAMPLE
    a = adapter(tmp_path, example, (), 1_750_000_000.0)
    assert a.connection(1_750_000_000.0).password
