"""The default platform: SenML packs on ``{prefix}/{gw}/data/{code}``, our own dialect.

Byte for byte what the gateway sent before platforms existed: a pack per poll with the
device's ``seq`` record, events and command results in the configured encoding, the
retained ``state`` (online, with the will offline), commands on ``{prefix}/{gw}/cmd/+``.
Device online/offline is not published (the packs' presence says it; unchanged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from polekit.gateway.config import FORMATS
from polekit.gateway.pipeline import PackEncoder, encode_body
from polekit.gateway.platforms.base import (
    Adapter,
    AdapterContext,
    Connection,
    Downlink,
    Outgoing,
    PlatformCommand,
    Reading,
    Section,
)


@dataclass(frozen=True)
class SenmlSettings:
    topic_prefix: str
    format: str
    secondary_units: bool
    username: str | None
    password: str | None = field(repr=False)


class SenmlAdapter(Adapter):
    KIND = "senml"
    KEYS = ("topic_prefix", "format", "secondary_units", "username", "password")
    EXAMPLE: ClassVar[dict[str, Any]] = {"kind": "senml", "format": "senml+json"}

    @classmethod
    def parse(cls, section: Section) -> SenmlSettings:
        m = section.mqtt
        prefix = section.text(
            "topic_prefix",
            m.topic_prefix if m else "polekit/v1",
            check=lambda v: not any(c in v for c in "#+") and not v.endswith("/"),
            allowed="a topic path without '+', '#' or a trailing '/'",
        )
        return SenmlSettings(
            topic_prefix=prefix,
            format=section.choice("format", FORMATS, m.format if m else FORMATS[0]),
            secondary_units=section.boolean("secondary_units", m.secondary_units if m else False),
            username=section.text("username"),
            password=section.text("password", secret=True),
        )

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        s: SenmlSettings = ctx.platform.settings
        self.settings = s
        self.encoder = PackEncoder(s.format, s.secondary_units)
        self._base = f"{s.topic_prefix}/{ctx.gateway_id}"
        self._cmd_prefix = f"{self._base}/cmd/"
        self.username = s.username or ctx.platform.broker.username
        self.password = s.password or ctx.platform.broker.password

    def topic(self, kind: str, device: str | None = None) -> str:
        return f"{self._base}/{kind}/{device}" if device else f"{self._base}/{kind}"

    def _state(self, state: str) -> bytes:
        return json.dumps({"state": state, "gateway": self.ctx.gateway_id}).encode()

    def connection(self, now_s: float) -> Connection:
        b = self.platform.broker
        return Connection(
            host=b.host,
            port=b.port,
            client_id=f"polekit-{self.ctx.gateway_id}",
            username=self.username,
            password=self.password,
            tls=b.tls,
            mqtt_version=self.platform.mqtt_version,
            keepalive_s=b.keepalive_s,
            will=Outgoing(self.topic("state"), self._state("offline"), 1, retain=True),
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topic("cmd", "+"), 1)]

    def on_connect(self) -> list[Outgoing]:
        return [Outgoing(self.topic("state"), self._state("online"), 1, retain=True)]

    def on_disconnect(self) -> list[Outgoing]:
        return [Outgoing(self.topic("state"), self._state("offline"), 1, retain=True)]

    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        packer = self.encoder.packer(device, readings, time_s)
        return [Outgoing(self.topic("data", device), packer, 1, device=device)]

    def event(self, device: str, body: dict[str, Any], time_s: float) -> list[Outgoing]:
        return [Outgoing(self.topic("event", device), encode_body(body, self.settings.format))]

    def command_result(self, device: str, reply: Any, result: dict[str, Any]) -> list[Outgoing]:
        payload = encode_body(result, self.settings.format)
        return [Outgoing(self.topic("cmd-result", device), payload)]

    def downlink(self, topic: str, payload: bytes) -> Downlink:
        if not topic.startswith(self._cmd_prefix):
            return Downlink(ignored=f"not a command topic: {topic}")
        return Downlink(commands=[PlatformCommand(topic[len(self._cmd_prefix) :], payload)])


ADAPTER = SenmlAdapter
