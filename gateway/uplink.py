"""The MQTT uplink: drains one platform's durable queue to its broker, QoS 1 (the
adapter's ``queued_qos``).

One uplink per platform, each with its own session, so one platform's outage holds back
no other. Everything platform-specific comes from the platform's adapter
(gateway/platforms): the connection settings (client id, login, TLS, will, MQTT
version), recomputed at every connect; the session's opening messages (the online
state, sub-device announcements, births), sent before the backlog; the subscriptions,
and what a received message means.

A message leaves the queue only after the broker's PUBACK. When the broker goes away
the uplink retries, paced by the shared ``ConnectLimiter`` (quick at first, never more
than the platform tolerates); while it is away the queue grows on disk, not in memory.
A login that expires (signed credentials) is renewed before it does: the session stops
taking new messages, finishes those in flight, and reconnects with fresh credentials.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiomqtt

from polekit.gateway.platforms.base import (
    Adapter,
    Connection,
    Outgoing,
    PlatformCommand,
    clock_problem,
)
from polekit.gateway.platforms.limiter import ConnectLimiter
from polekit.gateway.queue import DurableQueue, Message

log = logging.getLogger("polekit.gateway.mqtt")

BATCH = 200  # messages in flight at once while draining
RENEW_BEFORE_S = 300.0  # reconnect this long before a login expires (or a tenth of its life)
CLOCK_RETRY_S = 5.0  # how often a gateway with an unset clock looks at it again
# aiomqtt reports a refused TCP connection as text only: nothing listened, so the
# attempt never reached a platform's reconnect counter
REFUSED = os.strerror(errno.ECONNREFUSED)

# the commands a downlink message carried, from this platform
CommandSink = Callable[[list[PlatformCommand]], Awaitable[None]]

T = TypeVar("T")


def _raise_if_cancelled() -> None:
    # aiomqtt waits for each CONNACK, SUBACK and PUBACK with asyncio.wait_for, which on
    # Python 3.11 returns the answer instead of raising when the task was cancelled after
    # the answer came and before the task ran again (CPython gh-86296, fixed in 3.12).
    # The cancellation is still counted on the task: honour it here, or a stop that met
    # an answer leaves the session running and the gateway waiting for it for ever
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def _answered(request: Awaitable[T]) -> T:
    """``await request`` (an aiomqtt call that waits for the broker's answer) without
    losing a cancellation that arrived together with the answer."""
    result = await request
    _raise_if_cancelled()
    return result


class _PahoErrors(logging.Handler):
    """Keeps the last error paho logged. A broker that refuses our client certificate
    sends a TLS alert after the handshake; paho logs it ("failed to receive on socket:
    [SSL: TLSV1_ALERT_UNKNOWN_CA] ...") and aiomqtt reports only "Operation timed out".
    The uplink shows the real reason instead. Lesser paho messages go to our debug log:
    the uplink says once per outage what is wrong, not once a retry."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.last = record.getMessage()
        else:
            log.debug("paho: %s", record.getMessage())


class _RenewError(Exception):
    """The login is about to expire: the session ends cleanly and a new one starts."""


class MqttUplink:
    """Publishes one platform's queued messages and receives its downlink; one broker
    session at a time."""

    def __init__(
        self,
        adapter: Adapter,
        queue: DurableQueue,
        on_commands: CommandSink | None = None,
        limiter: ConnectLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.platform.name
        self.queue = queue
        self.on_commands = on_commands
        self.limiter = limiter or ConnectLimiter(adapter.platform.max_connects_per_min)
        self.clock = clock
        self.wall_clock = wall_clock
        self.connected = False
        self.published = 0
        self.connects = 0
        self.renewals = 0  # sessions ended to renew an expiring login
        self.ignored = 0  # downlink messages the adapter did not use
        self.last_error: str | None = None
        self.disconnected_at: float | None = None
        self.reconnect_s: float | None = None  # how long the last outage took to recover from
        self.expires_at: float | None = None  # the current login's expiry (wall clock)
        self._clock_wrong = False  # last_error says the clock is not set
        self.clock_retry_s = CLOCK_RETRY_S
        self.clock_refusals = 0  # connects not tried because the clock is not set
        self._client: aiomqtt.Client | None = None
        self.closing = False  # the offline state was sent: no online state or birth after it
        # Sparkplug rewrites its seq at publish; other adapters send the bytes as queued
        self._stamp = None if type(adapter).stamp is Adapter.stamp else adapter.stamp
        self._qos = adapter.queued_qos()
        self._paho_errors = _PahoErrors()
        self._paho_log = logging.Logger(f"polekit.gateway.mqtt.paho.{self.name}")  # not propagated
        self._paho_log.addHandler(self._paho_errors)
        # paho logs two debug lines a message; a Logger of its own has no level, so each
        # would build and format a LogRecord only to drop it (8 us a message): let through
        # only what is shown. Set before its first use: such a Logger caches its answer
        self._paho_log.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR)

    @property
    def shown_url(self) -> str:
        return self.adapter.platform.broker.shown_url

    def _client_for(self, conn: Connection) -> aiomqtt.Client:
        tls = None
        if conn.tls is not None:
            t = conn.tls
            tls = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
            if t.cert_file and t.key_file:
                tls.load_cert_chain(t.cert_file, t.key_file)
        will = None
        if conn.will is not None:
            w = conn.will
            assert isinstance(w.payload, bytes), "a will is sent as it is: give bytes"
            will = aiomqtt.Will(w.topic, w.payload, qos=w.qos, retain=w.retain)
        v5 = conn.mqtt_version == "5"
        return aiomqtt.Client(
            conn.host,
            conn.port,
            username=conn.username,
            password=conn.password,
            identifier=conn.client_id,
            keepalive=conn.keepalive_s,
            will=will,
            tls_context=tls,
            logger=self._paho_log,
            timeout=5,
            max_inflight_messages=BATCH,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else conn.clean_session,
        )

    async def run(self) -> None:
        """Stay connected and drain the queue, forever (until cancelled)."""
        first_warning = True
        while True:
            await asyncio.sleep(self.limiter.wait_s())
            now = self.wall_clock()
            conn = self.adapter.connection(now)
            problem = clock_problem(now) if conn.needs_clock else None
            if problem is not None:
                if self.last_error != problem:
                    log.warning("[platform %s] not connecting: %s", self.name, problem)
                self.last_error = problem
                self._clock_wrong = True
                self.clock_refusals += 1
                await asyncio.sleep(self.clock_retry_s)
                continue
            if self._clock_wrong:  # /health no longer shows a problem that is gone
                log.info("[platform %s] the clock is set now; connecting", self.name)
                self.last_error = None
                self._clock_wrong = False
            self._paho_errors.last = None
            started = self.clock()
            reached = True
            try:
                await self._session(conn)
            except _RenewError:
                self.renewals += 1
                log.info("[platform %s] renewing the login before it expires", self.name)
                self.connected = False
                self._client = None
                continue
            except aiomqtt.MqttError as exc:
                # paho's socket error says why (a TLS alert); aiomqtt's may only say "timed out"
                self.last_error = self._paho_errors.last or str(exc)
                reached = self.connected or REFUSED not in str(exc)
            finally:
                self.limiter.attempted(reached)
                self._client = None
                if self.connected:
                    self.disconnected_at = self.clock()
                    self.limiter.session_lasted(self.clock() - started)
                    first_warning = True  # a new outage: said again
                self.connected = False
            # once per outage at warning level (a broker stop is not an error of ours);
            # the retries themselves at debug
            (log.warning if first_warning else log.debug)(
                "%sbroker unreachable: %s; retrying", self._who(), self.last_error
            )
            first_warning = False

    def _who(self) -> str:
        # the default platform logs as before platforms existed
        return "" if self.name == "senml" else f"[platform {self.name}] "

    async def _session(self, conn: Connection) -> None:
        try:
            client = self._client_for(conn)
        except (OSError, ValueError) as exc:  # a TLS file gone or a key that does not fit:
            # this platform retries (and says why); the others and the buses go on
            raise aiomqtt.MqttError(f"cannot use the TLS files: {exc}") from None
        client.pending_calls_threshold = 2 * BATCH  # aiomqtt warns past 10; a batch is 200
        try:
            await self._serve(client, conn)
        finally:
            # aiomqtt keeps why the connection was lost in a future that only its message
            # iterator reads; when the publisher noticed first, nobody would, and asyncio
            # would log "Future exception was never retrieved" at ERROR for a normal stop
            lost = getattr(client, "_disconnected", None)
            if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
                lost.exception()

    def _renew_at(self, conn: Connection) -> float | None:
        if conn.renew_at is not None:
            return conn.renew_at
        if conn.expires_at is None:
            return None
        life = conn.expires_at - self.wall_clock()
        return conn.expires_at - min(RENEW_BEFORE_S, max(life, 0) / 10)

    async def _serve(self, client: aiomqtt.Client, conn: Connection) -> None:
        async with client:
            _raise_if_cancelled()  # aiomqtt's wait for the CONNACK may have taken it in
            self._client = client
            self.connected = True
            self.connects += 1
            self.expires_at = conn.expires_at
            if self.disconnected_at is not None:
                self.reconnect_s = self.clock() - self.disconnected_at
                self.disconnected_at = None  # measured once: a renewal is no outage
                log.info(
                    "%sbroker back after %.1f s; draining %d queued",
                    self._who(),
                    self.reconnect_s,
                    self.queue.depth,
                )
            else:
                log.info("%sconnected to %s", self._who(), self.shown_url)
            for topic, qos in self.adapter.subscriptions():
                await _answered(client.subscribe(topic, qos=qos))
            await self._send_now(client, self.adapter.on_connect())
            tasks = [
                asyncio.create_task(self._drain(client, self._renew_at(conn))),
                asyncio.create_task(self._listen(client)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()  # re-raises the MqttError (or _RenewError) that ended the session
            raise aiomqtt.MqttError("the broker closed the session")

    async def _send_now(self, client: aiomqtt.Client, messages: list[Outgoing]) -> None:
        # session messages: not queued, sent in order, each awaited; none once the offline
        # state is out (a retained "online" after it would outlive the gateway)
        for m in messages:
            assert isinstance(m.payload, bytes), "a session message is sent as it is: give bytes"
            if self.closing:
                return
            await _answered(client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain))

    async def _drain(self, client: aiomqtt.Client, renew_at: float | None) -> None:
        changed = self.queue.changed()
        while True:
            if renew_at is not None and self.wall_clock() >= renew_at:
                raise _RenewError()  # between batches: nothing is in flight
            batch = await self.queue.peek(BATCH)
            if not batch:
                changed.clear()
                if self.queue.depth == 0:
                    if renew_at is None:
                        await changed.wait()
                    else:
                        left = max(renew_at - self.wall_clock(), 0.0)
                        try:  # asyncio.timeout, not wait_for: see _raise_if_cancelled
                            async with asyncio.timeout(left):
                                await changed.wait()
                        except TimeoutError:
                            pass
                continue
            # paho sends in call order and the broker keeps it: publishing a batch at once
            # keeps order and fills the in-flight window
            results = await asyncio.gather(
                *(self._publish(client, m) for m in batch), return_exceptions=True
            )
            failed = [r for r in results if r is not None]
            if failed:
                raise (
                    failed[0]
                    if isinstance(failed[0], aiomqtt.MqttError)
                    else aiomqtt.MqttError(str(failed[0]))
                )

    async def _publish(self, client: aiomqtt.Client, message: Message) -> None:
        # each PUBACK is recorded as it comes: a session that ends in the middle of a batch
        # (the broker stopped, the command listener failed first and this task was
        # cancelled) forgets none, so after the reconnect only what the broker did not
        # acknowledge is sent again
        payload = message.payload
        if self._stamp is not None:
            payload = self._stamp(message.topic, payload)
        await client.publish(message.topic, payload, qos=self._qos)
        self.queue.acked([message.id])
        self.published += 1
        _raise_if_cancelled()  # after recording the PUBACK that came with the cancellation

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else str(message.payload).encode()
            )
            down = self.adapter.downlink(topic, payload)
            if down.ignored is not None:
                self.ignored += 1
                log.debug("%signored %s: %s", self._who(), topic, down.ignored)
            if down.publish:
                await self._send_now(client, down.publish)
            if down.reannounce:
                await self._send_now(client, self.adapter.on_connect())
            if down.commands and self.on_commands is not None:
                await self.on_commands(down.commands)

    async def say_offline(self) -> None:
        """Send the adapter's closing messages (clean shutdown: the will only fires on loss).
        From here on no opening message (online state, births) or downlink reply is sent:
        a session still being set up would otherwise announce the gateway online after it
        said it is offline."""
        self.closing = True
        if self._client is not None and self.connected:
            try:
                for m in self.adapter.on_disconnect():
                    assert isinstance(m.payload, bytes)
                    await self._client.publish(
                        m.topic, m.payload, qos=m.qos, retain=m.retain, timeout=2
                    )
            except aiomqtt.MqttError as exc:
                log.warning("%scould not publish offline state: %s", self._who(), exc)
