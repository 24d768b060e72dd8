"""The command path under hostile input, with real parts: a real mosquitto broker, a real
pymodbus device on loopback TCP, the real gateway. Every command gets a result, every bad
one is counted, and nothing a command carries stops the gateway polling."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polekit.gateway.app import Gateway
from polekit.gateway.commands import (
    Command,
    CommandError,
    PayloadTooLargeError,
    RateLimit,
    decode_command,
    plan_writes,
)
from polekit.gateway.config import ConfigError, parse_config
from polekit.gateway.pipeline import encode_body
from polekit.hil.broker import LocalBroker, free_port
from polekit.hil.fieldbus import SimulatedBus
from polekit.protocols import identity

from gwkit import METER, Collector, gateway_running, meter_gateway, run, start_meter, until


@pytest.fixture
def broker():  # type: ignore[no-untyped-def]
    with LocalBroker() as b:
        yield b


def results_of(sub: Collector, device: str, fmt: str) -> list[dict[str, Any]]:
    """Decoded command results for ``device``, in arrival order (cbor2/json as references)."""
    decode = json.loads if fmt == "senml+json" else cbor2.loads
    return [decode(m.payload) for m in sub.on(f"/cmd-result/{device}")]


def deep_id(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("fmt", "poison", "why"),
    [
        # issue 13 item 1: an id 40 lists deep (deeper than CBOR's nesting limit) ...
        (
            "senml+cbor",
            json.dumps({"id": deep_id(40), "set": {"lamp_level": 45}}).encode(),
            "nests deeper than 32",
        ),
        # ... and a byte-string id, which JSON cannot carry
        (
            "senml+json",
            cbor2.dumps({"id": b"\x00\x01", "set": {"lamp_level": 45}}),
            "id must be text",
        ),
    ],
    ids=["deep-id-cbor-results", "bytes-id-json-results"],
)
def test_a_command_whose_id_cannot_be_encoded_does_not_stop_polling(
    broker: LocalBroker, tmp_path: Path, fmt: str, poison: bytes, why: str
) -> None:
    async def scenario() -> None:
        port = free_port()
        meter = await start_meter(port)
        gw = meter_gateway(tmp_path, broker.url, port, poll_s=0.05, format=fmt)
        async with gateway_running(gw, broker.host, broker.port) as sub:
            await until(lambda: gw.uplink.connected, what="the broker connection")
            await until(lambda: gw.queue.last_seq(METER) >= 3, what="the first polls")
            topic = gw.config.topic("cmd", METER)
            sent = 40
            for i in range(sent):
                await sub.publish(topic, poison)
                # a poll commits every 50 ms: results and packs share group commits. The
                # deadline only guards against a hang (a stuck writer never answers): a
                # loaded machine takes seconds for what needs milliseconds
                await until(
                    lambda i=i: len(results_of(sub, METER, fmt)) > i,
                    timeout_s=20,
                    what=f"the result of bad command {i + 1}",
                )
            after = gw.queue.last_seq(METER)
            await until(
                lambda: len(sub.packs(METER, fmt)) >= after + 10,
                timeout_s=10,
                what="polls to keep arriving after the bad commands",
            )
            # a good command after them still works
            await sub.publish(topic, b'{"id": "after", "set": {"voltage": 1}}')
            await until(
                lambda: any(r.get("id") == "after" for r in results_of(sub, METER, fmt)),
                what="the result of a later command",
            )
            health = gw.health()
        await meter.stop()
        results = results_of(sub, METER, fmt)
        bad = results[:sent]
        assert all(r["ok"] is False and r["id"] is None for r in bad), bad[:2]
        assert all(why in r["error"] for r in bad), bad[0]
        assert "read-only" in results[-1]["error"]
        assert health["commands"]["handled"] == sent + 1
        assert health["commands"]["failed"] == sent + 1
        assert health["commands"]["malformed"] == sent
        assert all(d["online"] for d in health["devices"])

    run(scenario(), timeout_s=90)


# A device with writable points of each kind, no range on most of them (the cases that
# escaped as OverflowError), served by pymodbus and configured as inline points.
POINTS = [
    {"name": "level", "address": 0, "type": "u16", "writable": True},
    {"name": "setpoint", "address": 2, "type": "f32", "writable": True},
    {"name": "limit", "address": 4, "type": "f32", "writable": True, "min": 0, "max": 50},
    {"name": "offset", "address": 6, "type": "i16", "scale": 0.1, "writable": True},
    {"name": "relay", "address": 0, "table": "coil", "type": "bool", "writable": True},
    {"name": "reading", "address": 0, "table": "input", "type": "u16"},
]
DEV_A = identity.make("371600", "LM", 1)
DEV_B = identity.make("371600", "LM", 2)


def device_gateway(tmp_path: Path, broker: LocalBroker, port: int, **commands: Any) -> Gateway:
    """A gateway with devices DEV_A (unit 1) and DEV_B (unit 2) of POINTS on
    127.0.0.1:port; ``commands`` is its [commands] table."""
    raw: dict[str, Any] = {
        "gateway": {"id": "gw-cmd", "data_dir": str(tmp_path)},
        "mqtt": {"url": broker.url, "format": "senml+json"},
        "bus": [{"name": "ctl", "type": "tcp", "host": "127.0.0.1", "port": port}],
        "device": [
            {"code": code, "bus": "ctl", "unit": unit, "point": POINTS, "poll_interval": 0.2}
            for code, unit in ((DEV_A, 1), (DEV_B, 2))
        ],
        "status": {"port": 0},
    }
    if commands:
        raw["commands"] = commands
    return Gateway(parse_config(raw, tmp_path / "gateway.toml"))


async def start_devices(gw: Gateway, port: int) -> SimulatedBus:
    points = gw.config.devices[0].points  # the same map the gateway was configured with
    return await SimulatedBus({1: points, 2: points}, tcp=("127.0.0.1", port)).start()


async def command(
    sub: Collector, gw: Gateway, device: str, payload: bytes, n_before: int
) -> dict[str, Any]:
    """Publish one command and return its result (the ``n_before``-th result onwards)."""
    await sub.publish(gw.config.topic("cmd", device), payload)
    await until(
        lambda: len(results_of(sub, device, "senml+json")) > n_before,
        timeout_s=10,
        what=f"the result of {payload[:60]!r}",
    )
    return results_of(sub, device, "senml+json")[n_before]


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def test_malformed_commands_get_error_results_are_counted_and_write_nothing(
    broker: LocalBroker, tmp_path: Path
) -> None:
    # issue 13 item 8
    async def scenario() -> None:
        port = free_port()
        gw = device_gateway(tmp_path, broker, port, rate=1000, burst=1000)
        sim = await start_devices(gw, port)
        bad = [
            (b'{"id": 1, "set": {"level": Infinity}}', 1, "not a finite number"),
            (b'{"id": 2, "set": {"level": 1e400}}', 2, "not a finite number"),
            (b'{"id": 3, "set": {"setpoint": 1e39}}', 3, "does not fit a f32 register"),
            (b'{"id": 4, "set": {"setpoint": NaN}}', 4, "not a finite number"),
            (b'{"id": 5, "set": {"limit": NaN}}', 5, "not a finite number"),
            (cbor2.dumps({"id": 6, "set": {"limit": float("nan")}}), 6, "not a finite number"),
            (b'{"id": 7, "set": {"level": 1' + b"0" * 400 + b"}}", 7, "does not fit a u16"),
            (b'{"id": 8, "set": {"level": 1' + b"0" * 5000 + b"}}", None, "not valid JSON"),
            # 30,000 deep fits the size limit and would overflow json's recursion ...
            (b'{"id": 9, "set": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", None, "deeper"),
            # ... 100,000 deep is over the size limit, never parsed
            (b'{"id": 9, "set": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "65536"),
            (b'{"id": 10, "set": {"relay": 2}}', 10, "true/false"),
            (b'{"id": 11, "set": {"level": "high"}}', 11, "needs a number"),
            (b'{"id": 12, "set": {"level": true}}', 12, "needs a number"),
            (b'{"id": 13, "set": {"limit": 51}}', 13, "outside 0..50"),
            (b'{"id": 14, "set": {"reading": 1}}', 14, "read-only"),
            (b'{"id": [14], "set": {"level": 1}}', None, "id must be"),
            (b'{"id": "' + b"x" * 10_000_000 + b'", "set": {"level": 1}}', None, "65536"),
            (b'{"id": 17, "set": {}}', 17, "must be a map"),
            (b"\xff\x00 not a command", None, "neither"),
        ]
        async with gateway_running(gw, broker.host, broker.port) as sub:
            await until(lambda: gw.uplink.connected, what="the broker connection")
            for i, (payload, expect_id, why) in enumerate(bad):
                result = await command(sub, gw, DEV_A, payload, i)
                assert result["ok"] is False, (payload[:60], result)
                assert result["id"] == expect_id, (payload[:60], result)
                assert why in result["error"], (payload[:60], result)
            raw = [m.payload for m in sub.on(f"/cmd-result/{DEV_A}")]
            assert max(len(r) for r in raw) < 1000  # a 10 MB id is not echoed
            for name in ("level", "setpoint", "limit", "offset", "relay"):
                assert await sim.get(1, name) in (0, False), name  # nothing was written
            assert gw.buses["ctl"].counters.writes == 0
            health = json.loads(await asyncio.to_thread(http_get, gw.status.port, "/health"))
            metrics = await asyncio.to_thread(http_get, gw.status.port, "/metrics")
            polling = gw.queue.last_seq(DEV_A)
            await until(lambda: gw.queue.last_seq(DEV_A) > polling + 2, what="polls go on")
        await sim.stop()
        n = len(bad)
        assert health["commands"]["handled"] == n and health["commands"]["failed"] == n
        assert health["commands"]["too_large"] == 2
        assert health["commands"]["malformed"] == 11  # refused by decode_command
        assert f"polekit_commands_failed_total {n}\n" in metrics
        assert 'polekit_commands_rejected_total{reason="too_large"} 2\n' in metrics
        assert 'polekit_commands_rejected_total{reason="malformed"} 11\n' in metrics
        # the whole 10 MB never reached the queue file
        assert sum(f.stat().st_size for f in tmp_path.glob("queue.sqlite3*")) < 5_000_000

    run(scenario(), timeout_s=90)


def test_results_say_the_value_the_register_holds(broker: LocalBroker, tmp_path: Path) -> None:
    # issue 13 item 8: 40.7 written to an integer register is 41, and the result says so
    async def scenario() -> None:
        port = free_port()
        gw = device_gateway(tmp_path, broker, port)
        sim = await start_devices(gw, port)
        async with gateway_running(gw, broker.host, broker.port) as sub:
            await until(lambda: gw.uplink.connected, what="the broker connection")
            cmd = {"id": "w1", "set": {"level": 40.7, "setpoint": 40.7, "offset": 1.26}}
            r1 = await command(sub, gw, DEV_A, json.dumps(cmd).encode(), 0)
            cmd2 = {"id": "w2", "set": {"relay": 1, "limit": 12.5, "level": 7}}
            r2 = await command(sub, gw, DEV_A, cbor2.dumps(cmd2), 1)
            held = {n: await sim.get(1, n) for n in ("level", "setpoint", "offset", "relay")}
        await sim.stop()
        assert r1 == {"id": "w1", "ok": True, "set": {"level": 41, "setpoint": 40.7, "offset": 1.3}}
        assert r2 == {"id": "w2", "ok": True, "set": {"relay": True, "limit": 12.5, "level": 7}}
        assert held["setpoint"] == pytest.approx(40.7, abs=1e-5)
        assert held["offset"] == 1.3 and held["relay"] is True and held["level"] == 7

    run(scenario(), timeout_s=60)


def test_a_command_flood_is_rate_limited_per_device(broker: LocalBroker, tmp_path: Path) -> None:
    # issue 13 item 12: the default limit (5/s, burst 10) per device, answered and counted
    async def scenario() -> None:
        port = free_port()
        gw = device_gateway(tmp_path, broker, port)
        sim = await start_devices(gw, port)
        flood = 60
        async with gateway_running(gw, broker.host, broker.port) as sub:
            await until(lambda: gw.uplink.connected, what="the broker connection")
            topic = gw.config.topic("cmd", DEV_A)
            started = time.monotonic()
            for i in range(flood):
                await sub.publish(topic, b'{"id": %d, "set": {"level": %d}}' % (i, i))
            await until(
                lambda: len(results_of(sub, DEV_A, "senml+json")) == flood,
                timeout_s=20,
                what="a result for every command of the flood",
            )
            elapsed = time.monotonic() - started
            # another device is not held back by the flood
            other = await command(sub, gw, DEV_B, b'{"id": "b", "set": {"level": 3}}', 0)
            # and the flooded one takes commands again once its bucket refills
            n = flood
            while True:
                again = await command(sub, gw, DEV_A, b'{"id": "again", "set": {"level": 99}}', n)
                n += 1
                if again["ok"] or time.monotonic() - started > 15:
                    break
                await asyncio.sleep(0.1)
            health = gw.health()
            writes = gw.buses["ctl"].counters.writes
            level = await sim.get(1, "level")
        await sim.stop()
        results = results_of(sub, DEV_A, "senml+json")[:flood]
        applied = [r for r in results if r["ok"]]
        limited = [r for r in results if not r["ok"]]
        assert 10 <= len(applied) <= 10 + 5 * elapsed + 1, (len(applied), elapsed)
        assert len(limited) >= flood - 10 - 5 * elapsed - 1
        assert all("rate limit" in r["error"] for r in limited), limited[0]
        assert health["commands"]["rate_limited"] == len(limited) + (n - flood - 1)
        assert other["ok"] and again["ok"] and level == 99
        assert writes == len(applied) + 2  # only the applied commands reached the devices

    run(scenario(), timeout_s=60)


# ---- the pure parts: decode_command (the fuzz target of the command path), plan_writes,
# the rate limit, the config keys. Payloads are made by json and cbor2, not by us.

JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _payloads() -> st.SearchStrategy[bytes]:
    body = st.fixed_dictionaries(
        {}, optional={"id": JSONISH, "set": st.dictionaries(st.text(max_size=12), JSONISH)}
    )
    as_json = body.map(lambda b: json.dumps(b, default=repr).encode())
    return st.binary(max_size=200) | body.map(cbor2.dumps) | as_json


@settings(max_examples=400, deadline=None)
@given(_payloads())
def test_decode_command_raises_only_command_error_and_its_results_always_encode(
    payload: bytes,
) -> None:
    # issue 13 item 1: whatever a command carries, its result (ok or not) can be encoded
    try:
        command = decode_command(payload)
    except CommandError as exc:
        cmd_id, body = exc.command_id, {"id": exc.command_id, "ok": False, "error": str(exc)}
    else:
        assert command.changes and all(
            isinstance(v, bool | int) or math.isfinite(v) for v in command.changes.values()
        )
        cmd_id, body = command.id, {"id": command.id, "ok": True, "set": command.changes}
    assert cmd_id is None or isinstance(cmd_id, str | int)
    assert json.loads(encode_body(body, "senml+json"))["id"] == cmd_id
    assert cbor2.loads(encode_body(body, "senml+cbor"))["id"] == cmd_id


def test_decode_command_reads_json_and_cbor_and_says_what_is_wrong() -> None:
    good = {"id": "a-1", "set": {"lamp_level": 40, "relay": True, "limit": 2.5}}
    expected = Command("a-1", {"lamp_level": 40, "relay": True, "limit": 2.5})
    assert decode_command(json.dumps(good).encode()) == expected
    assert decode_command(b"  \n" + json.dumps(good).encode()) == expected
    assert decode_command(cbor2.dumps(good)) == expected
    assert decode_command(b'{"set": {"x": 1}}') == Command(None, {"x": 1})
    cases = [
        (b'{"id": 1, "set": {"x": -Infinity}}', 1, "x: -inf is not a finite number"),
        (cbor2.dumps({"id": 2, "set": {"x": float("inf")}}), 2, "not a finite number"),
        (b'{"id": 1.5, "set": {"x": 1}}', None, "id must be text"),
        (b'{"id": true, "set": {"x": 1}}', None, "id must be text"),
        (b'{"id": 9223372036854775808, "set": {"x": 1}}', None, "64-bit integer"),
        (b'{"id": "\\ud800", "set": {"x": 1}}', None, "id must be text"),
        (json.dumps({"id": "y" * 129, "set": {"x": 1}}).encode(), None, "128 characters"),
        (cbor2.dumps({"id": 3, "set": {7: 1}}), 3, "point names are text"),
        (cbor2.dumps({"id": 4, "set": {"x": [1]}}), 4, "needs a number"),
        (cbor2.dumps([1, 2]), None, "must be a map"),
        (b'{"id": 5, "set": [1]}', 5, "must be a map"),
        (b'{"id": 6 "set": {}}', None, "not valid JSON"),
        (b"{\xff}", None, "UTF-8"),
        (b"", None, "neither"),
    ]
    for payload, cmd_id, why in cases:
        with pytest.raises(CommandError) as err:
            decode_command(payload)
        assert why in str(err.value) and err.value.command_id == cmd_id, payload
    assert decode_command(json.dumps({"id": "y" * 128, "set": {"x": 1}}).encode()).id == "y" * 128
    with pytest.raises(PayloadTooLargeError, match="over the 100-byte limit"):
        decode_command(b'{"set": {"x": 1}, "pad": "' + b"." * 100 + b'"}', max_bytes=100)


def test_plan_writes_reports_the_value_each_register_will_hold() -> None:
    config = parse_config(
        {
            "gateway": {"id": "g"},
            "mqtt": {},
            "bus": [{"name": "b", "type": "tcp", "host": "127.0.0.1"}],
            "device": [{"code": DEV_A, "bus": "b", "point": POINTS}],
        }
    )
    points = config.devices[0].points
    plan = plan_writes(points, {"level": 40.7, "setpoint": 0.1, "offset": -0.04, "relay": 0})
    assert {w.point.name: w.written for w in plan} == {
        "level": 41,
        "setpoint": 0.1,  # the f32 nearest 0.1 is 0.10000000149011612: said as 0.1
        "offset": 0.0,
        "relay": False,
    }
    for changes, why in (
        ({"setpoint": 3.5e38}, "does not fit a f32 register"),
        ({"level": 2**70}, "does not fit a u16 register"),
        ({"level": 10**400}, "does not fit a u16 register"),
        ({"setpoint": 10**5000}, "an integer of 16610 bits does not fit a f32 register"),
        ({"level": -1}, "does not fit a u16 register"),
        ({"limit": float("nan")}, "not a finite number"),
        ({"nope": 1}, "no point nope; this device has: level, setpoint"),
    ):
        with pytest.raises(ValueError, match=why):
            plan_writes(points, changes)


def test_rate_limit_is_a_token_bucket_per_key() -> None:
    now = [100.0]
    limit = RateLimit(rate_per_s=5, burst=10, clock=lambda: now[0])
    assert [limit.allow("a") for _ in range(11)] == [True] * 10 + [False]
    assert limit.allow("b")  # another device has its own bucket
    now[0] += 0.19
    assert not limit.allow("a")  # 0.95 of a token
    now[0] += 0.02
    assert limit.allow("a") and not limit.allow("a")
    now[0] += 3600
    assert sum(limit.allow("a") for _ in range(20)) == 10  # refills up to the burst only


def test_command_limits_are_configurable_and_checked() -> None:
    base = {"gateway": {"id": "g"}, "mqtt": {}}
    default = parse_config(base).commands
    assert (default.max_bytes, default.rate_per_s, default.burst) == (65536, 5.0, 10)
    mine = parse_config({**base, "commands": {"max_bytes": 1024, "rate": 0.5, "burst": 2}})
    assert (mine.commands.max_bytes, mine.commands.rate_per_s, mine.commands.burst) == (
        1024,
        0.5,
        2,
    )
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "commands": {"max_bytes": 10, "rate": 0, "burts": 3}})
    text = str(err.value)
    assert "commands.max_bytes = 10: bytes, 256..16777216" in text
    assert "commands.rate = 0: commands a second per device" in text
    assert "commands.burts: unknown key; did you mean 'burst'?" in text
