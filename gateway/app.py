"""The gateway process: sources -> pipeline -> durable queue -> MQTT uplink.

``Gateway`` wires the parts from a validated ``Config`` and runs them under one
TaskGroup: one task per bus, the uplink, the status server. A bus hands each poll to the
durable queue and goes on polling; the poll is counted when its commit comes back.
``stop()`` (SIGTERM/SIGINT in ``polekit gateway run``) lets a bus that is in the middle of
a poll finish it and hand it over (a read the device answered is not thrown away), stops
the sources, commits everything handed over, publishes the retained offline state and
closes the file: nothing is left half-written.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from polekit.gateway.ble_commands import BleCommander
from polekit.gateway.ble_counters import BleCounterStore
from polekit.gateway.commands import CommandRouter, OtaCommand
from polekit.gateway.config import BleDeviceConfig, Config, DeviceConfig
from polekit.gateway.delivery import Delivery, QueueOpenError, open_deliveries
from polekit.gateway.ota.rollout import RolloutRunner
from polekit.gateway.ota.store import RolloutStore
from polekit.gateway.ota.transports import transports_for
from polekit.gateway.pipeline import encode_body
from polekit.gateway.platforms.base import Outgoing, PlatformCommand, Reading
from polekit.gateway.queue import MAX_UNCOMMITTED, DurableQueue, QueueWriteError
from polekit.gateway.sources.ble import BleSource
from polekit.gateway.sources.modbus_bus import DeviceNoResponse, ModbusBus
from polekit.gateway.status import StatusServer
from polekit.protocols.errors import ProtocolError
from polekit.protocols.modbus import Point

log = logging.getLogger("polekit.gateway")

STOP_GRACE_MAX_S = 5.0  # at most this long for the polls in progress at a stop to finish


class StartError(RuntimeError):
    """The gateway cannot start: something it must own is taken or out of reach (the
    queue's folder, the status port). The message says which, and what to do."""


class Latencies:
    """The last few thousand answer-to-commit times of polls: a read answered by its device
    and not yet committed is what a kill -9 or a power cut can lose, so this is the window
    (p50 and p99 on /health and /metrics)."""

    def __init__(self, keep: int = 4096) -> None:
        self._times: deque[float] = deque(maxlen=keep)

    def add(self, seconds: float) -> None:
        """One poll's answer-to-commit time."""
        self._times.append(seconds)

    def summary_ms(self) -> dict[str, float | None]:
        """p50, p99 and max of the kept times, in milliseconds (None before any poll)."""
        if not self._times:
            return {"p50": None, "p99": None, "max": None}
        ordered = sorted(self._times)

        def at(q: float) -> float:
            return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000, 2)

        return {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


class Gateway:
    """One gateway: owns its queue file, bus connections, broker session and status port."""

    def __init__(
        self,
        config: Config,
        queue: DurableQueue | None = None,
        max_uncommitted: int = MAX_UNCOMMITTED,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``queue`` replaces the one built from the config (tests: a slow disk);
        ``max_uncommitted`` bounds the polls handed to the queue and not yet on disk;
        ``wall_clock`` is the clock platform logins are signed with and renewed by (tests:
        a clock before 2024, or one moved to just before a login expires)."""
        self.config = config
        try:
            self.deliveries = open_deliveries(
                config, self._on_commands, queue, max_uncommitted, wall_clock
            )
        except QueueOpenError as exc:  # `polekit gateway check` says why, in full
            raise StartError(
                f"{exc}; check gateway.data_dir with `polekit gateway check`"
            ) from None
        # the first platform (SenML on [mqtt] unless configured otherwise): /health's
        # "mqtt" and "queue", and the counts of readings and commit latency
        self.primary = self.deliveries[0]
        self.queue = self.primary.queue
        self.uplink = self.primary.uplink
        self.buses: dict[str, ModbusBus] = {}
        for name, bus in config.buses.items():
            devices = [d for d in config.devices if d.bus == name]
            self.buses[name] = ModbusBus(bus, devices, self._on_poll, on_status=self._on_status)
        owners = {d.code: (d, self.buses[d.bus]) for d in config.devices}
        self.ble: BleSource | None = None
        self.ble_counters: BleCounterStore | None = None
        self.ble_commander: BleCommander | None = None
        self.resyncs = {"sent": 0, "failed": 0}  # resyncs of BLE nodes whose counter went back
        self._resync_tasks: set[asyncio.Task[None]] = set()
        ble_owners = {}
        if config.ble_devices:
            try:  # in the first platform's queue file, which the queue made private above
                self.ble_counters = BleCounterStore(self.primary.queue.path)
            except (OSError, sqlite3.Error) as exc:
                for d in self.deliveries:
                    d.queue.close()
                raise StartError(
                    f"cannot keep BLE counters in {config.queue_path}: {exc}; check "
                    "gateway.data_dir with `polekit gateway check`"
                ) from None
            self.ble = BleSource(
                config.ble,
                config.ble_devices,
                self._on_ble_readings,
                self._on_event,
                counters=self.ble_counters,
                on_behind=self._resync,
                on_status=self._on_status,
            )
            commander = BleCommander(config.ble, self.ble.last_counter)
            self.ble_commander = commander
            ble_owners = {d.code: (d, commander) for d in config.ble_devices}
        try:  # rollouts in the first platform's queue file, as the BLE counters
            self.ota_store = RolloutStore(self.primary.queue.path)
        except (OSError, sqlite3.Error) as exc:
            if self.ble_counters is not None:
                self.ble_counters.close()
            for d in self.deliveries:
                d.queue.close()
            raise StartError(
                f"cannot keep update rollouts in {self.primary.queue.path}: {exc}; check "
                "gateway.data_dir with `polekit gateway check`"
            ) from None
        self.ota = RolloutRunner(
            config.ota,
            self.ota_store,
            transports_for(config, self.buses),
            self._on_event,
            config.gateway_id,
            config.data_dir / "ota",
        )
        self.commands = CommandRouter(
            owners,
            self._on_result,
            ble_owners,
            limits=config.commands,
            encode=lambda body: encode_body(body, config.mqtt.format),
            ota=self._on_ota_command,
            gateway_code=config.gateway_id,
        )
        self.status = StatusServer(self.health, config.status.host, config.status.port)
        self.readings = 0
        self.invalid_values = 0  # NaN/infinite values dropped (a meter's "no value" float)
        self.events = 0
        self.pipeline_errors = 0
        self.queue_errors = 0  # messages the queue could not store (QueueWriteError)
        self._queue_failing = False
        self.commit_latency = Latencies()
        self.started = time.time()
        self._stopping: asyncio.Event | None = None

    def _stored(self, topic: str, outcome: BaseException | None) -> bool:
        # the queue's answer for one message: a message it refuses (its database failed
        # the group) is counted and logged once per episode; a pack that could not be
        # encoded fails alone. The producer (a bus, the BLE scanner) has gone on meanwhile
        if outcome is None:
            if self._queue_failing:
                log.warning("the queue stores messages again (%d lost)", self.queue_errors)
            self._queue_failing = False
            return True
        if isinstance(outcome, QueueWriteError):
            self.queue_errors += 1
            if not self._queue_failing:
                log.error("%s; counting the messages lost until it works again", outcome)
            self._queue_failing = True
        elif isinstance(outcome, (ProtocolError, ValueError, TypeError)):
            self.pipeline_errors += 1
            log.error("%s: message dropped: %s", topic, outcome)
        else:  # a programming error: loud, with its traceback
            log.error("%s: message dropped", topic, exc_info=outcome)
            self.pipeline_errors += 1
        return False

    async def _store(self, queue: DurableQueue, out: Outgoing) -> bool:
        # for producers that wait for the commit (events, command results)
        try:
            await queue.append(out.topic, out.payload, device=out.device)
        except (QueueWriteError, ProtocolError, ValueError, TypeError) as exc:
            return self._stored(out.topic, exc)
        return self._stored(out.topic, None)

    async def _hand_over(
        self,
        delivery: Delivery,
        out: Outgoing,
        readings: int = 0,
        answered: float | None = None,
    ) -> None:
        # a message goes to its platform's queue and its producer goes on at once (it
        # waits only while that queue holds max_uncommitted messages not yet on disk);
        # the primary platform's data commits count the readings
        topic = out.topic
        committed = await delivery.queue.submit(topic, out.payload, out.device)
        counted = delivery is self.primary and readings > 0

        def on_commit(fut: asyncio.Future[int]) -> None:
            if fut.cancelled():
                return
            if self._stored(topic, fut.exception()) and counted:
                self.readings += readings
                if answered is not None:
                    self.commit_latency.add(time.monotonic() - answered)

        committed.add_done_callback(on_commit)

    def _built(self, delivery: Delivery, what: str, build: Any, *args: Any) -> list[Outgoing]:
        # one platform's messages, built before queueing: one that cannot be built is
        # dropped for that platform alone, counted and logged
        try:
            out: list[Outgoing] = build(*args)
            return out
        except (ProtocolError, ValueError, TypeError) as exc:
            self.pipeline_errors += 1
            delivery.build_errors += 1
            log.error("%s: dropped for platform %s: %s", what, delivery.name, exc)
            return []

    async def _deliver(
        self, device_code: str, readings: list[Reading], t: float, answered: float | None
    ) -> None:
        what = f"device {device_code}"
        for d in self.deliveries:
            for out in self._built(d, what, d.adapter.readings, device_code, readings, t):
                await self._hand_over(d, out, len(readings), answered)

    async def _on_poll(
        self, device: DeviceConfig, values: list[tuple[Point, Any]], t: float
    ) -> None:
        answered = time.monotonic()  # the device's answer is in hand: the loss window opens
        readings = []
        for point, value in values:
            if isinstance(value, float) and not math.isfinite(value):
                self.invalid_values += 1  # a meter's "no value" float
                continue
            readings.append(Reading(point.name, value, point.unit))
        await self._deliver(device.code, readings, t, answered)

    async def _on_ble_readings(
        self, device_code: str, readings: list[tuple[str, Any, str | None]], t: float
    ) -> None:
        await self._deliver(device_code, [Reading(*r[:3]) for r in readings], t, None)

    async def _on_status(self, device_code: str, online: bool, t: float) -> None:
        what = f"device {device_code} {'online' if online else 'offline'}"
        for d in self.deliveries:
            for out in self._built(d, what, d.adapter.device_status, device_code, online, t):
                await self._hand_over(d, out)

    async def _on_event(self, device_code: str, body: dict[str, Any]) -> None:
        # events (an SOS press, a smoke alarm) go through the durable queues, encoded
        # before they are queued so a bad one fails alone; each waits for its commit
        self.events += 1
        t = body.get("t") if isinstance(body.get("t"), (int, float)) else time.time()
        for d in self.deliveries:
            for out in self._built(
                d, f"device {device_code} event", d.adapter.event, device_code, body, t
            ):
                await self._store(d.queue, out)

    async def _on_commands(self, delivery: Delivery, commands: list[PlatformCommand]) -> None:
        for cmd in commands:

            async def answer(result: dict[str, Any], cmd: PlatformCommand = cmd) -> None:
                await self._answer(delivery, cmd, result)

            await self.commands.handle(cmd.device, cmd.body, answer)

    async def _answer(
        self, delivery: Delivery, cmd: PlatformCommand, result: dict[str, Any]
    ) -> None:
        # a command's result goes back to the platform that sent it, queued like data;
        # a result the adapter cannot encode becomes an error result it can
        build = delivery.adapter.command_result
        try:
            messages = build(cmd.device, cmd.reply, result)
        except (ProtocolError, ValueError, TypeError) as exc:
            log.error("command to %s: result not encodable: %s", cmd.device, exc)
            done = "was applied" if result.get("ok") else "failed"
            error = {
                "id": result.get("id"),
                "ok": False,
                "error": f"the command {done} but its result cannot be encoded: {exc}",
            }
            messages = self._built(
                delivery, f"device {cmd.device} result", build, cmd.device, cmd.reply, error
            )
        for out in messages:
            await self._store(delivery.queue, out)

    async def _on_ota_command(self, device_code: str, command: OtaCommand) -> dict[str, Any]:
        # the platform's ota command: verified and queued (RolloutRefused says why not);
        # its progress and report follow as events
        rollout = await self.ota.start(
            command.bundle,
            command.devices if command.devices is not None else [device_code],
            command.batch_size,
            f"command {command.id}",
        )
        return {
            "rollout": rollout.id,
            "version": rollout.version,
            "devices": [d.device for d in rollout.devices],
            "stages": rollout.summary()["stages"],
        }

    def _resync(self, device: BleDeviceConfig, counter: int) -> None:
        # the BLE source saw a device's counter go back: tell it (over an authenticated
        # GATT write) the last counter accepted, so the node moves its epoch past it
        if self.ble_commander is None or device.bindkey is None:
            return
        task = asyncio.get_running_loop().create_task(self._send_resync(device, counter))
        self._resync_tasks.add(task)
        task.add_done_callback(self._resync_tasks.discard)

    async def _send_resync(self, device: BleDeviceConfig, counter: int) -> None:
        assert self.ble_commander is not None
        try:
            applied = await self.ble_commander.resync(device)
        except (DeviceNoResponse, ValueError) as exc:
            self.resyncs["failed"] += 1
            log.error(
                "%s: resync past counter %d failed: %s. A polekit node: bring it in range; "
                "another device: give it a new bind key to start its count afresh",
                device.code,
                counter,
                exc,
            )
            return
        self.resyncs["sent"] += 1
        log.warning("%s: resync sent: the node now counts from %s", device.code, applied)

    async def _on_result(self, device_code: str, payload: bytes) -> None:
        # a result no platform asked for (a command handled without an answer): the first
        # platform's queue, on the cmd-result topic
        topic = self.config.topic("cmd-result", device_code)
        await self._store(self.primary.queue, Outgoing(topic, payload))

    def health(self) -> dict[str, Any]:
        """A snapshot for /health, /metrics and ``polekit gateway status``."""
        devices = []
        for bus in self.buses.values():
            for st in bus.devices.values():
                devices.append(
                    {
                        "code": st.config.code,
                        "bus": bus.config.name,
                        "unit": st.config.unit,
                        "online": st.online,
                        "polls": st.polls,
                        "failures": st.failures,
                        "last_ok": st.last_ok,
                        "last_error": st.last_error,
                        "seq": self.queue.last_seq(st.config.code),
                    }
                )
        return {
            "gateway": self.config.gateway_id,
            "uptime_s": round(time.time() - self.started, 1),
            "readings": self.readings,
            "pipeline_errors": self.pipeline_errors,
            "mqtt": {
                "connected": self.uplink.connected,
                "url": self.uplink.shown_url,
                "published": self.uplink.published,
                "connects": self.uplink.connects,
                "last_error": self.uplink.last_error,
                "reconnect_s": self.uplink.reconnect_s,
            },
            "queue": {
                "depth": self.queue.depth,
                "bytes": self.queue.size_bytes,
                "dropped": self.queue.dropped,
                "max_bytes": self.queue.max_bytes,
                "write_errors": self.queue_errors,
                "disk_bytes": self.queue.disk_bytes(),
                "budget_bytes": self.queue.budget_bytes,
                "disk_full": self.queue.full,
                "uncommitted": self.queue.uncommitted,
                "max_uncommitted": self.queue.max_uncommitted,
                "commit_latency_ms": self.commit_latency.summary_ms(),
            },
            "buses": [
                {
                    "name": b.config.name,
                    "where": b.config.describe(),
                    "connected": b.connected,
                    "last_error": b.last_error,
                    "counters": vars(b.counters),
                    # while an update transfer runs on it: its devices' polling floor
                    "poll_floor_s": b.poll_floor_s or None,
                }
                for b in self.buses.values()
            ],
            "devices": devices
            + [
                {**row, "seq": self.queue.last_seq(row["code"])}
                for row in (self.ble.health() if self.ble else [])
            ],
            "ble": None
            if self.ble is None
            else {
                "scanning": self.ble.scanning,
                "where": self.config.ble.air or self.config.ble.adapter,
                "last_error": self.ble.last_error,
                "counters": vars(self.ble.counters),
                "resyncs": dict(self.resyncs),
            },
            "events": self.events,
            "commands": dict(vars(self.commands.counters)),
            "platforms": [d.health() for d in self.deliveries],
            "ota": self.ota.health(),
        }

    def stop(self) -> None:
        """Ask ``run()`` to shut down cleanly."""
        if self._stopping is not None:
            self._stopping.set()

    async def run(self) -> None:
        """Run until ``stop()``; then shut down in order and close the queue."""
        self._stopping = asyncio.Event()
        try:
            if self.config.status.enabled:
                await self._start_status()
            async with asyncio.TaskGroup() as tg:
                buses = {n: tg.create_task(b.run(), name=f"bus-{n}") for n, b in self.buses.items()}
                ble = None if self.ble is None else tg.create_task(self.ble.run(), name="ble")
                uplinks = [
                    tg.create_task(d.uplink.run(), name=f"uplink-{d.name}") for d in self.deliveries
                ]
                # a rollout stopped here is taken up again from the database at the next run
                ota = tg.create_task(self.ota.run(), name="ota")
                await self._stopping.wait()
                log.info(
                    "stopping: %d messages queued; answer-to-commit ms %s",
                    self.queue.depth,
                    self.commit_latency.summary_ms(),
                )
                others = [ota, *([ble] if ble else []), *self._resync_tasks]
                for task in others:
                    task.cancel()
                await self._stop_buses(buses)
                await asyncio.gather(*buses.values(), *others, return_exceptions=True)
                for d in self.deliveries:
                    await d.queue.drain()  # every poll handed over is on disk
                for d in self.deliveries:
                    await d.uplink.say_offline()
                for task in uplinks:
                    task.cancel()
        finally:
            await self.status.close()
            for bus in self.buses.values():
                bus.close()
            if self.ble_counters is not None:
                self.ble_counters.close()
            self.ota_store.close()
            await self._close_queues()
            log.info("stopped")

    async def _close_queues(self) -> None:
        # each queue commits what it was handed, then closes, whatever the others do
        for d in self.deliveries:
            try:
                await d.queue.drain()
            finally:
                d.queue.close()

    async def _stop_buses(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        # A bus in the middle of a poll finishes it and hands it over (every connection of
        # it: a TCP bus may have several polls in flight); no bus starts a new one. A poll
        # that does not finish within the grace (a device that stopped answering) is given up.
        for bus in self.buses.values():
            bus.closing = True
        grace = min(
            max((b.config.timeout_s * 2 for b in self.buses.values()), default=0.0),
            STOP_GRACE_MAX_S,
        )
        deadline = time.monotonic() + grace
        waiting = dict(tasks)
        while waiting:
            for name in list(waiting):
                if not self.buses[name].in_flight:
                    waiting.pop(name).cancel()
            if not waiting:
                break
            if time.monotonic() >= deadline:
                log.warning(
                    "stopping: a poll on bus %s did not finish within %.1f s; given up",
                    ", ".join(waiting),
                    grace,
                )
                for task in waiting.values():
                    task.cancel()
                break
            await asyncio.sleep(0.002)

    async def _start_status(self) -> None:
        try:
            await self.status.start()
        except OSError as exc:
            st = self.config.status
            raise StartError(
                f"[status] cannot listen on {st.host}:{st.port}: {os.strerror(exc.errno or 0)}; "
                "is another gateway running? Set [status] port to a free port, or enabled = false"
            ) from None

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the gateway cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
