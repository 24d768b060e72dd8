"""The city platform's side of the demo: everything that reaches the broker, counted, and
the verdict on the run.

Packs are counted once per (device, seq) and events once per (device, event, time), so a
QoS 1 redelivery after the broker outage is not counted twice; alarms are seen where the
platform sees them: SOS and smoke as events, tilt and water as rising edges in the poles'
data. The street tells the platform each alarm it raises and the platform sends each
command itself, so it can say what never arrived: an alarm raised but not seen, an alarm
seen more often than raised, a command not acknowledged (with the gateway's reason).
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

# one wording for each alarm, wherever a person reads it (dashboard, summary, verdict)
ALARM_WORDS = {
    "tilt": "tilt alarm",
    "water": "water alarm",
    "smoke": "smoke alarm",
    "sos": "SOS",
    "level_high": "high water alarm",
    "level_rising": "rising water alarm",
    "rain_heavy": "heavy rain alarm",
    "cover_open": "manhole cover alarm",
}
# nodes that reach the broker themselves (firmware/node/uplinks/mqtt_link.py): SenML-CBOR
# packs with their own seq per device and kind, alarms as packs on event/{code}
DIRECT = ("wifi", "nbiot")


def alarm_words(name: str) -> str:
    """How a person reads alarm ``name`` (``"sos"`` -> ``"SOS"``)."""
    return ALARM_WORDS.get(name, f"{name} event")


@dataclass
class DeviceView:
    code: str
    transport: str
    values: dict[str, Any] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)  # SenML unit of each value, as received
    readings: int = 0
    packs: int = 0
    last_t: float = 0.0
    seqs: set[int] = field(default_factory=set)  # data packs' seq, for a direct node's gaps

    @property
    def direct(self) -> bool:
        """A node on its own uplink (no gateway between it and the broker)."""
        return self.transport in DIRECT

    @property
    def lost(self) -> int:
        """Data packs a direct node numbered but the platform never got (gaps in seq)."""
        return max(self.seqs) - len(self.seqs) if self.seqs else 0


@dataclass
class Command:
    """A command the platform sent, and the gateway's result when it came."""

    id: str
    device: str
    what: str  # in words: "dim the lamp to 30 %"
    sent_at: float
    result: dict[str, Any] | None = None
    answered_at: float | None = None
    send_error: str = ""

    @property
    def acknowledged(self) -> bool:
        return bool(self.result and self.result.get("ok"))

    @property
    def rtt_ms(self) -> float | None:
        if self.answered_at is None:
            return None
        return round((self.answered_at - self.sent_at) * 1000, 1)

    @property
    def reason(self) -> str | None:
        """Why the command was not acknowledged; None when it was."""
        if self.acknowledged:
            return None
        if self.send_error:
            return self.send_error
        if self.result is None:
            return "no result came back"
        return str(self.result.get("error") or "the gateway gave no reason")

    @property
    def problem(self) -> str | None:
        """The failure in words, for the verdict; None when the command was acknowledged."""
        if self.reason is None:
            return None
        return f"the command to {self.what} on {self.device} was not acknowledged: {self.reason}"


class Platform:
    def __init__(self, host: str, port: int, fmt: str, devices: dict[str, str]) -> None:
        self.host, self.port, self.fmt = host, port, fmt
        self.devices = {code: DeviceView(code, transport) for code, transport in devices.items()}
        self.seen: set[tuple[str, int]] = set()
        self.raised: Counter[str] = Counter()
        self.alarms: Counter[str] = Counter()  # seen
        self.alarm_log: deque[str] = deque(maxlen=8)
        self.commands: dict[str, Command] = {}
        self.results = 0  # command results received
        self.events = 0  # events received, each counted once
        self.arrivals: deque[float] = deque(maxlen=2000)
        self.connected = False
        self._client: aiomqtt.Client | None = None
        self._flags: dict[tuple[str, str], bool] = {}
        self._events_seen: set[tuple[str, str, Any]] = set()

    def rate(self, window_s: float = 5.0) -> float:
        """Messages a second at the broker over the last ``window_s``."""
        now = time.monotonic()
        return sum(1 for t in self.arrivals if now - t <= window_s) / window_s

    @property
    def delivered(self) -> int:
        """Readings from devices behind the gateway (what the gateway produced)."""
        return sum(d.readings for d in self.devices.values() if not d.direct)

    def raise_alarm(self, name: str) -> None:
        """The street made alarm ``name`` happen: the platform must see it once."""
        self.raised[name] += 1

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
                        self.receive(str(m.topic), payload)
            except aiomqtt.MqttError:
                pass
            self.connected = False
            self._client = None
            subscribed.clear()
            await asyncio.sleep(0.05)

    async def send_command(
        self, topic: str, device: str, cmd_id: str, changes: dict[str, Any], what: str
    ) -> Command:
        """Publish a command to ``device`` and track it until its result comes back."""
        cmd = Command(cmd_id, device, what, time.monotonic())
        self.commands[cmd_id] = cmd
        body = json.dumps({"id": cmd_id, "set": changes}).encode()
        if self._client is None:
            cmd.send_error = "the platform was not connected to the broker"
            return cmd
        try:
            await self._client.publish(topic, body, qos=1)
        except aiomqtt.MqttError as exc:
            cmd.send_error = f"the broker did not take it ({exc})"
        return cmd

    def waiting(self) -> bool:
        """Whether an alarm raised is not seen yet, or a command sent has no result yet."""
        if any(self.alarms[name] < n for name, n in self.raised.items()):
            return True
        return any(c.result is None and not c.send_error for c in self.commands.values())

    def failures(self, readings_produced: int) -> list[str]:
        """What went wrong in the run, one phrase each; empty when nothing did."""
        out = []
        lost = readings_produced - self.delivered
        if lost > 0:
            out.append(f"{lost} of {readings_produced} readings never reached the platform")
        for name in list(self.raised) + [n for n in self.alarms if n not in self.raised]:
            raised, seen = self.raised[name], self.alarms[name]
            if seen < raised:
                out.append(f"{alarm_words(name)}: {raised - seen} of {raised} not seen")
            elif seen > raised:
                out.append(f"{alarm_words(name)}: seen {seen} times for {raised} raised")
        for d in self.devices.values():
            if d.direct and d.lost:
                out.append(f"{d.lost} of {max(d.seqs)} packs from {d.code} never arrived")
        out += [c.problem for c in self.commands.values() if c.problem]
        return out

    @staticmethod
    def verdict(failures: list[str]) -> str:
        """``PASS``, or ``FAIL: `` and every failure."""
        return "PASS" if not failures else "FAIL: " + "; ".join(failures)

    def receive(self, topic: str, payload: bytes) -> None:
        """One message from the broker, counted (each pack and event once)."""
        self.arrivals.append(time.monotonic())
        parts = topic.split("/")
        kind, code = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
        view = self.devices.get(code)
        if view is not None and view.direct and kind in ("data", "event"):
            self._direct(view, kind, payload)
        elif kind == "data" and view is not None:
            pack = (
                senml.decode_json(payload)
                if self.fmt == "senml+json"
                else senml.decode_cbor(payload)
            )
            values, units = self._values(pack)
            seq = int(values.pop("seq", -1))
            if (code, seq) in self.seen:
                return  # a redelivery
            self.seen.add((code, seq))
            self._update(view, values, units)
            self._edges(code, values)
        elif kind == "event" and view is not None:
            body = json.loads(payload) if payload[:1] == b"{" else {}
            name, value = str(body.get("event", "event")), body.get("value")
            if (code, name, body.get("t")) in self._events_seen:
                return  # a redelivery
            self._events_seen.add((code, name, body.get("t")))
            self.events += 1
            if value in (False, 0, None):  # an alarm that ended (smoke cleared)
                self._log(f"{alarm_words(name)} cleared", code)
                return
            self.alarms[name] += 1
            self._log(alarm_words(name) + (" (long press)" if value == "long_press" else ""), code)
        elif kind == "cmd-result":
            body = json.loads(payload) if payload[:1] == b"{" else {}
            self.results += 1
            cmd = self.commands.get(str(body.get("id")))
            if cmd is not None and cmd.result is None:
                cmd.result, cmd.answered_at = body, time.monotonic()

    @staticmethod
    def _values(pack: Any) -> tuple[dict[str, Any], dict[str, str]]:
        values, units = {}, {}
        for r in senml.resolve(pack, now=time.time()):
            name = r["n"].rsplit(":", 1)[1]
            values[name] = r.get("v", r.get("vb", r.get("vs")))
            if "u" in r:
                units[name] = r["u"]
        return values, units

    @staticmethod
    def _update(view: DeviceView, values: dict[str, Any], units: dict[str, str]) -> None:
        view.values.update(values)
        view.units.update(units)
        view.readings += len(values)
        view.packs += 1
        view.last_t = time.time()

    def _direct(self, view: DeviceView, kind: str, payload: bytes) -> None:
        # a node's own SenML-CBOR pack: a report on data/, an alarm ({"alarm": name,
        # "alarm_on": bool, ...}) on event/; each kind numbered by its own seq
        values, units = self._values(senml.decode_cbor(payload))
        seq = int(values.pop("seq", -1))
        if (view.code, kind, seq) in self._events_seen:
            return  # a redelivery
        self._events_seen.add((view.code, kind, seq))
        if kind == "data":
            view.seqs.add(seq)
            self._update(view, values, units)
            return
        self.events += 1
        name = str(values.get("alarm", "event"))
        if not values.get("alarm_on"):
            self._log(f"{alarm_words(name)} cleared", view.code)
            return
        self.alarms[name] += 1
        self._log(alarm_words(name), view.code)

    def _log(self, what: str, code: str) -> None:
        self.alarm_log.append(f"{time.strftime('%H:%M:%S')}  {what} at {code}")

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
                self._log(alarm_words(name), code)
            self._flags[(code, name)] = bool(on)
