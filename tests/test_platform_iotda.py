"""Huawei Cloud IoTDA: login, sub-device report, status and command bodies against the
values Huawei's own Python device SDK computes (tests/vectors/platforms/iotda_sdk.json,
made by running github.com/huaweicloud/huaweicloud-iot-device-sdk-python at dd0ee5c) and
the API reference's examples (https://support.huaweicloud.com/intl/en-us/api-iothub/
iot_06_v5_3006.html sub-device properties, iot_06_v5_3022.html sub-device status); then
the adapter built from a [platform] table, end to end through its methods."""

from __future__ import annotations

import calendar
import json
from pathlib import Path
from typing import Any

import pytest

from polekit.gateway.platforms import iotda_dialect as iotda
from polekit.gateway.platforms.base import Reading

from platform_units import adapter, body, problems

VECTORS = json.loads((Path(__file__).parent / "vectors/platforms/iotda_sdk.json").read_text())
GW = "6512a3f0b8c4a5f1d2e3c4b5_pole-gw-01"
CODE = "330100EN0000016"
T = calendar.timegm((2025, 3, 14, 8, 30, 0)) + 0.25  # 2025-03-14T08:30:00.250Z


@pytest.mark.parametrize("case", VECTORS["logins"], ids=lambda c: c["device_id"])
def test_login_equals_the_sdks(case: dict[str, str]) -> None:
    stamp = case["timestamp"]
    # the hour the SDK's timestamp names, plus some minutes: the same hour
    now = calendar.timegm(
        (int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[8:10]), 17, 3)
    )
    creds = iotda.credentials(
        case["device_id"], case["secret"], now, case["check_timestamp"] == "1"
    )
    assert creds.client_id == case["client_id"]
    assert creds.password == case["password"]
    assert creds.username == case["device_id"]


def test_checked_timestamp_login_expires_at_the_next_hour() -> None:
    creds = iotda.credentials(GW, "s", T, check_timestamp=True)
    assert creds.expires_at_s == calendar.timegm((2025, 3, 14, 9, 0, 0))
    assert iotda.credentials(GW, "s", T, check_timestamp=False).expires_at_s is None


def test_sub_device_report_equals_the_sdks() -> None:
    entry = iotda.sub_device_properties(CODE, "pole", {"temperature": 21.5, "humidity": 40}, T)
    assert iotda.properties_report([entry]) == VECTORS["properties_report"]


def test_event_time_is_a_documented_form() -> None:
    # docs: yyyyMMdd'T'HHmmss'Z' or yyyy-MM-dd'T'HH:mm:ss.SSS'Z' (2020-08-12T12:12:12.333Z)
    assert iotda.event_time(calendar.timegm((2020, 8, 12, 12, 12, 12)) + 0.333) == (
        "2020-08-12T12:12:12.333Z"
    )


def test_status_event_equals_the_sdks() -> None:
    ours = iotda.status_event(GW, [(CODE, iotda.OFFLINE)], T)
    theirs = VECTORS["status_event"]
    # the SDK always sends event_id, empty when unset; the docs' example has none
    assert theirs["services"][0].pop("event_id") == ""
    assert ours == theirs


def test_command_is_read_and_answered_as_the_sdk_does() -> None:
    cmd = VECTORS["command"]
    topic = f"$oc/devices/{GW}/sys/commands/request_id=rid-7"
    d = iotda.parse_downlink(GW, topic, json.dumps(cmd).encode())
    assert (d.kind, d.request_id, d.device_id) == ("command", "rid-7", cmd["object_device_id"])
    assert (d.service_id, d.command_name, d.properties) == ("pole", "set", cmd["paras"])
    assert iotda.command_response(True, "set", {"lamp_level": 40}) == VECTORS["command_response"]
    assert iotda.command_response_topic(GW, "rid-7") == (
        f"$oc/devices/{GW}/sys/commands/response/request_id=rid-7"
    )


@pytest.mark.parametrize(
    "topic, payload, why",
    [
        ("$oc/devices/other/sys/commands/request_id=1", b"{}", "not an IoTDA downlink"),
        (f"$oc/devices/{GW}/sys/commands/request_id=", b"{}", "no request id"),
        (f"$oc/devices/{GW}/sys/commands/request_id=1", b"{", "not JSON"),
        (f"$oc/devices/{GW}/sys/commands/request_id=1", b'{"paras": 3}', "paras"),
        (f"$oc/devices/{GW}/sys/properties/set/request_id=1", b'{"services": []}', "services"),
        (f"$oc/devices/{GW}/sys/shadow/get/request_id=1", b"{}", "not a command"),
    ],
)
def test_bad_downlinks_are_refused_with_a_reason(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(iotda.IotdaMessageError, match=why):
        iotda.parse_downlink(GW, topic, payload)


# --- the adapter ------------------------------------------------------------------------
TABLE: dict[str, Any] = {
    "kind": "iotda",
    "device_id": GW,
    "secret": "s3cr3t-Example!",
    "service_id": "pole",
    "names": {"temperature": "Temperature"},
}


def test_adapter_reports_a_poll_with_model_names_units_and_time(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, (CODE,), T)
    [out] = a.readings(
        CODE, [Reading("temperature", 21.5, "Cel"), Reading("pressure", 101325, "Pa")], T
    )
    assert out.topic == f"$oc/devices/{GW}/sys/gateway/sub_devices/properties/report"
    assert out.device == CODE and out.qos == 1
    assert body(out, 7) == {
        "devices": [
            {
                "device_id": CODE,
                "services": [
                    {
                        "service_id": "pole",
                        "properties": {"Temperature": 21.5, "pressure": 1013.25, "seq": 7},
                        "event_time": "2025-03-14T08:30:00.250Z",
                    }
                ],
            }
        ]
    }


def test_adapter_login_is_the_sdks_and_is_renewed_hourly(tmp_path: Path) -> None:
    case = VECTORS["logins"][0]
    a = adapter(tmp_path, TABLE, (CODE,), T)
    c = a.connection(T)
    assert (c.client_id, c.username, c.password) == (
        case["client_id"],
        case["device_id"],
        case["password"],
    )
    assert c.needs_clock and c.expires_at == calendar.timegm((2025, 3, 14, 9, 0, 0))
    later = a.connection(T + 3600)
    assert later.client_id.endswith("_2025031409") and later.password != c.password


def test_adapter_turns_a_command_into_ours_and_answers_it(tmp_path: Path) -> None:
    a = adapter(tmp_path, {**TABLE, "sub_product_id": "prod"}, (CODE,), T)
    sub = f"prod_{CODE}"
    topic = f"$oc/devices/{GW}/sys/commands/request_id=42"
    cmd = {"object_device_id": sub, "service_id": "pole", "command_name": "set"}
    d = a.downlink(topic, json.dumps({**cmd, "paras": {"lamp_level": 40}}).encode())
    [c] = d.commands
    assert c.device == CODE and json.loads(c.body) == {"id": "42", "set": {"lamp_level": 40}}
    [ok] = a.command_result(CODE, c.reply, {"id": "42", "ok": True, "set": {"lamp_level": 40}})
    assert ok.topic == f"$oc/devices/{GW}/sys/commands/response/request_id=42"
    assert body(ok) == {"result_code": 0, "response_name": "set", "paras": {"lamp_level": 40}}
    [bad] = a.command_result(CODE, c.reply, {"id": "42", "ok": False, "error": "no answer"})
    assert body(bad)["result_code"] == 1 and body(bad)["paras"] == {"error": "no answer"}


def test_adapter_answers_a_property_set_for_an_unknown_device(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, (CODE,), T)
    topic = f"$oc/devices/{GW}/sys/properties/set/request_id=9"
    set_ = {"object_device_id": "stranger", "services": [{"properties": {"lamp_level": 1}}]}
    d = a.downlink(topic, json.dumps(set_).encode())
    assert not d.commands and d.ignored and "stranger" in d.ignored
    [answer] = d.publish
    assert answer.topic == f"$oc/devices/{GW}/sys/properties/set/response/request_id=9"
    assert body(answer)["result_code"] == 1


def test_adapter_reports_status_and_repeats_online_after_a_reconnect(tmp_path: Path) -> None:
    a = adapter(tmp_path, TABLE, (CODE,), T)
    assert a.on_connect() == []
    [up] = a.device_status(CODE, True, T)
    assert up.topic == f"$oc/devices/{GW}/sys/events/up"
    assert body(up)["services"][0]["paras"]["device_statuses"] == [
        {"device_id": CODE, "status": "ONLINE"}
    ]
    [again] = a.on_connect()
    assert body(again)["services"][0]["paras"]["device_statuses"][0]["status"] == "ONLINE"
    a.device_status(CODE, False, T)
    assert a.on_connect() == []


def test_config_problems_are_named(tmp_path: Path) -> None:
    text = problems(tmp_path, {"kind": "iotda", "device_id": "gw 1", "secrett": "x"})
    assert "platform.secrett: unknown key; did you mean 'secret'?" in text
    assert "platform.secret: required" in text
    assert "platform.device_id: 'gw 1'" in text


def test_the_documented_example_is_a_valid_config(tmp_path: Path) -> None:
    from polekit.gateway.platforms import adapter_class

    example = adapter_class("iotda").EXAMPLE
    a = adapter(tmp_path, example, (), 1_750_000_000.0)
    assert a.connection(1_750_000_000.0).password
