"""Sparkplug B 3.0: the gateway is an edge node, each configured device a Sparkplug
device (its device id is our device code).

Session: the MQTT will is NDEATH with the session's ``bdSeq`` (kept across restarts in
the adapter's state folder, 0-255); after each connect NBIRTH (seq 0, ``bdSeq``,
``Node Control/Rebirth``) then a DBIRTH per device with every metric it reports, its
datatype and its unit (property ``engUnit``), the last value known or null. Data: a
DDATA per poll, DDEATH when a device stops answering and DBIRTH when it is back. Every
message after NBIRTH carries the session's ``seq`` (0-255, wrapping), stamped when it
is sent (a message from the backlog gets the number of the session that sends it).
Downlink: DCMD metrics write points (the written values come back in a DDATA; a
refused command as DDATA metric ``Command/Error``); NCMD ``Node Control/Rebirth``
re-sends NBIRTH and the DBIRTHs.

QoS: the specification asks QoS 0 for births and data; we send data QoS 1 by default so
the durable queue can drop a message only after the broker's PUBACK (nothing lost in an
outage); ``qos = 0`` gives the letter of the spec. NDEATH (the will) is QoS 1.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from polekit.gateway.platforms import sparkplug_b as pb
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

log = logging.getLogger("polekit.gateway.platforms.sparkplug")

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
COMMAND_ERROR = "Command/Error"


def _id_ok(value: str) -> bool:
    # Sparkplug 3.0 4.1.1: ids are UTF-8 without '+', '/' or '#'
    return bool(value) and not any(c in value for c in "+/#")


@dataclass(frozen=True)
class SparkplugSettings:
    group_id: str
    edge_node_id: str
    qos: int


class SparkplugAdapter(Adapter):
    KIND = "sparkplug"
    KEYS = ("group_id", "edge_node_id", "qos")
    NAMES: ClassVar[dict[str, str]] = {}  # metric names are our reference names
    SECONDARY_UNITS = True  # hPa, ug/m3, kWh: what HMI screens show
    EXAMPLE: ClassVar[dict[str, Any]] = {
        "kind": "sparkplug",
        "group_id": "city-poles",
        "edge_node_id": "cabinet-17",
    }

    @classmethod
    def parse(cls, section: Section) -> SparkplugSettings:
        allowed = "text without '+', '/' or '#' (Sparkplug 3.0 4.1.1)"
        return SparkplugSettings(
            group_id=section.text("group_id", "", required=True, check=_id_ok, allowed=allowed),
            edge_node_id=section.text(
                "edge_node_id", "", required=True, check=_id_ok, allowed=allowed
            ),
            qos=section.integer("qos", 1, 0, 1, "the QoS of births and data"),
        )

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        s: SparkplugSettings = ctx.platform.settings
        self.settings = s
        self._node = f"{s.group_id}/{{}}/{s.edge_node_id}"
        self.devices = {d.code: d for d in ctx.devices}
        # metric datatypes per device, fixed at its birth (DDATA must match DBIRTH)
        self._types: dict[str, dict[str, int]] = {
            d.code: {
                self.names.theirs(p.name): pb.BOOLEAN if p.boolean else pb.DOUBLE for p in d.points
            }
            for d in ctx.devices
        }
        self._units: dict[str, dict[str, str | None]] = {
            d.code: {self.names.theirs(p.name): p.unit for p in d.points} for d in ctx.devices
        }
        self._last: dict[str, dict[str, Any]] = {d.code: {} for d in ctx.devices}
        self._seq = 0
        self._bdseq_file = Path(ctx.state_dir) / "bdseq"
        self.bdseq = self._load_bdseq()
        self._commands = 0

    # --- bdSeq: one per session, kept across restarts ---------------------------------
    def _load_bdseq(self) -> int:
        try:
            return int(self._bdseq_file.read_text().strip()) % 256
        except (FileNotFoundError, ValueError):
            return 255  # the first session is bdSeq 0

    def _next_bdseq(self) -> int:
        self.bdseq = (self.bdseq + 1) % 256
        try:
            self._bdseq_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            new = self._bdseq_file.with_name("bdseq.new")  # a power cut leaves old or new
            new.write_text(f"{self.bdseq}\n")
            os.replace(new, self._bdseq_file)
        except OSError as exc:  # the session still works; the host sees a repeated bdSeq
            log.warning("cannot keep the Sparkplug bdSeq in %s: %s", self._bdseq_file, exc)
        return self.bdseq

    # --- topics and payloads --------------------------------------------------------
    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self._node.format(kind)}"
        return f"{base}/{device}" if device else base

    def _payload(self, ms: int) -> Any:
        return pb.Payload(timestamp=ms)

    def _bdseq_payload(self, ms: int, bdseq: int) -> Any:
        p = self._payload(ms)
        m = p.metrics.add(name=BDSEQ, timestamp=ms)
        pb.set_value(m, pb.INT64, bdseq)
        return p

    def _now_ms(self) -> int:
        return round(self.ctx.clock() * 1000)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        return seq

    def connection(self, now_s: float) -> Connection:
        b = self.platform.broker
        bdseq = self._next_bdseq()
        death = self._bdseq_payload(round(now_s * 1000), bdseq).SerializeToString()
        return Connection(
            host=b.host,
            port=b.port,
            client_id=f"polekit-{self.settings.group_id}-{self.settings.edge_node_id}",
            username=b.username,
            password=b.password,
            tls=b.tls,
            mqtt_version=self.platform.mqtt_version,
            keepalive_s=b.keepalive_s,
            will=Outgoing(self.topic("NDEATH"), death, qos=1),
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topic("NCMD"), 1), (self.topic("DCMD", "+"), 1)]

    def _birth(self, device: str, ms: int) -> bytes:
        p = self._payload(ms)
        last = self._last.get(device, {})
        for name, datatype in self._types.get(device, {}).items():
            m = p.metrics.add(name=name, timestamp=ms)
            pb.set_value(m, datatype, last.get(name))
            unit = self._units.get(device, {}).get(name)
            if unit:
                m.properties.keys.append("engUnit")
                m.properties.values.add(type=pb.STRING, string_value=unit)
        return bytes(p.SerializeToString())

    def on_connect(self) -> list[Outgoing]:
        ms = self._now_ms()
        self._seq = 0
        node = self._bdseq_payload(ms, self.bdseq)
        m = node.metrics.add(name=REBIRTH, timestamp=ms)
        pb.set_value(m, pb.BOOLEAN, False)
        node.seq = self._next_seq()
        out = [Outgoing(self.topic("NBIRTH"), node.SerializeToString(), 0)]
        for code in self.devices:
            payload = self._birth(code, ms) + pb.seq_field(self._next_seq())
            out.append(Outgoing(self.topic("DBIRTH", code), payload, 0))
        return out

    def on_disconnect(self) -> list[Outgoing]:
        death = self._bdseq_payload(self._now_ms(), self.bdseq).SerializeToString()
        return [Outgoing(self.topic("NDEATH"), death, 1)]

    def queued_qos(self) -> int:
        # DDATA and DBIRTH from the queue: QoS 1 by default (a deliberate deviation from
        # the spec's QoS 0, for the queue's guarantee); `qos = 0` follows the letter
        return self.settings.qos

    def stamp(self, topic: str, payload: bytes) -> bytes:
        return payload + pb.seq_field(self._next_seq())

    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        ms = round(time_s * 1000)
        types = self._types.setdefault(device, {})
        last = self._last.setdefault(device, {})
        new = False
        p = self._payload(ms)
        add = p.metrics.add
        theirs = self.names.theirs
        for r in self.units.convert(readings):
            name = theirs(r.name)
            datatype = types.get(name)
            if datatype is None:  # a BLE object first heard now: born with the next DBIRTH
                datatype = types[name] = pb.BOOLEAN if isinstance(r.value, bool) else pb.DOUBLE
                self._units.setdefault(device, {})[name] = r.unit
                new = True
            m = add(name=name, timestamp=ms)
            pb.set_value(m, datatype, r.value)
            last[name] = r.value
        out = []
        if new:
            out.append(
                Outgoing(self.topic("DBIRTH", device), self._birth(device, ms), self.settings.qos)
            )
        out.append(Outgoing(self.topic("DDATA", device), p.SerializeToString(), self.settings.qos))
        return out

    def event(self, device: str, body: dict[str, Any], time_s: float) -> list[Outgoing]:
        ms = round(time_s * 1000)
        p = self._payload(ms)
        m = p.metrics.add(name=f"Event/{body.get('event', 'event')}", timestamp=ms)
        value = body.get("value")
        if isinstance(value, bool):
            pb.set_value(m, pb.BOOLEAN, value)
        elif isinstance(value, int | float):
            pb.set_value(m, pb.DOUBLE, value)
        else:
            pb.set_value(m, pb.STRING, json.dumps(value))
        return [Outgoing(self.topic("DDATA", device), p.SerializeToString(), self.settings.qos)]

    def device_status(self, device: str, online: bool, time_s: float) -> list[Outgoing]:
        ms = round(time_s * 1000)
        if online:
            return [
                Outgoing(self.topic("DBIRTH", device), self._birth(device, ms), self.settings.qos)
            ]
        death = self._payload(ms).SerializeToString()
        return [Outgoing(self.topic("DDEATH", device), death, self.settings.qos)]

    def command_result(self, device: str, reply: Any, result: dict[str, Any]) -> list[Outgoing]:
        ms = self._now_ms()
        p = self._payload(ms)
        types = self._types.get(device, {})
        if result.get("ok"):
            for ours, value in result.get("set", {}).items():
                name = self.names.theirs(ours)
                m = p.metrics.add(name=name, timestamp=ms)
                pb.set_value(m, types.get(name, pb.DOUBLE), value)
                self._last.setdefault(device, {})[name] = value
        else:
            m = p.metrics.add(name=COMMAND_ERROR, timestamp=ms)
            pb.set_value(m, pb.STRING, str(result.get("error")))
        return [Outgoing(self.topic("DDATA", device), p.SerializeToString(), self.settings.qos)]

    def downlink(self, topic: str, payload: bytes) -> Downlink:
        try:
            message = pb.Payload.FromString(payload)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            return Downlink(ignored=f"not a Sparkplug B payload: {type(exc).__name__}")
        if topic == self.topic("NCMD"):
            for m in message.metrics:
                if m.name == REBIRTH and pb.value_of(m) is True:
                    return Downlink(reannounce=True)
            return Downlink(ignored="NCMD without Node Control/Rebirth = true")
        prefix = self.topic("DCMD") + "/"
        if not topic.startswith(prefix):
            return Downlink(ignored=f"not a command topic: {topic}")
        device = topic[len(prefix) :]
        changes = {self.names.ours(m.name): pb.value_of(m) for m in message.metrics}
        self._commands += 1
        rid = f"dcmd-{self._commands}"
        return Downlink(commands=[PlatformCommand(device, command_body(rid, changes), rid)])


ADAPTER = SparkplugAdapter
