"""Delivery to the configured platforms: one adapter, one durable queue and one uplink
per platform, so one platform's outage holds back no other.

The gateway hands every poll, event and device status to each ``Delivery``; the adapter
builds the platform's messages at once (a payload that cannot be built fails alone, for
that platform alone) and they go to that platform's queue. A downlink command is
answered on the platform it came from.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polekit.gateway.config import Config
from polekit.gateway.hj212_uplink import Hj212Uplink
from polekit.gateway.platforms import adapter_class
from polekit.gateway.platforms.base import (
    Adapter,
    AdapterContext,
    DeviceInfo,
    PlatformConfig,
    PointInfo,
    model_point,
)
from polekit.gateway.platforms.limiter import Limiters
from polekit.gateway.platforms.settings import parse_platforms
from polekit.gateway.queue import DurableQueue
from polekit.gateway.uplink import CommandSink, MqttUplink

log = logging.getLogger("polekit.gateway.delivery")


def platforms_of(config: Config) -> tuple[PlatformConfig, ...]:
    """The config's platforms; a Config built without them (tests, tools) has SenML on
    [mqtt], as ``parse_config`` gives when there is no [platform]."""
    if config.platforms:
        return config.platforms
    problems: list[str] = []
    out = parse_platforms(None, config.mqtt, config.path.parent, problems.append)
    assert not problems, problems
    return out


def devices_of(config: Config, secondary: bool = False) -> tuple[DeviceInfo, ...]:
    """Every configured device as the adapters see it."""
    out = []
    for d in config.devices:
        points = []
        for p in d.points:
            unit, boolean = model_point(p.name, p.unit, secondary)
            points.append(PointInfo(p.name, unit, boolean or p.dtype == "bool", p.writable))
        out.append(DeviceInfo(d.code, "modbus", d.map_name, tuple(points)))
    for b in config.ble_devices:
        out.append(DeviceInfo(b.code, "ble", "bthome"))
    return tuple(out)


def make_adapter(
    config: Config, platform: PlatformConfig, wall_clock: Callable[[], float] = time.time
) -> Adapter:
    """The adapter of ``platform``, built with its context (its state folder is
    ``data_dir/platform-{name}``) and the wall clock its logins are signed with."""
    cls = adapter_class(platform.kind)
    ctx = AdapterContext(
        platform=platform,
        gateway_id=config.gateway_id,
        devices=devices_of(config, cls.SECONDARY_UNITS),
        state_dir=config.data_dir / f"platform-{platform.name}",
        clock=wall_clock,
    )
    return cls(ctx)


class Delivery:
    """One platform: its adapter, its queue (``data_dir/{queue_file}``) and its uplink.
    Counters are this platform's: what its adapter could not build. ``wall_clock``
    signs logins and decides when they are renewed (tests pass one that they move)."""

    def __init__(
        self,
        config: Config,
        platform: PlatformConfig,
        limiters: Limiters,
        on_commands: CommandSink,
        queue: DurableQueue | None,
        max_uncommitted: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.platform = platform
        self.name = platform.name
        self.adapter = make_adapter(config, platform, wall_clock)
        path = self.queue_path(config, platform)
        self.queue = (
            queue
            if queue is not None
            else DurableQueue(path, config.queue_max_bytes, max_uncommitted=max_uncommitted)
        )
        self.uplink: MqttUplink | Hj212Uplink
        if self.adapter.TRANSPORT == "hj212":  # HJ 212 packets on plain TCP
            s = platform.settings
            limiter = limiters.for_broker(s.host, s.port, platform.max_connects_per_min)
            self.uplink = Hj212Uplink(self.adapter, self.queue, on_commands, limiter)
        else:
            broker = platform.broker
            limiter = limiters.for_broker(broker.host, broker.port, platform.max_connects_per_min)
            self.uplink = MqttUplink(
                self.adapter, self.queue, on_commands, limiter, wall_clock=wall_clock
            )
        self.build_errors = 0  # messages its adapter could not build

    @staticmethod
    def queue_path(config: Config, platform: PlatformConfig) -> Path:
        return config.data_dir / platform.queue_file

    def health(self) -> dict[str, Any]:
        up = self.uplink
        return {
            "name": self.name,
            "kind": self.platform.kind,
            "url": up.shown_url,
            "connected": up.connected,
            "published": up.published,
            "connects": up.connects,
            "last_error": up.last_error,
            "reconnect_s": up.reconnect_s,
            "login_expires_at": up.expires_at,
            "renewals": up.renewals,
            "clock_refusals": up.clock_refusals,
            "downlink_ignored": up.ignored,
            "build_errors": self.build_errors,
            "queue_depth": self.queue.depth,
            "queue_dropped": self.queue.dropped,
        }


class QueueOpenError(Exception):
    """A platform's queue file could not be opened: ``path`` and the reason."""

    def __init__(self, path: Path, reason: BaseException) -> None:
        super().__init__(f"cannot open the queue {path}: {reason}")
        self.path = path


def open_deliveries(
    config: Config,
    on_commands: Any,
    first_queue: DurableQueue | None,
    max_uncommitted: int,
    wall_clock: Callable[[], float] = time.time,
) -> list[Delivery]:
    """A ``Delivery`` per platform; ``on_commands(delivery)`` makes each one's command
    sink. ``QueueOpenError`` when a queue cannot be opened (those opened before it are
    closed)."""
    limiters = Limiters()
    out: list[Delivery] = []
    try:
        for i, platform in enumerate(platforms_of(config)):
            holder: list[Delivery] = []

            async def sink(commands: Any, holder: list[Delivery] = holder) -> None:
                await on_commands(holder[0], commands)

            try:
                d = Delivery(
                    config,
                    platform,
                    limiters,
                    sink,
                    first_queue if i == 0 else None,
                    max_uncommitted,
                    wall_clock,
                )
            except (OSError, sqlite3.Error) as exc:
                for done in out:
                    done.queue.close()
                raise QueueOpenError(Delivery.queue_path(config, platform), exc) from None
            holder.append(d)
            out.append(d)
    except QueueOpenError:
        raise
    return out
