"""The city platform's side of the demo: everything that reaches the broker, counted.

Packs are counted once per (device, seq), so a QoS 1 redelivery after the broker outage is
not counted twice; alarms are seen where the platform sees them: SOS and smoke as events,
tilt and water as rising edges in the poles' data.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from polekit.protocols import modbus, senml


@dataclass
class DeviceView:
    code: str
    transport: str
    values: dict[str, Any] = field(default_factory=dict)
    readings: int = 0
    packs: int = 0
    last_t: float = 0.0


class Platform:
    def __init__(self, host: str, port: int, fmt: str, devices: dict[str, str]) -> None:
        self.host, self.port, self.fmt = host, port, fmt
        self.devices = {code: DeviceView(code, transport) for code, transport in devices.items()}
        self.seen: set[tuple[str, int]] = set()
        self.alarms: Counter[str] = Counter()
        self.alarm_log: deque[str] = deque(maxlen=8)
        self.results: dict[Any, tuple[dict[str, Any], float]] = {}
        self.arrivals: deque[float] = deque(maxlen=2000)
        self.connected = False
        self._client: aiomqtt.Client | None = None
        self._flags: dict[tuple[str, str], bool] = {}

    def rate(self, window_s: float = 5.0) -> float:
        """Messages a second at the broker over the last ``window_s``."""
        now = time.monotonic()
        return sum(1 for t in self.arrivals if now - t <= window_s) / window_s

    @property
    def delivered(self) -> int:
        return sum(d.readings for d in self.devices.values())

    async def run(self, subscribed: asyncio.Event) -> None:
        """Stay subscribed through broker outages; ``subscribed`` is set at each (re)start."""
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier="demo-platform") as c:
                    self._client = c
                    await c.subscribe("polekit/#", qos=1)
                    self.connected = True
                    subscribed.set()
                    async for m in c.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self._message(str(m.topic), payload)
            except aiomqtt.MqttError:
                pass
            self.connected = False
            self._client = None
            subscribed.clear()
            await asyncio.sleep(0.05)

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._client is None:
            raise RuntimeError("the platform is not connected")
        await self._client.publish(topic, payload, qos=1)

    def _message(self, topic: str, payload: bytes) -> None:
        self.arrivals.append(time.monotonic())
        parts = topic.split("/")
        kind, code = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
        if kind == "data" and code in self.devices:
            pack = (
                senml.decode_json(payload)
                if self.fmt == "senml+json"
                else senml.decode_cbor(payload)
            )
            records = senml.resolve(pack, now=time.time())
            values = {
                r["n"].rsplit(":", 1)[1]: r.get("v", r.get("vb", r.get("vs"))) for r in records
            }
            seq = int(values.pop("seq", -1))
            if (code, seq) in self.seen:
                return  # a redelivery
            self.seen.add((code, seq))
            view = self.devices[code]
            view.values.update(values)
            view.readings += len(values)
            view.packs += 1
            view.last_t = time.time()
            self._edges(code, values)
        elif kind == "event" and code in self.devices:
            body = json.loads(payload) if payload[:1] == b"{" else {}
            name = str(body.get("event", "event"))
            self.alarms[name] += 1
            self.alarm_log.append(f"{time.strftime('%H:%M:%S')} {name} {body.get('value')} {code}")
        elif kind == "cmd-result":
            body = json.loads(payload) if payload[:1] == b"{" else {}
            self.results[body.get("id")] = (body, time.monotonic())

    def _edges(self, code: str, values: dict[str, Any]) -> None:
        checks = {
            "tilt": bool(int(values.get("alarms", 0) or 0) & modbus.ALARM_TILT)
            if "alarms" in values
            else None,
            "water": values.get("water"),
        }
        for name, on in checks.items():
            if on is None:
                continue
            before = self._flags.get((code, name), False)
            if on and not before:
                self.alarms[name] += 1
                self.alarm_log.append(f"{time.strftime('%H:%M:%S')} {name} alarm {code}")
            self._flags[(code, name)] = bool(on)
