"""ThingsBoard's MQTT gateway API: one gateway device carries every sub-device.

Login: the gateway device's access token as the MQTT user name (no password). After
each connect every configured device is announced on ``v1/gateway/connect`` (ThingsBoard
creates it on first sight, with our device code as its name and its register map as its
type) and its units are sent once as client attributes on ``v1/gateway/attributes``.
Each poll is one ``v1/gateway/telemetry`` message ``{code: [{"ts": ms, "values":
{...}}]}``, with the device's sequence number as the ``seq`` key; a device that stops
answering is reported on ``v1/gateway/disconnect`` and again on ``connect`` when it is
back. RPC requests arrive on ``v1/gateway/rpc`` (``{"device", "data": {"id", "method",
"params"}}``); method ``set`` with ``{name: value}`` writes points, and the answer goes
back on the same topic with the request's id. Reference: ThingsBoard's "MQTT Gateway
API" and its ``tb-mqtt-client`` (TBGatewayMqttClient), which tests compare against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

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

CONNECT = "v1/gateway/connect"
DISCONNECT = "v1/gateway/disconnect"
TELEMETRY = "v1/gateway/telemetry"
ATTRIBUTES = "v1/gateway/attributes"
RPC = "v1/gateway/rpc"

SET_METHODS = ("set", "setValues")  # RPC methods that write points


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class ThingsBoardSettings:
    access_token: str = field(repr=False)
    client_id: str | None


class ThingsBoardAdapter(Adapter):
    KIND = "thingsboard"
    KEYS = ("access_token", "client_id")
    # ThingsBoard keys are free text: our reference names as they are (override with names)
    NAMES: ClassVar[dict[str, str]] = {}
    SECONDARY_UNITS = True  # dashboards read hPa, ug/m3, kWh better than Pa, kg/m3, J
    EXAMPLE: ClassVar[dict[str, Any]] = {
        "kind": "thingsboard",
        "url": "mqtt://thingsboard.example.net:1883",
        "access_token": "A1_TEST_TOKEN",
    }

    @classmethod
    def parse(cls, section: Section) -> ThingsBoardSettings:
        return ThingsBoardSettings(
            access_token=section.text(
                "access_token",
                "",
                required=True,
                secret=True,
                allowed="the gateway device's access token (ThingsBoard: Devices > your "
                "gateway > Copy access token)",
            ),
            client_id=section.text("client_id"),
        )

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.settings: ThingsBoardSettings = ctx.platform.settings
        self.devices = {d.code: d for d in ctx.devices}

    def connection(self, now_s: float) -> Connection:
        b = self.platform.broker
        return Connection(
            host=b.host,
            port=b.port,
            client_id=self.settings.client_id or f"polekit-{self.ctx.gateway_id}-tb",
            username=self.settings.access_token,
            username_secret=True,
            tls=b.tls,
            mqtt_version=self.platform.mqtt_version,
            keepalive_s=b.keepalive_s,
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(RPC, 1)]

    def _connect(self, code: str) -> Outgoing:
        d = self.devices.get(code)
        return Outgoing(CONNECT, _json({"device": code, "type": d.map_name if d else "default"}))

    def on_connect(self) -> list[Outgoing]:
        out = [self._connect(code) for code in self.devices]
        units = {
            code: {
                "units": {self.names.theirs(p.name): p.unit for p in d.points if p.unit},
                "gateway": self.ctx.gateway_id,
            }
            for code, d in self.devices.items()
            if d.points
        }
        if units:
            out.append(Outgoing(ATTRIBUTES, _json(units)))
        return out

    def on_disconnect(self) -> list[Outgoing]:
        return [Outgoing(DISCONNECT, _json({"device": code})) for code in self.devices]

    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        theirs = self.names.theirs
        values: dict[str, Any] = {theirs(r.name): r.value for r in self.units.convert(readings)}
        ts = round(time_s * 1000)
        # the JSON around the seq is built now; only the number waits for the queue
        head = _json({device: [{"ts": ts, "values": values}]})[:-4]
        sep = b"," if values else b""

        def encode(seq: int) -> bytes:
            return b'%s%s"seq":%d}}]}' % (head, sep, seq)

        return [Outgoing(TELEMETRY, encode, 1, device=device)]

    def event(self, device: str, body: dict[str, Any], time_s: float) -> list[Outgoing]:
        name = str(body.get("event", "event"))
        values = {name: body.get("value", True)}
        ts = round(time_s * 1000)
        return [Outgoing(TELEMETRY, _json({device: [{"ts": ts, "values": values}]}))]

    def device_status(self, device: str, online: bool, time_s: float) -> list[Outgoing]:
        if online:
            return [self._connect(device)]
        return [Outgoing(DISCONNECT, _json({"device": device}))]

    def command_result(self, device: str, reply: Any, result: dict[str, Any]) -> list[Outgoing]:
        if result.get("ok"):
            data: dict[str, Any] = {
                "success": True,
                "set": {self.names.theirs(k): v for k, v in result.get("set", {}).items()},
            }
        else:
            data = {"success": False, "error": result.get("error")}
        return [Outgoing(RPC, _json({"device": device, "id": reply, "data": data}))]

    def downlink(self, topic: str, payload: bytes) -> Downlink:
        if topic != RPC:
            return Downlink(ignored=f"not an RPC topic: {topic}")
        try:
            request = json.loads(payload)
            device = request["device"]
            data = request["data"]
            rid = data["id"]
            method = data.get("method")
        except (ValueError, KeyError, TypeError):
            return Downlink(ignored="not a ThingsBoard gateway RPC request")
        if not isinstance(device, str) or isinstance(rid, bool) or not isinstance(rid, int | str):
            return Downlink(ignored="RPC request without a device name or id")
        params = data.get("params")
        if method not in SET_METHODS or not isinstance(params, dict):
            # answered, so the caller sees why rather than a timeout
            answer = {
                "device": device,
                "id": rid,
                "data": {
                    "success": False,
                    "error": f"unknown method {str(method)[:40]!r}: use 'set' with params "
                    "{name: value}",
                },
            }
            return Downlink(publish=[Outgoing(RPC, _json(answer))])
        changes = {self.names.ours(k): v for k, v in params.items()}
        return Downlink(commands=[PlatformCommand(device, command_body(rid, changes), rid)])


ADAPTER = ThingsBoardAdapter
