"""Over-the-air updates through a running gateway (issue 16 items 4 and 5): a gateway
process (``polekit gateway run``), a real mosquitto, signed bundles made by ``polekit
keys``/``polekit build --sign``, and the field tool as a user runs it. The rollouts that
reach nodes run against emulated pole nodes with the real firmware on one paced 9600-baud
RS-485 line (tests/otagwkit.py); the refusals against pymodbus devices (gwproc.py), where
every request on the wire is seen, so "nothing was sent" is checked, not assumed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from gwproc import CountingDevices, GatewayProcess
from otagwkit import (
    Rig,
    broken_bundle,
    events,
    make_key,
    ota_config,
    pole_codes,
    pole_line,
    polekit,
    rtu_bus,
    running_gateway,
    signed_bundle,
)

from polekit.hil.broker import LocalBroker
from polekit.protocols import cbor, identity, senml

from gwkit import Collector, run, until

POLE = identity.make("371600", "PL", 41)
WINDOW = 0x1000  # the OTA window's first register (docs/protocols.md): none below is OTA


class WatchedDevices(CountingDevices):
    """CountingDevices that also keep every request they were sent: (unit, function,
    first register)."""

    def __init__(self, units: list[int]) -> None:
        super().__init__(units)
        self.requests: list[tuple[int, int, int]] = []

    def _silence_absent(self, sending: bool, data: bytes) -> bytes:
        if not sending and len(data) >= 10:
            self.requests.append((data[6], data[7], int.from_bytes(data[8:10], "big")))
        return super()._silence_absent(sending, data)

    def ota_requests(self) -> list[tuple[int, int, int]]:
        """Requests into the OTA window, or of a writing function."""
        return [r for r in self.requests if r[2] >= WINDOW or r[1] in (6, 16, 21)]


def rollouts_in(database: Path) -> list[tuple[Any, ...]]:
    """The rollouts a gateway's database holds (none if it never had one)."""
    db = sqlite3.connect(database)
    try:
        return db.execute("SELECT id, state FROM ota_rollout").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_bundle_signed_by_another_key_is_refused_before_any_transfer(tmp_path: Path) -> None:
    ours = make_key(tmp_path, "city").with_suffix(".pub")
    theirs = make_key(tmp_path, "intruder")
    bundle = signed_bundle(tmp_path / "evil", theirs, "0.2")

    async def scenario() -> None:
        devices = await WatchedDevices([1]).start()
        try:
            with LocalBroker() as broker:
                config = ota_config(
                    tmp_path / "gateway.toml",
                    tmp_path / "data",
                    broker.url,
                    [
                        {
                            "code": POLE,
                            "bus": "poles",
                            "unit": 1,
                            "map": "pole-env",
                            "poll_interval": 0.2,
                        }
                    ],
                    [
                        {
                            "name": "poles",
                            "type": "tcp",
                            "host": "127.0.0.1",
                            "port": devices.tcp_port,
                        }
                    ],
                    ours,
                )
                async with Collector(broker.host, broker.port) as sub:
                    gw = GatewayProcess(config, tmp_path / "gateway.log")
                    try:
                        await until(
                            lambda: len(sub.on(f"/data/{POLE}")) > 0, 20, "the pole's first poll"
                        )
                        # the platform's ota command, and the field tool, with the bundle
                        await sub.publish(
                            f"polekit/v1/gw-fault/cmd/{POLE}",
                            json.dumps({"id": 5, "ota": {"bundle": str(bundle)}}).encode(),
                        )
                        await until(lambda: sub.on(f"/cmd-result/{POLE}"), 20, "the result")
                        result = cbor.loads(sub.on(f"/cmd-result/{POLE}")[0].payload)
                        cli = await asyncio.to_thread(
                            polekit,
                            "ota",
                            "push",
                            "-c",
                            str(config),
                            "--bundle",
                            str(bundle),
                            "--devices",
                            POLE,
                        )
                        polls = len(sub.on(f"/data/{POLE}"))
                        await until(lambda: len(sub.on(f"/data/{POLE}")) > polls + 3, 10, "polls")
                        health = await asyncio.to_thread(gw.health)
                    finally:
                        gw.proc.terminate()
                        gw.proc.wait(timeout=15)
        finally:
            await devices.stop()
        assert result["id"] == 5 and result["ok"] is False, result
        assert "signature" in result["error"] and "(code 1)" in result["error"], result
        assert cli.returncode == 1 and "signature" in cli.stderr, cli.stderr
        assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr  # one line, no traceback
        assert health is not None and health["ota"]["rollout"] is None
        assert rollouts_in(tmp_path / "data" / "queue.sqlite3") == []
        assert devices.ota_requests() == []  # not one request into the window
        assert not any((tmp_path / "data" / "ota").glob("*/manifest.cbor"))  # nothing kept

    run(scenario(), 120)


def _pole_devices(codes: list[str], poll_s: float = 1.0) -> list[dict[str, Any]]:
    return [
        {"code": c, "bus": "line", "unit": u, "map": "pole-env", "poll_interval": poll_s}
        for u, c in enumerate(codes, 1)
    ]


def _fw_version(sub: Collector, code: str) -> int | None:
    """The ``fw_version`` of the last pack of ``code`` at the broker."""
    packs = sub.packs(code)
    for pack in reversed(packs):
        for r in pack:
            if r["n"].endswith(":fw_version"):
                return int(r["v"])
    return None


def _pack_time(payload: bytes) -> float:
    """The time of a SenML pack (CBOR) at the broker."""
    return float(senml.resolve(senml.decode_cbor(payload), now=0)[0]["t"])


@contextlib.asynccontextmanager
async def gateway_on_line(
    tmp_path: Path,
    key: Path,
    codes: list[str],
    baud: int,
    changed: tuple[str, ...] | str = (),
    **ota: Any,
) -> AsyncIterator[Rig]:
    """Emulated pole nodes ``codes`` of an earlier release (``changed``: otagwkit.pole_line)
    on one line at ``baud``, a broker and a `polekit gateway run` polling them, its [ota]
    table trusting ``key`` with ``ota``'s settings; yields once every node reports 0.1,
    and stops the gateway (``rig.gw``) at the end."""
    with (
        pole_line(tmp_path, key, codes, baud, changed=changed) as (line, boards),
        LocalBroker() as broker,
    ):
        config = ota_config(
            tmp_path / "gateway.toml",
            tmp_path / "data",
            broker.url,
            _pole_devices(codes),
            [rtu_bus(line.endpoint(), baud)],
            key.with_suffix(".pub"),
            **ota,
        )
        async with running_gateway(
            config,
            broker,
            boards,
            lambda sub: all(_fw_version(sub, c) == 1 for c in codes),
            "0.1 everywhere",
        ) as rig:
            yield rig


def test_signed_update_reaches_three_nodes_on_one_line_while_the_others_keep_being_polled(
    tmp_path: Path,
) -> None:
    # issue 16's first proof: three emulated pole nodes on one paced 9600-baud line, the
    # field tool's push (canary, then a batch of two), one transfer at a time on the
    # line, the nodes not being updated polled all along at the stated reduced rate
    key = make_key(tmp_path, "city")
    bundle = signed_bundle(tmp_path / "v0.2", key, "0.2")
    codes = pole_codes(3)
    floor_s = 3.0
    # the nodes run an earlier release whose three node modules differ from this one's:
    # those are sent (~16 KB a node, ~20 s at 9600 baud), the rest copied on the node
    changed = ("lib/node/app.mpy", "lib/node/water.mpy", "lib/node/community.mpy")

    async def scenario() -> None:
        async with gateway_on_line(
            tmp_path,
            key,
            codes,
            9600,
            changed,
            poll_interval=floor_s,
            trial_wait=180,
            batch_size=2,
        ) as rig:
            push = await asyncio.to_thread(
                polekit,
                "ota", "push", "-c", str(rig.config), "--bundle", str(bundle),
                "--devices", ",".join(codes),
                timeout=1500,
            )  # fmt: skip
            assert push.returncode == 0, push.stdout + push.stderr + rig.gw.output()[-3000:]
            await until(
                lambda: all(_fw_version(rig.sub, c) == 2 for c in codes), 30, "0.2 everywhere"
            )
            messages = list(rig.sub.messages)
        assert "3 of 3 device(s) on 0.2" in push.stdout, push.stdout
        size = sum((bundle / p).stat().st_size for p in changed)
        reports = {dev: value for _, dev, value in events(messages, "ota_result")}
        assert sorted(reports) == sorted(codes)
        for code in codes:
            r = reports[code]
            assert (r["result"], r["version_before"], r["version_after"]) == (
                "updated",
                "0.1",
                "0.2",
            )
            # what went over the line: the changed modules (and version.mpy), no more
            assert size <= r["bytes"] < size + 1024 and r["duration_s"] > 0, r
        assert [v["state"] for _, _, v in events(messages, "ota_rollout")] == ["running", "done"]
        # each transfer: from its "sending" to its "installing" progress event, the other
        # two nodes' packs at the broker; one transfer at a time (they do not overlap)
        progress = events(messages, "ota_progress")
        spans = []
        for code in codes:
            begin = next(i for i, d, v in progress if d == code and v["state"] == "sending")
            end = next(i for i, d, v in progress if d == code and v["state"] == "installing")
            spans.append((begin, end, code))
        spans.sort()
        for (_, end, _), (begin, _, _) in zip(spans, spans[1:], strict=False):
            assert end < begin, "two transfers at once on one line"
        for begin, end, code in spans:
            for other in (c for c in codes if c != code):
                times = [
                    _pack_time(m.payload)
                    for m in messages[begin:end]
                    if m.topic.endswith(f"/data/{other}")
                ]
                assert len(times) >= 5, (code, other, times)  # polling went on
                # at the stated reduced rate: one poll every [ota] poll_interval (after
                # the one already due when the transfer began). A reading's time is when
                # its answer came, later when the line waited out a silent node: the
                # rate, not each gap, is what the floor holds
                rate_s = (times[-1] - times[1]) / (len(times) - 2)
                assert rate_s >= 0.9 * floor_s, (code, other, times)

    run(scenario(), 1800)


@pytest.mark.parametrize(
    ("how", "reason"),
    [("raises", "exception at start-up"), ("hangs", "watchdog reset during the trial")],
)
def test_failing_canary_stops_the_rollout_and_the_report_says_so(
    tmp_path: Path, how: str, reason: str
) -> None:
    # a bundle whose new version raises at start-up, or hangs there (the boot selector's
    # watchdog resets it), sent by the platform's ota command: the canary takes it,
    # fails, rolls back by itself; nobody else gets it
    key = make_key(tmp_path, "city")
    bundle = broken_bundle(tmp_path / "v0.2-broken", key, "0.2", how)
    codes = pole_codes(2, 70)

    async def scenario() -> None:
        async with gateway_on_line(
            tmp_path, key, codes, 115200, trial_wait=120, batch_size=1
        ) as rig:
            sub = rig.sub
            command = {"id": "u-1", "ota": {"bundle": str(bundle), "devices": codes}}
            await sub.publish("polekit/v1/gw-fault/cmd/gw-fault", json.dumps(command).encode())
            await until(lambda: len(events(sub.messages, "ota_rollout")) == 2, 600, "the end")
            accepted = cbor.loads(sub.on("/cmd-result/gw-fault")[0].payload)
            status = await asyncio.to_thread(polekit, "ota", "status", "-c", str(rig.config))
            messages = list(sub.messages)
            await until(lambda: _fw_version(sub, codes[0]) == 1, 30, "the canary on 0.1")
        assert accepted["ok"] is True and accepted["ota"]["devices"] == codes, accepted
        final = events(messages, "ota_rollout")[-1][2]
        assert final["state"] == "stopped" and codes[0] in final["reason"], final
        reports = {dev: value for _, dev, value in events(messages, "ota_result")}
        canary, other = reports[codes[0]], reports[codes[1]]
        assert canary["result"] == "rolled_back", canary
        assert reason in canary["reason"], canary
        assert (canary["version_before"], canary["version_after"]) == ("0.1", "0.1")
        assert other["result"] == "skipped" and other["bytes"] == 0, other
        assert status.returncode == 1 and "rolled_back" in status.stdout, status.stdout

    run(scenario(), 900)


Cut = Callable[[GatewayProcess, Path, list[Any]], Awaitable[tuple[GatewayProcess, Any]]]


def _cut_midway(tmp_path: Path, serial: int, cut: Cut) -> tuple[dict[str, Any], str, Any, Path]:
    """One pole node of an earlier release (every module differs: the whole bundle is
    sent) at 115200 baud, and a gateway pushing 0.2 to it; a third of the way through,
    ``cut(gateway, config, boards)`` does its harm and returns the gateway that goes on
    and what it saw. The node's report, that gateway's output, what ``cut`` saw, and the
    bundle."""
    key = make_key(tmp_path, "city")
    bundle = signed_bundle(tmp_path / "v0.2", key, "0.2")
    codes = pole_codes(1, serial)
    third = sum(f.stat().st_size for f in (bundle / "lib").rglob("*") if f.is_file()) // 3

    async def scenario() -> tuple[dict[str, Any], str, Any]:
        async with gateway_on_line(tmp_path, key, codes, 115200, "all", trial_wait=120) as rig:
            push = await asyncio.to_thread(
                polekit,
                "ota", "push", "-c", str(rig.config), "--bundle", str(bundle),
                "--devices", codes[0], "--no-wait",
            )  # fmt: skip
            assert push.returncode == 0, push.stderr

            def have() -> int:
                h = rig.gw.health()
                rollout = h and h["ota"]["rollout"]
                return rollout["devices"][0]["have"] if rollout else 0

            await until(lambda: have() > third, 120, "a third of the transfer")
            rig.gw, seen = await cut(rig.gw, rig.config, rig.boards)
            await until(lambda: len(events(rig.sub.messages, "ota_result")) == 1, 300, "the report")
            output = rig.gw.output()
        return events(rig.sub.messages, "ota_result")[0][2], output, seen

    report, output, seen = run(scenario(), 600)
    assert report["result"] == "updated" and report["version_after"] == "0.2", report
    return report, output, seen, bundle


def test_gateway_restart_mid_rollout_resumes_from_its_database(tmp_path: Path) -> None:
    # the gateway is killed (-9) in the middle of a transfer; started again, it takes the
    # rollout up from its database and the node goes on from what it had staged
    async def kill(
        gw: GatewayProcess, config: Path, _boards: list[Any]
    ) -> tuple[GatewayProcess, Any]:
        assert gw.status_url is not None
        shown = await asyncio.to_thread(
            polekit, "gateway", "status", "--url", gw.status_url.rsplit("/", 1)[0]
        )
        gw.proc.kill()  # mid-transfer, no goodbye
        gw.proc.wait(timeout=15)
        return GatewayProcess(config, tmp_path / "gateway.log"), shown

    _report, second_run, shown, bundle = _cut_midway(tmp_path, 80, kill)
    size = sum(f.stat().st_size for f in (bundle / "lib").rglob("*") if f.is_file())
    assert "update rollout 1" in shown.stdout and "sending" in shown.stdout, shown.stdout
    assert "polled every 10 s at most" in shown.stdout, shown.stdout
    assert "rollout 1 resumed" in second_run, second_run[-3000:]
    held = re.search(r"bundle delivered \((\d+) bytes sent, (\d+) held from before\)", second_run)
    assert held is not None, second_run[-3000:]
    assert int(held.group(2)) > size // 3, held.group(0)
    assert int(held.group(1)) < size - size // 3, held.group(0)


def test_a_power_cut_mid_transfer_resumes_where_the_node_stopped(tmp_path: Path) -> None:
    # the node loses its power a third of the way through (RAM gone, flash kept); the
    # gateway waits for it to answer again and goes on from the node's own ``need``:
    # what it had staged is not sent twice
    async def power_cut(
        gw: GatewayProcess, _config: Path, boards: list[Any]
    ) -> tuple[GatewayProcess, Any]:
        await asyncio.to_thread(boards[0].power_cycle, 0.5)
        return gw, None

    report, log, _seen, bundle = _cut_midway(tmp_path, 85, power_cut)
    assert "resuming when it answers again" in log, log[-3000:]
    # sent once: what the node had on its flash at the cut was not sent again (a chunk
    # or two in flight at the cut may be); the vendored modules are copied on the node
    size = sum(
        f.stat().st_size
        for d in ("node", "protocols")
        for f in (bundle / "lib" / d).rglob("*")
        if f.is_file()
    )
    assert size <= report["bytes"] < size + 2 * 240, (report["bytes"], size)
