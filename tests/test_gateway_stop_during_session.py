"""A stop (SIGTERM) that comes while the uplink's MQTT session is being set up: the
gateway ends within seconds, exit code 0, its queue intact, the retained state it leaves
is "offline".

The broker here is a stand-in that answers only when the test says so (a real broker
answers at once, and the moment a stop meets an answer is then a matter of luck: 2 hangs
in 3 full runs on a busy machine, none in 40 runs on a quiet one). On Python 3.11,
``asyncio.wait_for`` (which aiomqtt waits for every CONNACK, SUBACK and PUBACK with)
returns the answer instead of raising when the task is cancelled after the answer came
and before the task ran again (CPython gh-86296, fixed in 3.12): a cancellation the uplink
must not lose.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from polekit.gateway.delivery import open_deliveries
from polekit.gateway.queue import DurableQueue

from gwkit import gateway_config

CONNECT, PUBLISH, SUBSCRIBE, DISCONNECT = 1, 3, 8, 14


@dataclass
class Packet:
    kind: int
    packet_id: bytes  # b"" when it has none
    topic: str = ""
    payload: bytes = b""


class HeldBroker:
    """An MQTT 3.1.1 endpoint on 127.0.0.1 (port 0) that records the packets of its one
    client and answers none of them by itself: the test sends each answer (``send``) when
    it chooses. The endpoint is not a broker; it exists so that the moment an answer
    reaches the gateway is the test's, not the scheduler's."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.packets: list[Packet] = []
        self._seen = threading.Condition()
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.close()
        if self._conn is not None:
            self._conn.close()
        self._thread.join(timeout=5)

    def send(self, data: bytes) -> None:
        """Bytes to the client, in one write (answers sent together arrive together)."""
        assert self._conn is not None
        self._conn.sendall(data)

    def wait_for(self, kind: int, topic: str = "", nth: int = 1, timeout_s: float = 10) -> Packet:
        """The ``nth`` packet of ``kind`` (on ``topic`` when given) the client sent;
        AssertionError after the deadline."""

        def found() -> Packet | None:
            hits = [p for p in self.packets if p.kind == kind and topic in ("", p.topic)]
            return hits[nth - 1] if len(hits) >= nth else None

        with self._seen:
            if not self._seen.wait_for(lambda: found() is not None, timeout_s):
                kinds = [(p.kind, p.topic) for p in self.packets]
                raise AssertionError(f"no packet {kind} {topic!r} #{nth}; got {kinds}")
            packet = found()
        assert packet is not None
        return packet

    def _serve(self) -> None:
        try:
            self._conn, _ = self._server.accept()
            stream = self._conn.makefile("rb")
            while head := stream.read(1):
                size, shift = 0, 0
                while True:
                    b = stream.read(1)[0]
                    size |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                packet = _parse(head[0], stream.read(size))
                with self._seen:
                    self.packets.append(packet)
                    self._seen.notify_all()
        except (OSError, IndexError):  # the test closed it, or the client went away
            pass


def _parse(first: int, body: bytes) -> Packet:
    kind = first >> 4
    if kind == SUBSCRIBE:
        return Packet(kind, body[:2])
    if kind == PUBLISH:
        at = 2 + int.from_bytes(body[:2], "big")
        topic = body[2:at].decode()
        pid = body[at : at + 2] if (first >> 1) & 3 else b""
        return Packet(kind, pid, topic, body[at + len(pid) :])
    return Packet(kind, b"")


CONNACK = b"\x20\x02\x00\x00"


def suback(p: Packet) -> bytes:
    return b"\x90\x03" + p.packet_id + b"\x01"


def puback(p: Packet) -> bytes:
    return b"\x40\x02" + p.packet_id


def _queued(data_dir: Path, n: int) -> Path:
    # messages an earlier run could not deliver: the stop must leave every one of them
    path = data_dir / "queue.sqlite3"
    data_dir.mkdir(mode=0o700, parents=True)

    async def fill() -> None:
        async with DurableQueue(path) as queue:
            for i in range(n):
                await queue.append(f"polekit/v1/gw-test/data/d{i}", b"pack %d" % i)

    asyncio.run(fill())
    return path


def _rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [t for (t,) in db.execute("SELECT topic FROM message ORDER BY id")]


class Gateway:
    """``polekit gateway run`` with the fault handler on; ``exit_code`` waits for it to end
    and, when it does not, sends SIGABRT so the failure shows every thread's stack."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polekit", "gateway", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )

    def exit_code(self, within_s: float) -> int:
        try:
            return self.proc.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(
                f"the gateway did not stop within {within_s} s of SIGTERM; its log and "
                f"stacks:\n{err.decode(errors='replace')[-8000:]}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def _config(tmp: Path, data_dir: Path, url: str) -> Path:
    config = tmp / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "gw-test"\ndata_dir = "{data_dir}"\n'
        f'[mqtt]\nurl = "{url}"\n[status]\nenabled = false\n'
    )
    config.chmod(0o600)
    return config


def test_stop_while_the_broker_holds_its_connack_ends_at_once(tmp_path: Path) -> None:
    queue = _queued(tmp_path / "data", 3)
    broker = HeldBroker()
    gw = Gateway(_config(tmp_path, tmp_path / "data", broker.url))
    try:
        broker.wait_for(CONNECT)  # the session is being set up; no CONNACK comes
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.exit_code(within_s=5) == 0
    finally:
        gw.kill()
        broker.close()
    assert [p.kind for p in broker.packets] == [CONNECT]  # nothing sent without a session
    assert _rows(queue) == [f"polekit/v1/gw-test/data/d{i}" for i in range(3)]


def test_stop_whose_offline_state_is_acknowledged_with_the_sessions_answers_ends(
    tmp_path: Path,
) -> None:
    # What hung in the full runs: the stop came while the session was subscribing. The
    # gateway published its offline state; the answer to the subscription let the uplink
    # publish its online state after it; the broker acknowledged both in one segment, the
    # stop's first: the stop cancelled the uplink before it saw its own PUBACK, and
    # wait_for handed it the PUBACK instead of the cancellation. The uplink went on to
    # wait for queued messages, and the gateway for the uplink, for ever.
    queue = _queued(tmp_path / "data", 3)
    broker = HeldBroker()
    gw = Gateway(_config(tmp_path, tmp_path / "data", broker.url))
    state = "polekit/v1/gw-test/state"
    try:
        broker.wait_for(CONNECT)
        broker.send(CONNACK)
        subscribe = broker.wait_for(SUBSCRIBE)
        gw.proc.send_signal(signal.SIGTERM)
        offline = broker.wait_for(PUBLISH, state)  # the stop's
        broker.send(suback(subscribe))  # in order: the subscription was first
        try:
            after = broker.wait_for(PUBLISH, state, nth=2, timeout_s=1)
        except AssertionError:  # the uplink sent no state after the offline one
            broker.send(puback(offline))
        else:
            broker.send(puback(offline) + puback(after))
        assert gw.exit_code(within_s=5) == 0
    finally:
        gw.kill()
        broker.close()
    states = [p.payload for p in broker.packets if p.kind == PUBLISH and p.topic == state]
    assert states == [b'{"state": "offline", "gateway": "gw-test"}'], states
    assert broker.packets[-1].kind == DISCONNECT
    # the stand-in acknowledged no data: all of it is still queued
    assert _rows(queue) == [f"polekit/v1/gw-test/data/d{i}" for i in range(3)]


def test_a_cancelled_uplink_ends_whenever_the_connack_arrives(tmp_path: Path) -> None:
    # The cancellation lands 0, 1, 2, ... turns of the event loop after the CONNACK
    # reached the socket: one of those turns is after aiomqtt's wait for it was answered
    # and before the uplink ran again, where wait_for returned the CONNACK instead.

    async def once(turns: int) -> None:
        broker = HeldBroker()
        config = gateway_config(tmp_path / f"turns-{turns}", broker.url, [], [])
        deliveries = open_deliveries(config, lambda d, c: None, None, 64)
        uplink = deliveries[0].uplink
        task = asyncio.create_task(uplink.run())
        try:
            await asyncio.to_thread(broker.wait_for, CONNECT)
            broker.send(CONNACK)
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=3)
            assert done and task.cancelled(), (
                f"cancelled {turns} turns after the CONNACK: the uplink went on "
                f"(connected={uplink.connected}, packets {[p.kind for p in broker.packets]})"
            )
        finally:
            task.cancel()
            broker.close()
            for d in deliveries:
                d.queue.close()

    async def every_turn() -> None:
        for turns in range(8):
            await once(turns)

    asyncio.run(every_turn())
