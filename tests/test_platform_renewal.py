"""Signed logins over time, end to end: pymodbus pole devices, the gateway in process with
a wall clock the test moves (``platkit.WallClock``), a real mosquitto behind a relay that
records each CONNECT (``mqtt_recorder.ConnectTap``: mosquitto cannot show a password).

- OneNET: a token whose ``et`` is a few seconds away is renewed before it: a second
  CONNECT with a new token, made before the first expired, and the data goes on with no
  sequence number missing or repeated.
- IoTDA with the timestamp check on (client id ``..._0_1_YYYYMMDDHH``): the login made in
  one hour is renewed once the next hour starts, with that hour's stamp; never again and
  again as the hour runs out.
- A clock before 2024 (no NTP yet): the gateway does not connect, says why once (log and
  /health), and connects as soon as the clock is right, losing nothing meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from platkit import Bench, WallClock, platform_bench
from test_platform_clouds_e2e import KINDS, Post

from polekit.gateway.app import Gateway
from polekit.gateway.platforms.base import CLOCK_FLOOR_S
from polekit.hil.broker import LocalBroker

from gwkit import Collector, gateway_running, run, until
from mqtt_recorder import ConnectTap, TappedConnect

HOUR = 3600


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path,
    name: str,
    table: dict[str, Any],
    broker: LocalBroker,
    clock: WallClock,
    clock_retry_s: float | None = None,
) -> AsyncIterator[tuple[Gateway, Collector, Bench]]:
    """The gateway with ``clock``, and the platform's side subscribed to its topics (``$``
    topics: ``#`` does not match them) before the gateway starts, so it sees every post.
    ``clock_retry_s``: how often an uplink refused for its clock looks at it again."""
    async with platform_bench(
        tmp_path, table, broker=broker, wall_clock=clock, run_gateway=False
    ) as bench:
        assert bench.gateway is not None
        if clock_retry_s is not None:
            bench.gateway.deliveries[0].uplink.clock_retry_s = clock_retry_s
        filt = KINDS[name].topic_filter
        async with Collector(broker.host, broker.port, topic_filter=filt) as platform:
            async with gateway_running(bench.gateway, broker.host, broker.port):
                yield bench.gateway, platform, bench


def _posts(sub: Collector, name: str) -> list[Post]:
    kind = KINDS[name]
    return [kind.read(m) for m in sub.messages if m.topic == kind.data_topic]


def _health(gw: Gateway) -> dict[str, Any]:
    platform: dict[str, Any] = gw.health()["platforms"][0]
    return platform


def _token_et(c: TappedConnect) -> int:
    fields = dict(kv.split("=", 1) for kv in (c.connect.password or "").split("&"))
    return int(fields["et"])


def _assert_no_gap_no_repeat(posts: list[Post]) -> None:
    seqs = [p.seq for p in posts]
    assert len(seqs) == len(set(seqs)), f"sent twice: {seqs}"
    assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"gaps in {sorted(seqs)}"


def test_onenet_token_is_renewed_before_it_expires_losing_nothing(tmp_path: Path) -> None:
    clock = WallClock()

    async def scenario() -> None:
        broker = LocalBroker(kind="mosquitto").start()
        try:
            async with ConnectTap(broker.host, broker.port, clock) as tap:
                table = {**KINDS["onenet"].table, "url": tap.url, "token_lifetime": HOUR}
                async with _running(tmp_path, "onenet", table, broker, clock) as (gw, sub, bench):
                    await until(lambda: len(_posts(sub, "onenet")) >= 3, 15, "first posts")
                    [first] = tap.connects
                    et = _token_et(first)
                    assert et == pytest.approx(first.at_s + HOUR, abs=2)
                    clock.set(et - 5)  # the token runs out in 5 s
                    await until(lambda: len(tap.connects) >= 2, 10, "a renewed login")
                    n = len(_posts(sub, "onenet"))
                    await until(lambda: len(_posts(sub, "onenet")) >= n + 3, 10, "posts after")
                    health = _health(gw)
                gw_posts = _posts(sub, "onenet")
        finally:
            broker.stop()
        second = tap.connects[1]
        assert second.connect.client_id == first.connect.client_id == "gw01"
        assert second.connect.password != first.connect.password
        assert second.at_s < et, "renewed only after the token had expired"
        assert _token_et(second) > et
        assert len(tap.connects) == 2, [c.connect.password for c in tap.connects]
        assert health["renewals"] == 1 and health["queue_depth"] <= 5
        _assert_no_gap_no_repeat(gw_posts)

    run(scenario(), timeout_s=60)


def test_iotda_checked_timestamp_login_is_renewed_at_the_hour_once(tmp_path: Path) -> None:
    # the gateway starts 6 s before an hour ends (UTC), by its wall clock
    clock = WallClock()
    hour_end = (int(clock()) // HOUR + 2) * HOUR
    clock.set(hour_end - 6)

    def stamp(t: float) -> str:
        return time.strftime("%Y%m%d%H", time.gmtime(t))

    async def scenario() -> None:
        broker = LocalBroker(kind="mosquitto").start()
        try:
            async with ConnectTap(broker.host, broker.port, clock) as tap:
                table = {**KINDS["iotda"].table, "url": tap.url, "check_timestamp": True}
                async with _running(tmp_path, "iotda", table, broker, clock) as (gw, sub, _):
                    await until(lambda: clock() >= hour_end + 3, 15, "the hour to turn")
                    await until(lambda: len(tap.connects) >= 2, 5, "the next hour's login")
                    n = len(_posts(sub, "iotda"))
                    await until(lambda: len(_posts(sub, "iotda")) >= n + 3, 10, "posts after")
                    health = _health(gw)
                gw_posts = _posts(sub, "iotda")
        finally:
            broker.stop()
        ids = [c.connect.client_id for c in tap.connects]
        gw = KINDS["iotda"].table["device_id"]
        assert ids == [f"{gw}_0_1_{stamp(hour_end - 1)}", f"{gw}_0_1_{stamp(hour_end)}"], ids
        first, second = tap.connects
        assert first.at_s < hour_end <= second.at_s
        assert first.connect.password != second.connect.password
        assert health["renewals"] == 1
        _assert_no_gap_no_repeat(gw_posts)

    run(scenario(), timeout_s=60)


def test_unset_clock_refuses_signed_login_once_then_connects_when_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polekit.gateway.mqtt")
    clock = WallClock()
    clock.set(CLOCK_FLOOR_S - 400 * 86400)  # a board that booted without NTP: late 2022

    async def scenario() -> None:
        broker = LocalBroker(kind="mosquitto").start()
        try:
            async with ConnectTap(broker.host, broker.port, clock) as tap:
                table = {**KINDS["onenet"].table, "url": tap.url}
                async with _running(tmp_path, "onenet", table, broker, clock, 0.05) as (gw, sub, _):
                    uplink = gw.deliveries[0].uplink
                    await until(lambda: uplink.clock_refusals >= 10, 10, "clock checks")
                    await until(lambda: gw.queue.depth >= 3, 10, "polls queued meanwhile")
                    refused = _health(gw)
                    assert not tap.connects and not _posts(sub, "onenet")
                    clock.offset_s = 0.0  # NTP came
                    await until(lambda: len(_posts(sub, "onenet")) >= 5, 15, "posts")
                    assert _health(gw)["last_error"] is None
                    gw_posts = _posts(sub, "onenet")
        finally:
            broker.stop()
        assert refused["connected"] is False
        problem = refused["last_error"]
        assert "2022-" in problem and "NTP" in problem and "\n" not in problem
        said = [r for r in caplog.records if "not connecting" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert said[0].levelno == logging.WARNING and problem in said[0].getMessage()
        assert any("clock is set now" in r.getMessage() for r in caplog.records)
        assert len(tap.connects) == 1
        _assert_no_gap_no_repeat(gw_posts)

    run(scenario(), timeout_s=60)
