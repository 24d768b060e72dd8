"""A subscriber that keeps every message it is delivered, with its arrival time, and the
decoders that turn those messages into polls (device, identity, content time, values).

It keeps a persistent session (clean_session off, QoS 1) on a broker that saves sessions
(LocalBroker(persistent=True)), so a broker outage loses it nothing: what it does not
receive, the gateway did not deliver. Messages are decoded after the run, so decoding
costs no CPU while the gateways are measured.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from polekit.protocols import senml


@dataclass(frozen=True)
class Poll:
    """One delivered poll of one device: ``key`` identifies it (equal keys = a
    duplicate), ``counter`` is its register 0 (the read's number at the device, None when
    register 0 is not in it), ``content_s`` the time the gateway says it was read."""

    device: str
    key: Any
    counter: int | None
    content_s: float
    values: int
    arrived: float


class Subscriber:
    """Subscribes to ``topic`` on ``host:port`` and keeps (arrival, topic, payload)."""

    def __init__(self, host: str, port: int, topic: str, client_id: str) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.messages: list[tuple[float, str, bytes]] = []
        self.connected = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        # reconnect at once: the subscriber's own delay would add to a gateway's reconnect time
        self._client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_disconnect(self, *_: Any) -> None:
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    def start(self, timeout_s: float = 10.0) -> Subscriber:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self.connected.wait(timeout_s):
            raise RuntimeError(f"the subscriber did not connect to {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def polekit_polls(messages: Iterable[tuple[float, str, bytes]]) -> list[Poll]:
    """Polls in polekit's SenML packs (``.../data/{code}``): the key is the pack's ``seq``."""
    out = []
    for arrived, topic, payload in messages:
        if "/data/" not in topic:
            continue
        device = topic.rsplit("/", 1)[1]
        records = senml.resolve(senml.decode_cbor(payload), now=0)
        seq, counter, values, when = None, None, 0, 0.0
        for r in records:
            name = r["n"].rsplit(":", 1)[1]
            when = r.get("t", when)
            if name == "seq":
                seq = int(r["v"])
                continue
            values += 1
            if name == "r0":
                counter = int(r["v"])
        out.append(Poll(device, seq, counter, float(when), values, arrived))
    return out


def thingsboard_polls(messages: Iterable[tuple[float, str, bytes]]) -> list[Poll]:
    """Polls in ThingsBoard gateway telemetry (``v1/gateway/telemetry``:
    ``{device: [{"ts": ms, "values": {...}}, ...]}``): the key is (ts, values)."""
    out = []
    for arrived, topic, payload in messages:
        if topic != "v1/gateway/telemetry":
            continue
        for device, entries in json.loads(payload).items():
            for entry in entries if isinstance(entries, list) else [entries]:
                values = entry.get("values", {k: v for k, v in entry.items() if k != "ts"})
                key = (entry.get("ts"), tuple(sorted(values.items())))
                counter = values.get("r0")
                out.append(
                    Poll(
                        device,
                        key,
                        None if counter is None else int(counter),
                        float(entry.get("ts", 0)) / 1000,
                        len(values),
                        arrived,
                    )
                )
    return out


Decoder = Callable[[Iterable[tuple[float, str, bytes]]], list[Poll]]
