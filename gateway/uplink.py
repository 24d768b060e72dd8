"""The MQTT uplink: drains the durable queue to the platform's broker, QoS 1.

A message leaves the queue only after the broker's PUBACK. The uplink keeps one session
to the broker: on connect it publishes the retained ``state`` (``online``), with a last
will saying ``offline`` for when the gateway vanishes; it subscribes to the command
topic. When the broker goes away it retries quickly (within a second, capped), because
the platform wants the backlog as soon as it is back; while it is away the queue grows on
disk, not in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import aiomqtt

from polekit.gateway.config import Config
from polekit.gateway.queue import DurableQueue, Message

log = logging.getLogger("polekit.gateway.mqtt")

BATCH = 200  # messages in flight at once while draining

RETRY_MAX_S = 1.0

# topic suffix (device code), payload -> None
CommandHandler = Callable[[str, bytes], Awaitable[None]]


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


class MqttUplink:
    """Publishes queued messages and receives commands; one broker session at a time."""

    def __init__(
        self,
        config: Config,
        queue: DurableQueue,
        on_command: CommandHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.queue = queue
        self.on_command = on_command
        self.clock = clock
        self.connected = False
        self.published = 0
        self.connects = 0
        self.last_error: str | None = None
        self.disconnected_at: float | None = None
        self.reconnect_s: float | None = None  # how long the last outage took to recover from
        self._client: aiomqtt.Client | None = None
        self._paho_errors = _PahoErrors()
        self._paho_log = logging.Logger("polekit.gateway.mqtt.paho")  # not propagated
        self._paho_log.addHandler(self._paho_errors)
        # paho logs two debug lines a message; a Logger of its own has no level, so each
        # would build and format a LogRecord only to drop it (8 us a message): let through
        # only what is shown. Set before its first use: such a Logger caches its answer
        self._paho_log.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR)

    def _state(self, state: str) -> bytes:
        return json.dumps({"state": state, "gateway": self.config.gateway_id}).encode()

    def _client_for_session(self) -> aiomqtt.Client:
        m = self.config.mqtt
        tls = None
        if m.tls:
            tls = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None)
            if m.cert_file and m.key_file:
                tls.load_cert_chain(m.cert_file, m.key_file)
        return aiomqtt.Client(
            m.host,
            m.port,
            username=m.username,
            password=m.password,
            identifier=f"polekit-{self.config.gateway_id}",
            keepalive=m.keepalive_s,
            will=aiomqtt.Will(
                self.config.topic("state"), self._state("offline"), qos=1, retain=True
            ),
            tls_context=tls,
            logger=self._paho_log,
            timeout=5,
            max_inflight_messages=BATCH,
            clean_session=True,
        )

    async def run(self) -> None:
        """Stay connected and drain the queue, forever (until cancelled)."""
        delay = 0.05
        while True:
            self._paho_errors.last = None
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                # paho's socket error says why (a TLS alert); aiomqtt's may only say "timed out"
                self.last_error = self._paho_errors.last or str(exc)
            finally:
                self._client = None
                if self.connected:
                    self.disconnected_at = self.clock()
                    delay = 0.05  # a new outage: said again, retried quickly again
                self.connected = False
            # once per outage at warning level (a broker stop is not an error of ours);
            # the retries themselves at debug
            (log.warning if delay == 0.05 else log.debug)(
                "broker unreachable: %s; retrying", self.last_error
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _session(self) -> None:
        client = self._client_for_session()
        client.pending_calls_threshold = (
            2 * BATCH
        )  # aiomqtt warns past 10; a batch is 200 by design
        try:
            await self._serve(client)
        finally:
            # aiomqtt keeps why the connection was lost in a future that only its message
            # iterator reads; when the publisher noticed first, nobody would, and asyncio
            # would log "Future exception was never retrieved" at ERROR for a normal stop
            lost = getattr(client, "_disconnected", None)
            if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
                lost.exception()

    async def _serve(self, client: aiomqtt.Client) -> None:
        async with client:
            self._client = client
            self.connected = True
            self.connects += 1
            if self.disconnected_at is not None:
                self.reconnect_s = self.clock() - self.disconnected_at
                log.info(
                    "broker back after %.1f s; draining %d queued",
                    self.reconnect_s,
                    self.queue.depth,
                )
            else:
                log.info("connected to %s", self.config.mqtt.shown_url)
            await client.publish(
                self.config.topic("state"), self._state("online"), qos=1, retain=True
            )
            await client.subscribe(self.config.topic("cmd", "+"), qos=1)
            tasks = [
                asyncio.create_task(self._drain(client)),
                asyncio.create_task(self._listen(client)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()  # re-raises the MqttError that ended the session

    async def _drain(self, client: aiomqtt.Client) -> None:
        changed = self.queue.changed()
        while True:
            batch = await self.queue.peek(BATCH)
            if not batch:
                changed.clear()
                if self.queue.depth == 0:
                    await changed.wait()
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
        await client.publish(message.topic, message.payload, qos=1)
        self.queue.acked([message.id])
        self.published += 1

    async def _listen(self, client: aiomqtt.Client) -> None:
        prefix = self.config.topic("cmd") + "/"
        async for message in client.messages:
            topic = str(message.topic)
            if self.on_command is None or not topic.startswith(prefix):
                continue
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else str(message.payload).encode()
            )
            await self.on_command(topic[len(prefix) :], payload)

    async def say_offline(self) -> None:
        """Publish the retained offline state (clean shutdown: the will only fires on loss)."""
        if self._client is not None and self.connected:
            try:
                await self._client.publish(
                    self.config.topic("state"),
                    self._state("offline"),
                    qos=1,
                    retain=True,
                    timeout=2,
                )
            except aiomqtt.MqttError as exc:
                log.warning("could not publish offline state: %s", exc)
