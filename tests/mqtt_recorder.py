"""A minimal MQTT 3.1.1 endpoint that records what clients send: the CONNECT's client id,
username and password (which no real broker shows a test: mosquitto cannot check an HMAC
password, so the platforms' signed logins are asserted here) and every PUBLISH.

It acknowledges CONNECT, SUBSCRIBE, UNSUBSCRIBE, QoS 1 PUBLISH and PINGREQ and can send a
QoS 0 PUBLISH to its clients, and nothing more; it is a witness, not a broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Connect:
    client_id: str
    username: str | None
    password: str | None
    keepalive_s: int
    clean_session: bool
    protocol_level: int


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int


@dataclass
class MqttRecorder:
    """Listens on 127.0.0.1 (ephemeral port); ``connects``, ``publishes`` and
    ``subscriptions`` fill as clients talk."""

    connects: list[Connect] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def __aenter__(self) -> MqttRecorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    def on(self, topic: str) -> list[Publish]:
        return [p for p in self.publishes if p.topic == topic]

    async def send(self, topic: str, payload: bytes) -> None:
        """A QoS 0 PUBLISH to every connected client."""
        t = topic.encode()
        body = len(t).to_bytes(2, "big") + t + payload
        for w in self._writers:
            w.write(b"\x30" + _length(len(body)) + body)
            await w.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                size, mult = 0, 1
                while True:
                    b = (await reader.readexactly(1))[0]
                    size += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                body = await reader.readexactly(size)
                kind = first >> 4
                if kind == 1:
                    self.connects.append(_connect(body))
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 3:
                    qos = (first >> 1) & 3
                    tlen = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + tlen].decode()
                    at = 2 + tlen
                    if qos:
                        pid = body[at : at + 2]
                        at += 2
                        writer.write(b"\x40\x02" + pid)
                    self.publishes.append(Publish(topic, body[at:], qos))
                elif kind == 8:
                    pid, at, granted = body[:2], 2, b""
                    while at < len(body):
                        tlen = int.from_bytes(body[at : at + 2], "big")
                        self.subscriptions.append(body[at + 2 : at + 2 + tlen].decode())
                        granted += bytes([min(body[at + 2 + tlen], 1)])
                        at += 3 + tlen
                    writer.write(b"\x90" + _length(2 + len(granted)) + pid + granted)
                elif kind == 10:
                    writer.write(b"\xb0\x02" + body[:2])
                elif kind == 12:
                    writer.write(b"\xd0\x00")
                elif kind == 14:
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.remove(writer)
            writer.close()


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect(body: bytes) -> Connect:
    at = 2 + int.from_bytes(body[:2], "big")  # protocol name
    level, flags = body[at], body[at + 1]
    keepalive = int.from_bytes(body[at + 2 : at + 4], "big")
    at += 4

    def field_() -> bytes:
        nonlocal at
        n = int.from_bytes(body[at : at + 2], "big")
        value = body[at + 2 : at + 2 + n]
        at += 2 + n
        return value

    client_id = field_().decode()
    if flags & 0x04:  # will topic and message
        field_()
        field_()
    username = field_().decode() if flags & 0x80 else None
    password = field_().decode() if flags & 0x40 else None
    return Connect(client_id, username, password, keepalive, bool(flags & 0x02), level)


@dataclass
class TappedConnect:
    """A CONNECT seen on its way to the broker, with the test's wall clock then."""

    connect: Connect
    at_s: float


@dataclass
class ConnectTap:
    """A TCP relay in front of a real broker that records each client's CONNECT (client
    id, username, password: what a broker never shows a test) and forwards every byte
    both ways untouched. The broker does the MQTT; the tap only witnesses the logins.
    ``clock`` stamps each CONNECT (the wall clock the gateway under test is given)."""

    upstream_host: str
    upstream_port: int
    clock: Callable[[], float] = time.time
    connects: list[TappedConnect] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectTap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            first = await reader.readexactly(1)
            size, mult, head = 0, 1, bytearray(first)
            while True:
                b = await reader.readexactly(1)
                head += b
                size += (b[0] & 0x7F) * mult
                mult *= 128
                if not b[0] & 0x80:
                    break
            body = await reader.readexactly(size)
            if first[0] >> 4 == 1:
                self.connects.append(TappedConnect(_connect(body), self.clock()))
            up_writer.write(bytes(head) + body)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # one direction of the relay; either side closing ends both
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()
