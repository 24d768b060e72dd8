"""The HJ 212 uplink: drains one platform's durable queue to an environmental platform
over plain TCP, one packet at a time, each confirmed by the platform's data answer.

HJ 212-2017 has no broker and no PUBACK: a packet with Flag bit A set is confirmed by
the platform's CN=9014 answer carrying the same QN. So the uplink sends the oldest queued
packet, waits ``answer_timeout_s`` for that answer, sends it again up to ``retries``
times (the standard's overtime and recount), and only then takes it off the queue. A
platform that still does not answer gets a new connection, the packet still first in
line: nothing leaves the queue unconfirmed. With ``answer = false`` (a platform that
never answers) a packet leaves the queue once written to the socket.

Packets are built when their data is (QN, DataTime and CRC fixed then), so after an
outage the backlog is re-uploaded as it was, oldest first. Requests the platform sends
(a 1011 time query...) go to the adapter, whose answers are written at once. Connects
are paced by the shared ``ConnectLimiter`` like every platform's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from polekit.gateway.platforms.base import Adapter, Outgoing
from polekit.gateway.platforms.limiter import ConnectLimiter
from polekit.gateway.queue import DurableQueue
from polekit.gateway.uplink import CommandSink
from polekit.protocols import hj212
from polekit.protocols.errors import HJ212Error

log = logging.getLogger("polekit.gateway.hj212")

CONNECT_TIMEOUT_S = 5.0
DATA_ANSWER = "9014"
MAX_BUFFER = 8 * 1024  # what the platform may send without a whole packet in it


class _SessionLostError(Exception):
    """The connection ended (closed, reset, or the platform stopped answering)."""


class Hj212Uplink:
    """Sends one HJ 212 platform's queued packets over TCP and answers its requests;
    one connection at a time. Exposes the same counters as ``MqttUplink`` (/health)."""

    def __init__(
        self,
        adapter: Adapter,
        queue: DurableQueue,
        on_commands: CommandSink | None = None,
        limiter: ConnectLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.platform.name
        self.queue = queue
        self.on_commands = on_commands
        self.limiter = limiter or ConnectLimiter(adapter.platform.max_connects_per_min)
        self.clock = clock
        s = adapter.platform.settings
        self.answer_timeout_s: float = s.answer_timeout_s
        self.retries: int = s.retries
        self.host: str = s.host
        self.port: int = s.port
        self.connected = False
        self.published = 0
        self.connects = 0
        self.resent = 0  # packets sent again for want of an answer
        self.renewals = 0  # (no expiring logins here; kept for /health's shape)
        self.ignored = 0  # packets from the platform not used (garbage, stray answers)
        self.last_error: str | None = None
        self.disconnected_at: float | None = None
        self.clock_refusals = 0  # (its logins are not signed: never refused for the clock)
        self.reconnect_s: float | None = None
        self.expires_at: float | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting_qn: str | None = None
        self._answered = asyncio.Event()

    @property
    def shown_url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def _who(self) -> str:
        return f"[platform {self.name}] "

    async def run(self) -> None:
        """Stay connected and drain the queue, forever (until cancelled)."""
        first_warning = True
        while True:
            await asyncio.sleep(self.limiter.wait_s())
            started = self.clock()
            reached = False
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                reached = True
                await self._session(reader, writer)
            except (OSError, TimeoutError, _SessionLostError) as exc:
                self.last_error = str(exc) or type(exc).__name__
            finally:
                self.limiter.attempted(reached)
                if self.connected:
                    self.disconnected_at = self.clock()
                    self.limiter.session_lasted(self.clock() - started)
                    first_warning = True
                self.connected = False
                self._writer = None
            (log.warning if first_warning else log.debug)(
                "%splatform unreachable: %s; retrying", self._who(), self.last_error
            )
            first_warning = False

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected = True
        self.connects += 1
        if self.disconnected_at is not None:
            self.reconnect_s = self.clock() - self.disconnected_at
            self.disconnected_at = None  # measured once: a later reconnect is its own
            log.info(
                "%splatform back after %.1f s; re-uploading %d queued packets",
                self._who(),
                self.reconnect_s,
                self.queue.depth,
            )
        else:
            log.info("%sconnected to %s", self._who(), self.shown_url)
        tasks = [
            asyncio.create_task(self._drain(writer)),
            asyncio.create_task(self._listen(reader, writer)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        for task in done:
            task.result()
        raise _SessionLostError("the platform closed the connection")

    async def _write(self, writer: asyncio.StreamWriter, packet: bytes) -> None:
        writer.write(packet)
        await writer.drain()

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        changed = self.queue.changed()
        while True:
            batch = await self.queue.peek(50)
            if not batch:
                changed.clear()
                if self.queue.depth == 0:
                    await changed.wait()
                continue
            for message in batch:
                await self._send(writer, message.payload)
                self.queue.acked([message.id])
                self.published += 1

    async def _send(self, writer: asyncio.StreamWriter, packet: bytes) -> None:
        try:
            p = hj212.parse(packet)
        except HJ212Error as exc:  # built by our adapter: cannot be, but never stall on it
            log.error("%sdropping a queued packet that is not HJ 212: %s", self._who(), exc)
            return
        if not hj212.wants_answer(p):
            await self._write(writer, packet)
            return
        self._waiting_qn = p.get("QN")
        try:
            for attempt in range(self.retries + 1):
                self._answered.clear()
                if attempt:
                    self.resent += 1
                    log.info(
                        "%sno answer to QN=%s in %s s; sending it again (%d/%d)",
                        self._who(),
                        self._waiting_qn,
                        self.answer_timeout_s,
                        attempt,
                        self.retries,
                    )
                await self._write(writer, packet)
                try:
                    async with asyncio.timeout(self.answer_timeout_s):
                        await self._answered.wait()
                    return
                except TimeoutError:
                    if self._answered.is_set():  # came in the turn the time ran out
                        return
                    continue
        finally:
            self._waiting_qn = None
        raise _SessionLostError(
            f"no answer (CN=9014) to QN={p.get('QN')} after {self.retries + 1} sends; "
            "reconnecting (the packet stays queued)"
        )

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                return
            buf += chunk
            while buf:
                try:
                    n = hj212.frame_length(buf)
                except HJ212Error as exc:
                    # out of step: skip to the next packet header
                    self.ignored += 1
                    log.debug("%sskipping bytes: %s", self._who(), exc)
                    at = buf.find(b"##", 1)
                    buf = b"" if at < 0 else buf[at:]
                    continue
                if n == 0:
                    if len(buf) > MAX_BUFFER:
                        buf = b""
                    break
                packet, buf = buf[:n], buf[n:]
                await self._received(packet, writer)

    async def _received(self, packet: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            p = hj212.parse(packet)
        except HJ212Error as exc:
            self.ignored += 1
            log.debug("%signored a packet: %s", self._who(), exc)
            return
        if p["CN"] == DATA_ANSWER:
            if p.get("QN") is not None and p.get("QN") == self._waiting_qn:
                self._answered.set()
            else:
                self.ignored += 1  # a late answer to a packet already resent and answered
            return
        down = self.adapter.downlink("hj212", packet)
        if down.ignored is not None:
            self.ignored += 1
            log.debug("%signored CN=%s: %s", self._who(), p["CN"], down.ignored)
        for m in down.publish:
            assert isinstance(m.payload, bytes)
            await self._write(writer, m.payload)
        if down.commands and self.on_commands is not None:
            await self.on_commands(down.commands)

    async def say_offline(self) -> None:
        """Close the connection cleanly (HJ 212 has no goodbye packet)."""
        for m in self.adapter.on_disconnect():
            if self._writer is not None and isinstance(m, Outgoing):
                assert isinstance(m.payload, bytes)
                with contextlib.suppress(OSError):
                    await self._write(self._writer, m.payload)
        if self._writer is not None:
            self._writer.close()
