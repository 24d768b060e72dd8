"""Alibaba Cloud IoT Platform (Alink): the gateway is an Alibaba gateway device, our
devices its sub-devices.

Login, topics and bodies come from ``alink_dialect`` (checked there against Alibaba's
``aliyun-iot-linkkit`` SDK). After each (re)connect the gateway adds its sub-devices to its
topology (``thing/topo/add``, each signed with its own secret) and logs them in
(``combine/batch_login``, five a message); each poll is then a
``thing.event.property.post`` on the sub-device's own topic with every value's ``time``
(ms), a ``seq`` property unless ``send_seq = false``, and the device's sequence number
as the message ``id``. A device that stops answering is logged out
(``combine/batch_logout``: the console shows it offline) and in again when it answers.
``thing/service/property/set`` and service calls for a sub-device become our commands;
the result is the ``_reply`` (code 200, or 500 with the reason).

Sub-devices: ``sub_devices = { "CODE" = "device secret" }`` (device name = our code,
product ``sub_product_key``), or ``{ "CODE" = { device_name = "...", device_secret =
"...", product_key = "..." } }``.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from polekit.gateway.platforms import alink_dialect as alink
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

log = logging.getLogger("polekit.gateway.platforms.aliyun")

_SUB_KEYS = ("device_secret", "device_name", "product_key")
LOGIN_BATCH = 5  # sub-devices per batch_login / topo add message (Alibaba's limit)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-@.:")


def _name_ok(value: str) -> bool:
    # a DeviceName: 4-32 letters, digits and - _ @ . :
    return 4 <= len(value) <= 32 and set(value) <= _NAME_CHARS


def _key_ok(value: str) -> bool:
    return 0 < len(value) <= 64 and value.isalnum()


@dataclass(frozen=True)
class AliyunSettings:
    product_key: str
    device_name: str
    device_secret: str = field(repr=False)
    sign_method: str
    sub_product_key: str | None
    sub_devices: dict[str, alink.SubDevice]
    send_seq: bool


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _sub_devices(section: Section, product_key: str | None) -> dict[str, alink.SubDevice]:
    raw = section.table.get("sub_devices", {})
    out: dict[str, alink.SubDevice] = {}
    if not isinstance(raw, dict):
        section.problem("sub_devices", 'must be a table: "DEVICE CODE" = "device secret"')
        return out
    for code, entry in raw.items():
        if isinstance(entry, str):
            entry = {"device_secret": entry}
        if isinstance(entry, dict):
            for key in sorted(set(entry) - set(_SUB_KEYS)):
                near = difflib.get_close_matches(key, _SUB_KEYS, n=1)
                hint = f"did you mean '{near[0]}'?" if near else f"known: {', '.join(_SUB_KEYS)}"
                section.problem(f"sub_devices.{code}.{key}", f"unknown key; {hint}")
        if not isinstance(entry, dict) or not isinstance(entry.get("device_secret"), str):
            section.problem(
                f"sub_devices.{code}",
                'needs its device secret: "CODE" = "secret" or { device_secret = "..." }',
            )
            continue
        pk = entry.get("product_key", product_key)
        dn = entry.get("device_name", code)
        if not isinstance(pk, str) or not _key_ok(pk):
            section.problem(
                f"sub_devices.{code}",
                "needs a product key: set sub_product_key, or product_key in this entry",
            )
            continue
        if not isinstance(dn, str) or not _name_ok(dn):
            section.problem(
                f"sub_devices.{code}",
                f"device name {dn!r}: 4-32 letters, digits and - _ @ . : (set device_name)",
            )
            continue
        out[code] = alink.SubDevice(pk, dn, entry["device_secret"])
    return out


class AliyunAdapter(Refusals, Adapter):
    KIND = "aliyun"
    KEYS = (
        "product_key",
        "device_name",
        "device_secret",
        "sign_method",
        "sub_product_key",
        "sub_devices",
        "send_seq",
    )
    SECONDARY_UNITS = True
    EXAMPLE: ClassVar[dict[str, Any]] = {
        "kind": "aliyun",
        "url": "mqtts://a1PoleGw0x.iot-as-mqtt.cn-shanghai.aliyuncs.com:1883",
        "product_key": "a1PoleGw0x",
        "device_name": "pole-gw-01",
        "device_secret": "change-me-gateway-secret",
        "sub_product_key": "a1SubEnv0y",
        "sub_devices": {"371600PL000001C": "change-me-sub-device-secret"},
    }

    @classmethod
    def parse(cls, section: Section) -> AliyunSettings:
        pk = section.text(
            "product_key",
            required=True,
            check=_key_ok,
            allowed="the gateway's ProductKey from the console (letters and digits)",
        )
        sub_pk = section.text(
            "sub_product_key", check=_key_ok, allowed="the sub-devices' ProductKey"
        )
        return AliyunSettings(
            product_key=pk or "",
            device_name=section.text(
                "device_name",
                required=True,
                check=_name_ok,
                allowed="the gateway's DeviceName: 4-32 letters, digits and - _ @ . :",
            )
            or "",
            device_secret=section.text("device_secret", required=True, secret=True) or "",
            sign_method=section.choice("sign_method", tuple(alink.SIGN_METHODS), "hmacsha256"),
            sub_product_key=sub_pk,
            sub_devices=_sub_devices(section, sub_pk),
            send_seq=section.boolean("send_seq", True),
        )

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.settings: AliyunSettings = ctx.platform.settings
        s = self.settings
        self._to_code = {(d.product_key, d.device_name): c for c, d in s.sub_devices.items()}
        self._counter = 0
        self.refused = 0
        missing = [d.code for d in ctx.devices if d.code not in s.sub_devices]
        if missing:
            log.warning(
                "aliyun: no sub_devices entry (device secret) for %s: Alibaba will not take "
                "their data; add them to [platform] sub_devices",
                ", ".join(missing),
            )

    def _next_id(self) -> str:
        self._counter += 1
        return str(self._counter)

    def _subs(self, codes: list[str] | None = None) -> list[alink.SubDevice]:
        subs = self.settings.sub_devices
        return [subs[c] for c in (codes if codes is not None else list(subs)) if c in subs]

    # --- session ---------------------------------------------------------------------
    def connection(self, now_s: float) -> Connection:
        s, b = self.settings, self.platform.broker
        creds = alink.credentials(
            s.product_key,
            s.device_name,
            s.device_secret,
            now_s,
            alink.SECURE_TLS if b.tls else alink.SECURE_TCP,
            s.sign_method,
        )
        return Connection(
            host=b.host,
            port=b.port,
            client_id=creds.client_id,
            username=creds.username,
            password=creds.password,
            tls=b.tls,
            mqtt_version=self.platform.mqtt_version,
            keepalive_s=b.keepalive_s,
            needs_clock=True,
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        s = self.settings
        topics = [
            alink.reply_topic(alink.topo_add_topic(s.product_key, s.device_name)),
            alink.reply_topic(alink.batch_login_topic(s.product_key, s.device_name)),
        ]
        for sub in self._subs():
            topics.append(alink.service_topic_filter(sub.product_key, sub.device_name))
            topics.append(
                alink.reply_topic(alink.property_post_topic(sub.product_key, sub.device_name))
            )
        return [(t, 1) for t in topics]

    def _batches(self, subs: list[alink.SubDevice]) -> list[list[alink.SubDevice]]:
        return [subs[i : i + LOGIN_BATCH] for i in range(0, len(subs), LOGIN_BATCH)]

    def _login(self, subs: list[alink.SubDevice], now_s: float) -> list[Outgoing]:
        s = self.settings
        topic = alink.batch_login_topic(s.product_key, s.device_name)
        ts = round(now_s * 1000)
        return [
            Outgoing(topic, _compact(alink.batch_login(self._next_id(), batch, ts)))
            for batch in self._batches(subs)
        ]

    def on_connect(self) -> list[Outgoing]:
        s, now = self.settings, self.ctx.clock()
        subs = self._subs()
        topo = alink.topo_add_topic(s.product_key, s.device_name)
        out = [
            Outgoing(topo, _compact(alink.topo_add(self._next_id(), batch, round(now * 1000))))
            for batch in self._batches(subs)
        ]
        return out + self._login(subs, now)

    def on_disconnect(self) -> list[Outgoing]:
        return self._logout(self._subs())

    def _logout(self, subs: list[alink.SubDevice]) -> list[Outgoing]:
        s = self.settings
        topic = alink.batch_logout_topic(s.product_key, s.device_name)
        return [
            Outgoing(topic, _compact(alink.batch_logout(self._next_id(), batch)))
            for batch in self._batches(subs)
        ]

    # --- uplink ----------------------------------------------------------------------
    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        s = self.settings
        # without its secret a device is not logged in and Alibaba refuses its posts (the
        # refusal is logged); its data still goes out, where the console's log shows it
        pk = s.sub_product_key or s.product_key
        sub = s.sub_devices.get(device) or alink.SubDevice(pk, device, "")
        values = {self.names.theirs(r.name): r.value for r in self.units.convert(readings)}
        seq_name = self.names.theirs("seq") if self.settings.send_seq else None
        time_ms = round(time_s * 1000)

        def encode(seq: int) -> bytes:
            props = {**values, seq_name: seq} if seq_name else values
            return _compact(alink.property_post(str(seq), props, time_ms))

        topic = alink.property_post_topic(sub.product_key, sub.device_name)
        return [Outgoing(topic, encode, 1, device=device)]

    def device_status(self, device: str, online: bool, time_s: float) -> list[Outgoing]:
        subs = self._subs([device])
        return self._login(subs, time_s) if online else self._logout(subs)

    def command_result(self, device: str, reply: Any, result: dict[str, Any]) -> list[Outgoing]:
        topic, msg_id = reply
        ok = bool(result.get("ok"))
        data = {self.names.theirs(k): v for k, v in result.get("set", {}).items()} if ok else {}
        body = alink.service_reply(msg_id, ok, data, "" if ok else str(result.get("error", "")))
        return [Outgoing(alink.reply_topic(topic), _compact(body))]

    # --- downlink --------------------------------------------------------------------
    def downlink(self, topic: str, payload: bytes) -> Downlink:
        if topic.endswith("_reply"):
            return self._reply(topic, payload)
        try:
            call = alink.parse_service_call(topic, payload)
        except alink.AlinkMessageError as exc:
            return Downlink(ignored=str(exc))
        code = self._to_code.get((call.product_key, call.device_name))
        if code is None:
            why = f"{call.product_key}/{call.device_name} is not a sub-device of this gateway"
            out = self.command_result("", (topic, call.id), {"ok": False, "error": why})
            return Downlink(publish=out, ignored=why)
        changes = {self.names.ours(k): v for k, v in call.params.items()}
        body = command_body(call.id, changes)
        return Downlink(commands=[PlatformCommand(code, body, (topic, call.id))])

    def _reply(self, topic: str, payload: bytes) -> Downlink:
        try:
            r = alink.parse_reply(payload)
        except alink.AlinkMessageError as exc:
            return Downlink(ignored=str(exc))
        return self.answered("Alibaba", topic, r.id, r.ok, r.code, r.message)


ADAPTER = AliyunAdapter
