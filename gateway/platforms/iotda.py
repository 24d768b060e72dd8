"""Huawei Cloud IoTDA: the gateway is an IoTDA gateway device, our devices its sub-devices.

Login, topics and bodies come from ``iotda_dialect`` (checked there against Huawei's SDK).
Each poll is one ``sub_devices/properties/report`` for that sub-device (one service,
``service_id``, with the poll's time as ``event_time``); a device that stops or starts
answering is a ``sub_device_update_status`` event, and every sub-device known to be
online is announced again after each (re)connect. Commands and property sets for a
sub-device (``object_device_id``) become our commands; the result goes back on the
matching ``.../response/request_id={rid}`` topic.

Sub-device ids: IoTDA names a device ``{product_id}_{node_id}`` when it registers it; set
``sub_product_id`` and our device code is the node id, or map codes to ids one by one
with ``device_ids``; with neither, the device code is the IoTDA device id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from polekit.gateway.platforms import iotda_dialect as iotda
from polekit.gateway.platforms.base import (
    Adapter,
    AdapterContext,
    Connection,
    Downlink,
    Outgoing,
    PlatformCommand,
    Reading,
    Section,
    command_body,
)

_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _id_ok(value: str) -> bool:
    # IoTDA: up to 128 letters, digits, '_' and '-'
    return 0 < len(value) <= 128 and set(value) <= _ID_CHARS


@dataclass(frozen=True)
class IotdaSettings:
    device_id: str
    secret: str = field(repr=False)
    check_timestamp: bool
    service_id: str
    sub_product_id: str | None
    device_ids: dict[str, str]
    send_seq: bool


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class IotdaAdapter(Adapter):
    KIND = "iotda"
    KEYS = (
        "device_id",
        "secret",
        "check_timestamp",
        "service_id",
        "sub_product_id",
        "device_ids",
        "send_seq",
    )
    SECONDARY_UNITS = True  # a product model's units are the console's: hPa, ug/m3, kWh
    EXAMPLE: ClassVar[dict[str, Any]] = {
        "kind": "iotda",
        "url": "mqtts://a1b2c3d4e5.st1.iotda-device.cn-north-4.myhuaweicloud.com:8883",
        "device_id": "6512a3f0b8c4a5f1d2e3c4b5_pole-gw-01",
        "secret": "change-me-device-secret",
        "service_id": "pole",
        "sub_product_id": "6512a3f0b8c4a5f1d2e3c4b6",
    }

    @classmethod
    def parse(cls, section: Section) -> IotdaSettings:
        ids = section.text_table(
            "device_ids",
            _id_ok,
            'must be a table of device code = "IoTDA device id" (letters, digits, _ and -)',
        )
        return IotdaSettings(
            device_id=section.text(
                "device_id",
                required=True,
                check=_id_ok,
                allowed="the gateway's IoTDA device id (letters, digits, _ and -; "
                "copy it from the console's device page)",
            )
            or "",
            secret=section.text("secret", required=True, secret=True) or "",
            check_timestamp=section.boolean("check_timestamp", True),
            service_id=section.text(
                "service_id", "pole", check=_id_ok, allowed="the service id of the product model"
            ),
            sub_product_id=section.text(
                "sub_product_id", check=_id_ok, allowed="the sub-devices' IoTDA product id"
            ),
            device_ids=dict(ids),
            send_seq=section.boolean("send_seq", True),
        )

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.settings: IotdaSettings = ctx.platform.settings
        self.gateway = self.settings.device_id
        self._to_code = {self.sub_device_id(d.code): d.code for d in ctx.devices}
        self._online: set[str] = set()

    def sub_device_id(self, code: str) -> str:
        """The IoTDA device id of our device ``code``."""
        s = self.settings
        if code in s.device_ids:
            return s.device_ids[code]
        return f"{s.sub_product_id}_{code}" if s.sub_product_id else code

    # --- session ---------------------------------------------------------------------
    def connection(self, now_s: float) -> Connection:
        creds = iotda.credentials(
            self.gateway, self.settings.secret, now_s, self.settings.check_timestamp
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
            # IoTDA checks the hour at CONNECT only; a new login exists from the next hour
            renew_at=creds.expires_at_s,
            needs_clock=True,
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(t, 1) for t in iotda.downlink_topics(self.gateway)]

    def on_connect(self) -> list[Outgoing]:
        # IoTDA shows sub-devices offline while their gateway is away: say again which are up
        if not self._online:
            return []
        statuses = [(self.sub_device_id(c), iotda.ONLINE) for c in sorted(self._online)]
        body = iotda.status_event(self.gateway, statuses, self.ctx.clock())
        return [Outgoing(iotda.events_up_topic(self.gateway), _compact(body))]

    # --- uplink ----------------------------------------------------------------------
    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        values = {self.names.theirs(r.name): r.value for r in self.units.convert(readings)}
        sub_id, service, seq_name = (
            self.sub_device_id(device),
            self.settings.service_id,
            self.names.theirs("seq") if self.settings.send_seq else None,
        )

        def encode(seq: int) -> bytes:
            props = {**values, seq_name: seq} if seq_name else values
            entry = iotda.sub_device_properties(sub_id, service, props, time_s)
            return _compact(iotda.properties_report([entry]))

        topic = iotda.properties_report_topic(self.gateway)
        return [Outgoing(topic, encode, 1, device=device)]

    def device_status(self, device: str, online: bool, time_s: float) -> list[Outgoing]:
        (self._online.add if online else self._online.discard)(device)
        status = iotda.ONLINE if online else iotda.OFFLINE
        body = iotda.status_event(self.gateway, [(self.sub_device_id(device), status)], time_s)
        return [Outgoing(iotda.events_up_topic(self.gateway), _compact(body))]

    def command_result(self, device: str, reply: Any, result: dict[str, Any]) -> list[Outgoing]:
        kind, request_id, response_name = reply
        ok = bool(result.get("ok"))
        if kind == "command":
            if ok:
                paras = {self.names.theirs(k): v for k, v in result.get("set", {}).items()}
            else:
                paras = {"error": str(result.get("error", ""))}
            body = iotda.command_response(ok, response_name or "", paras)
            topic = iotda.command_response_topic(self.gateway, request_id)
        else:
            body = iotda.properties_set_response(ok, "" if ok else str(result.get("error", "")))
            topic = iotda.properties_set_response_topic(self.gateway, request_id)
        return [Outgoing(topic, _compact(body))]

    # --- downlink --------------------------------------------------------------------
    def downlink(self, topic: str, payload: bytes) -> Downlink:
        try:
            d = iotda.parse_downlink(self.gateway, topic, payload)
        except iotda.IotdaMessageError as exc:
            return self._refuse(topic, str(exc))
        code = self._to_code.get(d.device_id)
        reply = (d.kind, d.request_id, d.command_name)
        if code is None:
            why = f"{d.device_id} is not a sub-device of this gateway"
            return self._answer(reply, why)
        changes = {self.names.ours(k): v for k, v in d.properties.items()}
        return Downlink(
            commands=[PlatformCommand(code, command_body(d.request_id, changes), reply)]
        )

    def _answer(self, reply: tuple[str, str, str | None], why: str) -> Downlink:
        # a request we cannot route still gets its answer, so the console does not time out
        return Downlink(
            publish=self.command_result("", reply, {"ok": False, "error": why}), ignored=why
        )

    def _refuse(self, topic: str, why: str) -> Downlink:
        head, _, rid = topic.rpartition("/request_id=")
        if rid and head.endswith("/sys/commands"):
            return self._answer(("command", rid, None), why)
        if rid and head.endswith("/sys/properties/set"):
            return self._answer(("properties_set", rid, None), why)
        return Downlink(ignored=why)


ADAPTER = IotdaAdapter
