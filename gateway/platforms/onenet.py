"""China Mobile OneNET (OneJSON thing model): the gateway is a OneNET gateway device, our
devices its sub-devices.

Login, topics and bodies come from ``onenet_dialect`` (its token checked against OneNET's
own C SDK). After each (re)connect every configured sub-device is logged in
(``thing/sub/login``); each poll is a ``thing/pack/post`` for that sub-device with every
value's ``time`` (ms) and, unless ``send_seq = false``, a ``seq`` property; the message
``id`` is the device's sequence number. Replies (``.../reply``) are read: a refusal is
counted and logged with OneNET's code and message. A device that stops answering is
logged out, and in again when it answers. ``thing/sub/property/set`` becomes our command
and its result is the ``set_reply`` (code 200 or 500 with the reason). The token expires
``token_lifetime`` after each connect and the uplink reconnects before that.

Sub-devices: product ``sub_product_id`` (default: the gateway's ``product_id``), device
name = our device code unless ``device_names`` maps it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from polekit.gateway.platforms import onenet_dialect as onenet
from polekit.gateway.platforms.base import (
    Adapter,
    AdapterContext,
    Connection,
    Downlink,
    Outgoing,
    PlatformCommand,
    Reading,
    Refusals,
    Section,
    command_body,
)

log = logging.getLogger("polekit.gateway.platforms.onenet")

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _name_ok(value: str) -> bool:
    return 0 < len(value) <= 64 and set(value) <= _NAME_CHARS


def _key_ok(value: str) -> bool:
    import base64
    import binascii

    try:
        return len(base64.b64decode(value, validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


@dataclass(frozen=True)
class OnenetSettings:
    product_id: str
    device_name: str
    key: str = field(repr=False)
    method: str
    token_lifetime_s: int
    sub_product_id: str
    device_names: dict[str, str]
    send_seq: bool


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class OnenetAdapter(Refusals, Adapter):
    KIND = "onenet"
    KEYS = (
        "product_id",
        "device_name",
        "key",
        "method",
        "token_lifetime",
        "sub_product_id",
        "device_names",
        "send_seq",
    )
    SECONDARY_UNITS = True
    EXAMPLE: ClassVar[dict[str, Any]] = {
        "kind": "onenet",
        "url": "mqtts://mqttstls.heclouds.com:8883",
        "product_id": "Uq8Nn3cZ1f",
        "device_name": "pole-gw-01",
        "key": "KuF3NT/jUBJ62LNBB/A8XZA9CqS3Cu79B/ABmfA1UCw=",
        "sub_product_id": "W6O8v7Ce7d",
    }

    @classmethod
    def parse(cls, section: Section) -> OnenetSettings:
        names = section.text_table(
            "device_names",
            _name_ok,
            'must be a table of device code = "OneNET device name" (letters, digits, _, -)',
        )
        pid = section.text(
            "product_id",
            required=True,
            check=_name_ok,
            allowed="the gateway product's id from the OneNET console (letters and digits)",
        )
        return OnenetSettings(
            product_id=pid or "",
            device_name=section.text(
                "device_name",
                required=True,
                check=_name_ok,
                allowed="the gateway device's name in OneNET (letters, digits, _ and -)",
            )
            or "",
            key=section.text(
                "key",
                required=True,
                secret=True,
                check=_key_ok,
                allowed="not base64: copy the device key from the console's device page",
            )
            or "",
            method=section.choice("method", tuple(onenet.METHODS), "sha256"),
            token_lifetime_s=section.integer(
                "token_lifetime", 7 * 86400, 3600, 365 * 86400, "seconds"
            ),
            sub_product_id=section.text(
                "sub_product_id", pid or "", check=_name_ok, allowed="the sub-devices' product id"
            ),
            device_names=dict(names),
            send_seq=section.boolean("send_seq", True),
        )

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.settings: OnenetSettings = ctx.platform.settings
        s = self.settings
        self._to_code = {
            (s.sub_product_id, self.sub_device_name(d.code)): d.code for d in ctx.devices
        }
        self._login_counter = 0
        self.refused = 0  # posts and logins the platform answered with a code other than 200

    def sub_device_name(self, code: str) -> str:
        return self.settings.device_names.get(code, code)

    def _topic(self, path: str) -> str:
        return onenet.topic(self.settings.product_id, self.settings.device_name, path)

    # --- session ---------------------------------------------------------------------
    def connection(self, now_s: float) -> Connection:
        s = self.settings
        creds = onenet.credentials(
            s.product_id, s.device_name, s.key, now_s, s.token_lifetime_s, s.method
        )
        b = self.platform.broker
        return Connection(
            host=b.host,
            port=b.port,
            client_id=creds.client_id,
            username=creds.username,
            password=creds.password,
            tls=b.tls,
            mqtt_version=self.platform.mqtt_version,
            keepalive_s=b.keepalive_s,
            expires_at=creds.expires_at_s,
            needs_clock=True,
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        s = self.settings
        return [(t, 1) for t in onenet.downlink_topics(s.product_id, s.device_name)]

    def _login(self, code: str, path: str) -> Outgoing:
        self._login_counter += 1
        body = onenet.sub_login(
            onenet.message_id(self._login_counter),
            self.settings.sub_product_id,
            self.sub_device_name(code),
        )
        return Outgoing(self._topic(path), _compact(body))

    def on_connect(self) -> list[Outgoing]:
        # a sub-device's data counts only while it is logged in through its gateway
        return [self._login(d.code, "thing/sub/login") for d in self.ctx.devices]

    def on_disconnect(self) -> list[Outgoing]:
        return [self._login(d.code, "thing/sub/logout") for d in self.ctx.devices]

    # --- uplink ----------------------------------------------------------------------
    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        s = self.settings
        values = {self.names.theirs(r.name): r.value for r in self.units.convert(readings)}
        seq_name = self.names.theirs("seq") if s.send_seq else None
        time_ms = round(time_s * 1000)
        name = self.sub_device_name(device)

        def encode(seq: int) -> bytes:
            props = {**values, seq_name: seq} if seq_name else values
            entry = onenet.pack_entry(s.sub_product_id, name, props, time_ms)
            return _compact(onenet.pack_post(onenet.message_id(seq), [entry]))

        return [Outgoing(self._topic("thing/pack/post"), encode, 1, device=device)]

    def device_status(self, device: str, online: bool, time_s: float) -> list[Outgoing]:
        return [self._login(device, "thing/sub/login" if online else "thing/sub/logout")]

    def command_result(self, device: str, reply: Any, result: dict[str, Any]) -> list[Outgoing]:
        msg_id, sub = reply
        ok = bool(result.get("ok"))
        body = onenet.set_reply(msg_id, ok, "" if ok else str(result.get("error", "")))
        path = "thing/sub/property/set_reply" if sub else "thing/property/set_reply"
        return [Outgoing(self._topic(path), _compact(body))]

    # --- downlink --------------------------------------------------------------------
    def downlink(self, topic: str, payload: bytes) -> Downlink:
        if topic.endswith("/reply"):
            return self._reply(topic, payload)
        sub = topic == self._topic("thing/sub/property/set")
        if not sub and topic != self._topic("thing/property/set"):
            return Downlink(ignored=f"not a OneNET topic of this gateway: {topic}")
        try:
            ps = onenet.parse_property_set(sub, payload)
        except onenet.OnenetMessageError as exc:
            return Downlink(ignored=str(exc))
        if not sub:
            why = "the gateway itself has no writable properties; set a sub-device's"
            return self._answer(ps.id, False, why)
        code = self._to_code.get((ps.product_id or "", ps.device_name or ""))
        if code is None:
            return self._answer(ps.id, True, f"{ps.product_id}/{ps.device_name} is not ours")
        changes = {self.names.ours(k): v for k, v in ps.values.items()}
        return Downlink(
            commands=[PlatformCommand(code, command_body(ps.id, changes), (ps.id, True))]
        )

    def _answer(self, msg_id: str, sub: bool, why: str) -> Downlink:
        out = self.command_result("", (msg_id, sub), {"ok": False, "error": why})
        return Downlink(publish=out, ignored=why)

    def _reply(self, topic: str, payload: bytes) -> Downlink:
        try:
            r = onenet.parse_reply(payload)
        except onenet.OnenetMessageError as exc:
            return Downlink(ignored=str(exc))
        return self.answered("OneNET", topic, r.id, r.ok, r.code, r.msg)


ADAPTER = OnenetAdapter
