"""Alibaba Cloud IoT Platform's Alink protocol for a gateway, as pure functions.

Defined by Alibaba Cloud's documentation ("Establish MQTT connections over TCP",
https://www.alibabacloud.com/help/doc-detail/73742.htm; "Alink protocol" and "Manage
topological relationships" / "Connect sub-devices to IoT Platform") and implemented the
same way by Alibaba's Python Link SDK ``aliyun-iot-linkkit`` (PyPI); the tests run that
SDK against a local broker and compare what it sends with ours.

- Login: MQTT client id ``{clientId}|securemode={2 TLS|3 TCP},signmethod={m},
  timestamp={ms}|``, username ``{deviceName}&{productKey}``, password = HMAC-{m} keyed by
  the device secret over the sorted parameters ``clientId{..}deviceName{..}
  productKey{..}timestamp{..}``, in hex.
- A gateway adds each sub-device to its topology (``/sys/{pk}/{dn}/thing/topo/add``,
  signed with the sub-device's secret), then logs them in
  (``/ext/session/{pk}/{dn}/combine/batch_login``); afterwards it publishes on the
  sub-device's own topics: ``/sys/{subpk}/{subdn}/thing/event/property/post`` with
  ``{id, version, params: {identifier: {value, time}}, method}``.
- Property sets arrive on ``/sys/{pk}/{dn}/thing/service/property/set``, service calls on
  ``/sys/{pk}/{dn}/thing/service/{identifier}``; each is answered on the same topic with
  ``_reply`` appended: ``{id, code: 200, data}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from polekit.gateway.platforms.credentials import Credentials

SIGN_METHODS = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1, "hmacmd5": hashlib.md5}
SECURE_TLS = 2
SECURE_TCP = 3
OK = 200


class AlinkMessageError(ValueError):
    """A downlink or reply that is not valid Alink; says what is wrong."""


def sign(secret: str, params: dict[str, str], method: str = "hmacsha256") -> str:
    """HMAC (``method``) keyed by ``secret`` over ``params`` sorted by name and written
    as name + value with no separator, lowercase hex: Alibaba's signing rule for the
    MQTT password and the sub-device topology/login signatures."""
    digest = SIGN_METHODS.get(method.lower())
    if digest is None:
        raise ValueError(f"signmethod {method!r}: Alibaba signs with {', '.join(SIGN_METHODS)}")
    content = "".join(k + params[k] for k in sorted(params))
    return hmac.new(secret.encode(), content.encode(), digest).hexdigest()


def login(
    product_key: str,
    device_name: str,
    device_secret: str,
    timestamp: str,
    secure_mode: int = SECURE_TLS,
    sign_method: str = "hmacsha256",
    client_id: str | None = None,
) -> Credentials:
    """The CONNECT fields of a device (the gateway) with its device certificate, signed
    with ``timestamp`` as given (Alibaba's docs use milliseconds).

    ``client_id`` defaults to ``{productKey}.{deviceName}``. Alibaba does not expire a
    signed login, so ``expires_at_s`` is None."""
    cid = client_id or f"{product_key}.{device_name}"
    password = sign(
        device_secret,
        {
            "clientId": cid,
            "deviceName": device_name,
            "productKey": product_key,
            "timestamp": timestamp,
        },
        sign_method,
    )
    return Credentials(
        client_id=f"{cid}|securemode={secure_mode},signmethod={sign_method},timestamp={timestamp}|",
        username=f"{device_name}&{product_key}",
        password=password,
    )


def credentials(
    product_key: str,
    device_name: str,
    device_secret: str,
    now_s: float,
    secure_mode: int = SECURE_TLS,
    sign_method: str = "hmacsha256",
) -> Credentials:
    """:func:`login` signed at ``now_s`` (in milliseconds): each connect signs anew."""
    ts = str(int(now_s * 1000))
    return login(product_key, device_name, device_secret, ts, secure_mode, sign_method)


def sys_topic(product_key: str, device_name: str, path: str) -> str:
    """``/sys/{pk}/{dn}/{path}``."""
    return f"/sys/{product_key}/{device_name}/{path}"


def property_post_topic(product_key: str, device_name: str) -> str:
    return sys_topic(product_key, device_name, "thing/event/property/post")


def event_post_topic(product_key: str, device_name: str, identifier: str) -> str:
    return sys_topic(product_key, device_name, f"thing/event/{identifier}/post")


def topo_add_topic(product_key: str, device_name: str) -> str:
    return sys_topic(product_key, device_name, "thing/topo/add")


def batch_login_topic(product_key: str, device_name: str) -> str:
    return f"/ext/session/{product_key}/{device_name}/combine/batch_login"


def batch_logout_topic(product_key: str, device_name: str) -> str:
    return f"/ext/session/{product_key}/{device_name}/combine/batch_logout"


def service_topic_filter(product_key: str, device_name: str) -> str:
    """Property sets and service calls for one device (the gateway or a sub-device)."""
    return sys_topic(product_key, device_name, "thing/service/#")


def reply_topic(request_topic: str) -> str:
    """Where the answer to ``request_topic`` goes (and where the platform answers ours)."""
    return request_topic + "_reply"


def properties(values: dict[str, Any], time_ms: int | None) -> dict[str, Any]:
    """``{identifier: {value, time}}``; ``time`` in Unix milliseconds."""
    if time_ms is None:
        return dict(values)
    return {k: {"value": v, "time": time_ms} for k, v in values.items()}


def property_post(msg_id: str, values: dict[str, Any], time_ms: int | None) -> dict[str, Any]:
    """A ``thing.event.property.post`` body."""
    return {
        "id": msg_id,
        "version": "1.0",
        "params": properties(values, time_ms),
        "method": "thing.event.property.post",
    }


def event_post(msg_id: str, identifier: str, value: dict[str, Any], time_ms: int) -> dict[str, Any]:
    """A ``thing.event.{identifier}.post`` body (an alarm with its output parameters)."""
    return {
        "id": msg_id,
        "version": "1.0",
        "params": {"value": value, "time": time_ms},
        "method": f"thing.event.{identifier}.post",
    }


def sub_device_signature(
    product_key: str, device_name: str, device_secret: str, client_id: str, timestamp_ms: str
) -> str:
    """The HMAC-SHA256 a gateway sends for a sub-device in topology add and login."""
    return sign(
        device_secret,
        {
            "clientId": client_id,
            "deviceName": device_name,
            "productKey": product_key,
            "timestamp": timestamp_ms,
        },
        "hmacsha256",
    )


@dataclass(frozen=True)
class SubDevice:
    """A sub-device's certificate on Alibaba (its own product key, name and secret)."""

    product_key: str
    device_name: str
    device_secret: str = field(repr=False)
    mqtt_client_id: str | None = None  # signed as clientId; default {productKey}.{deviceName}

    @property
    def client_id(self) -> str:
        return self.mqtt_client_id or f"{self.product_key}.{self.device_name}"


def topo_add(msg_id: str, subs: list[SubDevice], timestamp_ms: int) -> dict[str, Any]:
    """``thing.topo.add`` for ``subs``, each signed with its own secret."""
    ts = str(timestamp_ms)
    return {
        "id": msg_id,
        "version": "1.0",
        "params": [
            {
                "productKey": s.product_key,
                "deviceName": s.device_name,
                "clientId": s.client_id,
                "timestamp": ts,
                "signmethod": "hmacSha256",
                "sign": sub_device_signature(
                    s.product_key, s.device_name, s.device_secret, s.client_id, ts
                ),
            }
            for s in subs
        ],
        "method": "thing.topo.add",
    }


def batch_login(msg_id: str, subs: list[SubDevice], timestamp_ms: int) -> dict[str, Any]:
    """``combine.batch_login`` for ``subs`` (at most 5 a message, per Alibaba's limits)."""
    ts = str(timestamp_ms)
    return {
        "id": msg_id,
        "params": {
            "signMethod": "hmacSha256",
            "deviceList": [
                {
                    "productKey": s.product_key,
                    "deviceName": s.device_name,
                    "clientId": s.client_id,
                    "timestamp": ts,
                    "cleanSession": "false",
                    "sign": sub_device_signature(
                        s.product_key, s.device_name, s.device_secret, s.client_id, ts
                    ),
                }
                for s in subs
            ],
        },
    }


def batch_logout(msg_id: str, subs: list[SubDevice]) -> dict[str, Any]:
    """``combine.batch_logout`` for ``subs``: the platform shows them offline."""
    return {
        "id": msg_id,
        "params": [{"productKey": s.product_key, "deviceName": s.device_name} for s in subs],
    }


@dataclass(frozen=True)
class ServiceCall:
    """A property set (``service`` == "property/set") or a service call for one device."""

    topic: str
    product_key: str
    device_name: str
    service: str
    id: str
    params: dict[str, Any]


def parse_service_call(topic: str, payload: bytes) -> ServiceCall:
    """A ``/sys/{pk}/{dn}/thing/service/...`` downlink; raises :class:`AlinkMessageError`."""
    parts = topic.split("/")
    # "", "sys", pk, dn, "thing", "service", name...
    if len(parts) < 7 or parts[1] != "sys" or parts[4:6] != ["thing", "service"]:
        raise AlinkMessageError(f"not an Alink service topic: {topic}")
    service = "/".join(parts[6:])
    if service.endswith("_reply"):
        raise AlinkMessageError(f"{topic} is a reply, not a call")
    body = _object(payload, topic)
    msg_id = body.get("id")
    if not isinstance(msg_id, str | int) or isinstance(msg_id, bool):
        raise AlinkMessageError(f"{topic}: no id")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise AlinkMessageError(f"{topic}: params is not an object")
    return ServiceCall(topic, parts[2], parts[3], service, str(msg_id), params)


def service_reply(
    msg_id: str, ok: bool, data: dict[str, Any] | None = None, message: str = ""
) -> dict[str, Any]:
    """The answer to a property set or service call: code 200 when done, else 500 (the
    Alink code for a failure inside the device) with ``message`` saying why."""
    body: dict[str, Any] = {"id": msg_id, "code": OK if ok else 500, "data": data or {}}
    if message:
        body["message"] = message
    return body


@dataclass(frozen=True)
class Reply:
    """The platform's answer to a post, topology add or login: code 200 = accepted."""

    id: str
    code: int
    message: str
    data: Any

    @property
    def ok(self) -> bool:
        return self.code == OK


def parse_reply(payload: bytes) -> Reply:
    body = _object(payload, "reply")
    code = body.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise AlinkMessageError(f"reply without an integer code: {body!r:.120}")
    return Reply(str(body.get("id", "")), code, str(body.get("message", "")), body.get("data"))


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AlinkMessageError(f"{what}: the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise AlinkMessageError(f"{what}: the body is not a JSON object")
    return body
