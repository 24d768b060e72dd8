"""Host pieces for the node MQTT link tests (tests/test_node_mqtt_link.py): the transport
interface on paho-mqtt (a real MQTT client standing in for the radio when MqttLink runs on
CPython), and an independent subscriber that decodes what reaches the broker with cbor2."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import paho.mqtt.client as mqtt


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait until ``predicate()`` holds, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class PahoTransport:
    """firmware/node/uplinks/mqtt_link.py's transport interface on paho-mqtt, driven by
    hand (no network thread, no automatic reconnect) so that it behaves like umqtt.simple:
    every call blocks until its acknowledgement or raises OSError within ``timeout_s``.
    Like umqtt.simple it pings only when called (``keeps_alive`` False), and hands each
    message to ``handler`` (MqttLink's) before paho sends its PUBACK."""

    keeps_alive = False

    def __init__(self, host: str, port: int, timeout_s: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.client: mqtt.Client | None = None
        self.received: list[tuple[str, bytes]] = []
        self.handler: Callable[[str, bytes, int], None] | None = None
        self._connack: int | None = None
        self._subacks: set[int] = set()

    def _loop_until(self, done: Callable[[], bool], what: str) -> None:
        assert self.client is not None
        deadline = time.monotonic() + self.timeout_s
        while not done():
            rc = self.client.loop(0.02)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise OSError(errno.ECONNRESET, f"{what}: {mqtt.error_string(rc)}")
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, f"{what}: no answer in {self.timeout_s} s")

    def connect(self, client_id: str, will_topic: str, will_payload: bytes) -> None:
        self.close()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.will_set(will_topic, will_payload, qos=1, retain=True)
        c.on_connect = lambda _c, _u, _f, rc, _p: setattr(self, "_connack", rc.value)
        c.on_subscribe = lambda _c, _u, mid, _rc, _p: self._subacks.add(mid)
        c.on_message = lambda _c, _u, m: self._message(m.topic, bytes(m.payload))
        self._connack = None
        self.client = c
        c.connect(self.host, self.port, keepalive=60)  # OSError when nothing listens
        self._loop_until(lambda: self._connack is not None, "CONNACK")
        if self._connack != 0:
            raise OSError(errno.ECONNREFUSED, f"CONNACK {self._connack}")

    def _message(self, topic: str, payload: bytes) -> None:
        # paho's PUBACK goes out when this returns, as umqtt.simple's does
        if self.handler is None:
            self.received.append((topic, payload))
        else:
            self.handler(topic, payload, len(payload))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self.client is None:
            raise OSError(errno.ENOTCONN, "not connected")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise OSError(errno.ENOTCONN, mqtt.error_string(info.rc))
        self._loop_until(info.is_published, "PUBACK")

    def subscribe(self, topic: str) -> None:
        if self.client is None:
            raise OSError(errno.ENOTCONN, "not connected")
        _, mid = self.client.subscribe(topic, 1)
        self._loop_until(lambda: mid in self._subacks, "SUBACK")

    def poll(self, wait_ms: int = 0) -> list[tuple[str, bytes]]:
        if self.client is None:
            raise OSError(errno.ENOTCONN, "not connected")
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            rc = self.client.loop(0.01)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise OSError(errno.ECONNRESET, mqtt.error_string(rc))
            if self.received or time.monotonic() >= deadline:
                break
        out, self.received = self.received, []
        return out

    def close(self) -> None:
        # as WifiMqtt does: a DISCONNECT (no will), then the socket goes
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
            client.loop(0.05)
            sock = client.socket()
            if sock is not None:
                sock.close()

    def drop(self) -> None:
        # the radio gone: the socket goes, no DISCONNECT (the will fires)
        client, self.client = self.client, None
        if client is not None:
            sock = client.socket()
            if sock is not None:
                sock.close()

    def status(self) -> dict[str, Any]:
        return {"rssi": -61}

    def sleep(self) -> None:
        pass


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool

    def pack(self) -> list[dict[Any, Any]]:
        """The SenML-CBOR pack, decoded by cbor2 (not by our own decoder)."""
        decoded = cbor2.loads(self.payload)
        assert isinstance(decoded, list)
        return decoded

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client on its own thread subscribed to ``topic_filter`` (resubscribing after
    a broker restart), with ``login`` (user, password) if given; ``messages`` fill in
    arrival order."""

    def __init__(
        self, host: str, port: int, topic_filter: str, login: tuple[str, str] | None = None
    ) -> None:
        self.messages: list[Message] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if login is not None:
            c.username_pw_set(*login)
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe(topic_filter, 1)
        c.on_subscribe = lambda _c, _u, _mid, _rc, _p: self.subscribed.set()
        c.on_disconnect = lambda _c, _u, _f, _rc, _p: self.subscribed.clear()
        c.on_message = self._on_message
        c.reconnect_delay_set(0.1, 0.5)
        self.client = c
        self.host, self.port = host, port

    def _on_message(self, _c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(m.topic, bytes(m.payload), bool(m.retain)))

    def __enter__(self) -> Subscriber:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, "the subscriber's SUBACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def on(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]


# CBOR labels of RFC 8428 table 4 (the RFC's numbers, not our code's)
BN, BT, N, U, V, VB = -2, -3, 0, 1, 2, 4


def records(pack: list[dict[Any, Any]]) -> dict[str, dict[int, Any]]:
    """Each record of a pack by its full name (base name + name), RFC 8428 section 4.5."""
    base = ""
    out = {}
    for rec in pack:
        base = rec.get(BN, base)
        out[base + rec[N]] = rec
    return out


def seq_of(pack: list[dict[Any, Any]]) -> int:
    """The pack's ``seq`` record's value."""
    recs = [r for r in pack if r.get(N) == "seq"]
    assert len(recs) == 1, pack
    value = recs[0][V]
    assert isinstance(value, int)
    return value
