"""China Mobile OneNET's MQTT thing-model dialect (OneJSON), as pure functions.

Defined by OneNET's documentation (open.iot.10086.cn/doc/iot_platform/book/: "token
算法" for the login, "OneJSON 设备属性/事件" and "子设备数据交互" for the topics and
bodies) and implemented the same way by OneNET's official C SDK (``dev_token.c``,
``tm_subdev.c``, iot.10086.cn); the tests compare our tokens with that SDK's.

- Login: client id = device name, username = product id, password = the token
  ``version=2018-10-31&res=products%2F{pid}%2Fdevices%2F{dev}&et={expiry}&method={m}&
  sign={sign}`` with sign = base64(HMAC-{m}(base64decode(key), "{et}\\n{m}\\n{res}\\n
  {version}")), url-encoded. The platform refuses a token after ``et``.
- A device posts ``$sys/{pid}/{dev}/thing/property/post`` with ``{id, version,
  params: {identifier: {value, time}}}`` and the platform answers on ``.../post/reply``
  with ``{id, code, msg}`` (code 200 = accepted).
- A gateway logs its sub-devices in (``thing/sub/login``) and posts their properties in
  one ``thing/pack/post`` (``params: [{identity: {productID, deviceName}, properties}]``).
- Property sets arrive on ``thing/property/set`` (the device itself) and
  ``thing/sub/property/set`` (a sub-device) and are answered on ``..._reply``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from polekit.gateway.platforms.credentials import Credentials

VERSION = "2018-10-31"
METHODS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}
ID_MAX = 10**13  # "String类型的数字，长度限制不超过13位"
OK = 200


class OnenetMessageError(ValueError):
    """A downlink or reply that is not valid OneJSON; says what is wrong."""


def device_res(product_id: str, device_name: str) -> str:
    """The resource a device-level key signs for."""
    return f"products/{product_id}/devices/{device_name}"


def sign(key: str, res: str, et: int, method: str = "sha256") -> str:
    """base64(HMAC-method(base64decode(key), et\\nmethod\\nres\\nversion)), not encoded.

    Raises ValueError for an unknown method or a key that is not base64."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: OneNET signs with {', '.join(METHODS)}")
    secret = base64.b64decode(key, validate=True)
    text = f"{et}\n{method}\n{res}\n{VERSION}"
    return base64.b64encode(hmac.new(secret, text.encode(), METHODS[method]).digest()).decode()


def token(key: str, res: str, et: int, method: str = "sha256") -> str:
    """The token OneNET takes as the MQTT password (values url-encoded)."""
    s = sign(key, res, et, method)
    return (
        f"version={VERSION}&res={quote(res, safe='')}&et={et}&method={method}"
        f"&sign={quote(s, safe='')}"
    )


def credentials(
    product_id: str,
    device_name: str,
    key: str,
    now_s: float,
    lifetime_s: int = 7 * 86400,
    method: str = "sha256",
) -> Credentials:
    """The CONNECT fields of a device (or gateway) with a device-level key; the token
    expires ``lifetime_s`` after ``now_s``."""
    et = int(now_s) + lifetime_s
    return Credentials(
        client_id=device_name,
        username=product_id,
        password=token(key, device_res(product_id, device_name), et, method),
        expires_at_s=float(et),
    )


def topic(product_id: str, device_name: str, path: str) -> str:
    """``$sys/{pid}/{dev}/{path}``, e.g. path ``thing/property/post``."""
    return f"$sys/{product_id}/{device_name}/{path}"


def downlink_topics(product_id: str, device_name: str) -> list[str]:
    """What a gateway subscribes to: replies to its posts and logins, and property sets
    for itself and its sub-devices."""
    return [
        topic(product_id, device_name, p)
        for p in (
            "thing/property/post/reply",
            "thing/pack/post/reply",
            "thing/sub/login/reply",
            "thing/sub/logout/reply",
            "thing/property/set",
            "thing/sub/property/set",
        )
    ]


def message_id(counter: int) -> str:
    """A OneJSON id: a decimal string of at most 13 digits."""
    return str(counter % ID_MAX)


def properties(values: dict[str, Any], time_ms: int | None) -> dict[str, Any]:
    """``{identifier: {value, time}}``; ``time`` in Unix milliseconds."""
    if time_ms is None:
        return {k: {"value": v} for k, v in values.items()}
    return {k: {"value": v, "time": time_ms} for k, v in values.items()}


def property_post(msg_id: str, values: dict[str, Any], time_ms: int | None) -> dict[str, Any]:
    """A device's own ``thing/property/post`` body."""
    return {"id": msg_id, "version": "1.0", "params": properties(values, time_ms)}


def pack_entry(
    product_id: str, device_name: str, values: dict[str, Any], time_ms: int | None
) -> dict[str, Any]:
    """One device's part of a ``thing/pack/post``."""
    return {
        "identity": {"productID": product_id, "deviceName": device_name},
        "properties": properties(values, time_ms),
    }


def pack_post(msg_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A gateway's ``thing/pack/post`` body for its sub-devices."""
    return {"id": msg_id, "version": "1.0", "params": entries}


def sub_login(msg_id: str, product_id: str, device_name: str) -> dict[str, Any]:
    """``thing/sub/login`` (and ``thing/sub/logout``) body for one sub-device."""
    return {
        "id": msg_id,
        "version": "1.0",
        "params": {"productID": product_id, "deviceName": device_name},
    }


@dataclass(frozen=True)
class Reply:
    """The platform's answer to a post or login: ``code`` 200 means accepted."""

    id: str
    code: int
    msg: str

    @property
    def ok(self) -> bool:
        return self.code == OK


def parse_reply(payload: bytes) -> Reply:
    """A ``.../reply`` body; raises :class:`OnenetMessageError`."""
    body = _object(payload, "reply")
    code = body.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise OnenetMessageError(f"reply without an integer code: {body!r:.120}")
    return Reply(str(body.get("id", "")), code, str(body.get("msg", "")))


@dataclass(frozen=True)
class PropertySet:
    """A property set from the platform: for the device itself (``product_id`` and
    ``device_name`` None) or for a sub-device."""

    id: str
    product_id: str | None
    device_name: str | None
    values: dict[str, Any]


def parse_property_set(sub: bool, payload: bytes) -> PropertySet:
    """A ``thing/property/set`` (``sub`` False) or ``thing/sub/property/set`` body."""
    body = _object(payload, "property set")
    msg_id = body.get("id")
    if not isinstance(msg_id, str | int) or isinstance(msg_id, bool):
        raise OnenetMessageError("property set without an id")
    params = body.get("params")
    if not isinstance(params, dict):
        raise OnenetMessageError("property set: params is not an object")
    if not sub:
        return PropertySet(str(msg_id), None, None, params)
    pid, dev, values = params.get("productID"), params.get("deviceName"), params.get("params")
    if not isinstance(pid, str) or not isinstance(dev, str) or not isinstance(values, dict):
        raise OnenetMessageError(
            "sub-device property set needs params.productID, params.deviceName and params.params"
        )
    return PropertySet(str(msg_id), pid, dev, values)


def set_reply(msg_id: str, ok: bool, msg: str = "") -> dict[str, Any]:
    """The answer to a property set: code 200 when applied, 500 when not."""
    return {"id": msg_id, "code": OK if ok else 500, "msg": msg or ("success" if ok else "failed")}


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OnenetMessageError(f"{what}: the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise OnenetMessageError(f"{what}: the body is not a JSON object")
    return body
