"""Huawei Cloud IoTDA's device MQTT dialect for a gateway, as pure functions.

What each function builds is defined by IoTDA's device API reference
(https://support.huaweicloud.com/intl/en-us/api-iothub/iot_06_v5_3004.html and the pages
next to it) and implemented the same way by Huawei's own Python device SDK
(github.com/huaweicloud/huaweicloud-iot-device-sdk-python: ``utils/iot_util.py`` for the
login, ``gateway/abstract_gateway.py`` for sub-device reports and status). The tests
compare ours with values computed by that SDK's code.

- Login: client id ``{device_id}_0_{0|1}_{YYYYMMDDHH}`` (UTC hour; ``0`` = the platform
  does not check the timestamp, ``1`` = it does), username = device id, password =
  HMAC-SHA256 keyed by that timestamp over the device secret, in hex.
- A gateway reports its sub-devices' properties in one message on
  ``$oc/devices/{gateway}/sys/gateway/sub_devices/properties/report``, and their status
  as a ``sub_device_update_status`` event of the ``$sub_device_manager`` service on
  ``$oc/devices/{gateway}/sys/events/up``.
- Commands come on ``$oc/devices/{gateway}/sys/commands/request_id={rid}``
  (``object_device_id`` names the sub-device) and are answered on
  ``.../sys/commands/response/request_id={rid}``; property sets likewise on
  ``.../sys/properties/set/request_id={rid}`` and ``.../set/response/request_id={rid}``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from polekit.gateway.platforms.credentials import Credentials

SUB_DEVICE_MANAGER = "$sub_device_manager"
ONLINE = "ONLINE"
OFFLINE = "OFFLINE"


class IotdaMessageError(ValueError):
    """A downlink that is not a valid IoTDA command or property set; says what is wrong."""


def timestamp(now_s: float) -> str:
    """The login timestamp: the UTC hour as ``YYYYMMDDHH``."""
    return time.strftime("%Y%m%d%H", time.gmtime(now_s))


def password(secret: str, stamp: str) -> str:
    """HMAC-SHA256 with the timestamp as key over the device secret, lowercase hex."""
    return hmac.new(stamp.encode(), secret.encode(), hashlib.sha256).hexdigest()


def credentials(
    device_id: str, secret: str, now_s: float, check_timestamp: bool = True
) -> Credentials:
    """The CONNECT fields for ``device_id`` at ``now_s``.

    With ``check_timestamp`` the platform refuses a timestamp far from its own time, so
    these credentials are good for this UTC hour: ``expires_at_s`` is the next hour and a
    reconnect after it signs anew. Without it they never expire (the timestamp is still
    sent, but only the password is checked)."""
    stamp = timestamp(now_s)
    flag = "1" if check_timestamp else "0"
    expires = None
    if check_timestamp:
        expires = float(calendar.timegm(time.gmtime(now_s)[:4] + (0, 0)) + 3600)
    return Credentials(
        client_id=f"{device_id}_0_{flag}_{stamp}",
        username=device_id,
        password=password(secret, stamp),
        expires_at_s=expires,
    )


def event_time(time_s: float) -> str:
    """A reading's time as IoTDA takes it: UTC ``yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`` (the
    documented form that keeps milliseconds)."""
    ms = int(round(time_s * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def properties_report_topic(gateway_id: str) -> str:
    return f"$oc/devices/{gateway_id}/sys/gateway/sub_devices/properties/report"


def events_up_topic(gateway_id: str) -> str:
    return f"$oc/devices/{gateway_id}/sys/events/up"


def downlink_topics(gateway_id: str) -> list[str]:
    """What a gateway subscribes to: commands and property sets for it and its
    sub-devices (IoTDA sends both on the gateway's own topics)."""
    return [
        f"$oc/devices/{gateway_id}/sys/commands/#",
        f"$oc/devices/{gateway_id}/sys/properties/set/#",
    ]


def command_response_topic(gateway_id: str, request_id: str) -> str:
    return f"$oc/devices/{gateway_id}/sys/commands/response/request_id={request_id}"


def properties_set_response_topic(gateway_id: str, request_id: str) -> str:
    return f"$oc/devices/{gateway_id}/sys/properties/set/response/request_id={request_id}"


def sub_device_properties(
    device_id: str, service_id: str, properties: dict[str, Any], time_s: float
) -> dict[str, Any]:
    """One entry of a gateway's ``devices`` list (one device, one service)."""
    return {
        "device_id": device_id,
        "services": [
            {"service_id": service_id, "properties": properties, "event_time": event_time(time_s)}
        ],
    }


def properties_report(devices: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a gateway's sub-device properties report (at most 100 devices)."""
    return {"devices": devices}


def status_event(
    gateway_id: str, statuses: list[tuple[str, str]], time_s: float, event_id: str | None = None
) -> dict[str, Any]:
    """A ``sub_device_update_status`` event: ``statuses`` is (sub-device id, ONLINE or
    OFFLINE) pairs."""
    service: dict[str, Any] = {
        "service_id": SUB_DEVICE_MANAGER,
        "event_type": "sub_device_update_status",
        "event_time": event_time(time_s),
        "paras": {"device_statuses": [{"device_id": d, "status": s} for d, s in statuses]},
    }
    if event_id is not None:
        service["event_id"] = event_id
    return {"object_device_id": gateway_id, "services": [service]}


@dataclass(frozen=True)
class Downlink:
    """A command or property set for a device behind the gateway.

    ``kind`` is ``"command"`` or ``"properties_set"``; ``properties`` is the command's
    ``paras`` or the set's properties (of its first service)."""

    kind: str
    request_id: str
    device_id: str
    service_id: str | None
    command_name: str | None
    properties: dict[str, Any]


def parse_downlink(gateway_id: str, topic: str, payload: bytes) -> Downlink:
    """A downlink from its topic and JSON body; raises :class:`IotdaMessageError`."""
    prefix = f"$oc/devices/{gateway_id}/sys/"
    if not topic.startswith(prefix) or "/request_id=" not in topic:
        raise IotdaMessageError(f"not an IoTDA downlink topic: {topic}")
    path, _, request_id = topic[len(prefix) :].rpartition("/request_id=")
    if not request_id:
        raise IotdaMessageError(f"{topic}: no request id")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IotdaMessageError(f"{topic}: the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise IotdaMessageError(f"{topic}: the body is not a JSON object")
    device_id = body.get("object_device_id") or gateway_id
    if not isinstance(device_id, str):
        raise IotdaMessageError(f"{topic}: object_device_id is not text")
    if path == "commands":
        paras = body.get("paras", {})
        if not isinstance(paras, dict):
            raise IotdaMessageError(f"{topic}: paras is not an object")
        return Downlink(
            "command",
            request_id,
            device_id,
            _text(body.get("service_id")),
            _text(body.get("command_name")),
            paras,
        )
    if path == "properties/set":
        services = body.get("services")
        if not isinstance(services, list) or not services or not isinstance(services[0], dict):
            raise IotdaMessageError(f"{topic}: services must be a non-empty list")
        properties: dict[str, Any] = {}
        for service in services:
            props = service.get("properties") if isinstance(service, dict) else None
            if not isinstance(props, dict):
                raise IotdaMessageError(f"{topic}: a service without properties")
            properties.update(props)
        return Downlink(
            "properties_set",
            request_id,
            device_id,
            _text(services[0].get("service_id")),
            None,
            properties,
        )
    raise IotdaMessageError(f"{topic}: not a command or property set")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def command_response(
    ok: bool, response_name: str = "", paras: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A command's answer: ``result_code`` 0 when it succeeded, 1 when not."""
    return {"result_code": 0 if ok else 1, "response_name": response_name, "paras": paras or {}}


def properties_set_response(ok: bool, description: str = "") -> dict[str, Any]:
    """A property set's answer: ``result_code`` 0 when it succeeded, 1 when not."""
    return {
        "result_code": 0 if ok else 1,
        "result_desc": description or ("success" if ok else "failed"),
    }
