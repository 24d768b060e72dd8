"""Over-the-air updates over BLE through a running gateway (issue 16's proof: "the same over
BLE for a community node on the virtual air"): a gateway process (``polekit gateway run``)
with a real mosquitto, pointed at the virtual air (hil/air.py), rolls a signed bundle out
to an emulated community node (the real firmware in the board's MicroPython VM, its real
OtaSession) through gateway/ota/ble_transfer.py and push_ble on bleak's API. Started by
the field tool (``polekit ota push``) and by the platform's ``ota`` command; the report
comes back as the gateway's ``ota_result`` event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from otagwkit import Rig, events, ota_config, polekit, running_gateway
from otalinkkit import (
    COMMUNITY,
    RAISES,
    Signed,
    community_update,
    flashed_node,
    over_the_link,
)

from polekit.firmware.deploy import signing
from polekit.hil.air import VirtualAir
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import cbor, identity, ota

from gwkit import run, until

GATEWAY = "gw-fault"  # gwproc's gateway id


def _node_and_update(
    tmp_path: Path, serial: int, trial_s: int, broken: tuple[str, str] | None = None
) -> tuple[str, Path, Path, Signed]:
    """A community node running 0.1 with the city key (its flash), and 0.2 of its bundle
    with a new 24 KB module, signed by that key: (device code, key, flash, update)."""
    code = identity.make("371600", "SO", serial)
    key, _pub = signing.new_key(tmp_path / "city")
    update = community_update(tmp_path, 24000, key, broken)
    config = {"device_code": code, "advert_s": 1, "ota_trial_s": trial_s}
    flash = flashed_node(tmp_path / "fs", COMMUNITY, update.pub, config)
    return code, key, flash, update


def _config(tmp_path: Path, broker: LocalBroker, air: VirtualAir, code: str, mac: str) -> Path:
    # the node as a BLE device of the gateway (its adverts scanned, its GATT service for
    # the update), the gateway on the virtual air
    return ota_config(
        tmp_path / "gateway.toml",
        tmp_path / "data",
        broker.url,
        [{"code": code, "transport": "ble", "address": mac, "interval": 1}],
        [],
        tmp_path / "city.pub",
        ble_air=air.path,
        trial_wait=120,
    )


def _console(board: EmulatedBoard) -> str:
    return bytes(board.serial_log).decode(errors="replace")


@contextlib.asynccontextmanager
async def gateway_on_air(tmp_path: Path, code: str, flash: Path) -> AsyncIterator[Rig]:
    """The community node (``flash``) on the virtual air, a broker, a collector and a
    `polekit gateway run` with the node as its BLE device; yields once its adverts reach
    the broker, and stops the gateway at the end."""
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(COMMUNITY, fs_dir=flash, air=air.path) as board,
        LocalBroker() as broker,
    ):
        config = _config(tmp_path, broker, air, code, board.mac)
        async with running_gateway(
            config, broker, [board], lambda sub: sub.packs(code), "the node's adverts"
        ) as rig:
            yield rig


def test_a_signed_update_reaches_a_community_node_over_ble_through_the_gateway(
    tmp_path: Path,
) -> None:
    trial_s = 15
    code, _key, flash, update = _node_and_update(tmp_path, 26, trial_s)
    over_the_air = over_the_link(update, flash)
    assert update.folder is not None

    async def scenario() -> tuple[Any, list[Any], float, str]:
        async with gateway_on_air(tmp_path, code, flash) as rig:
            sub = rig.sub
            started = time.monotonic()
            push = await asyncio.to_thread(
                polekit,
                "ota", "push", "-c", str(rig.config), "--bundle", str(update.folder),
                "--devices", code,
                timeout=600,
            )  # fmt: skip
            took = time.monotonic() - started
            assert push.returncode == 0, push.stdout + push.stderr + rig.gw.output()[-3000:]
            # the node advertises on as 0.2 (the gateway goes on reading it)
            seen = len(sub.packs(code))
            await until(lambda: len(sub.packs(code)) > seen, 30, "adverts on 0.2")
            messages = list(sub.messages)
            console = _console(rig.boards[0])
        return push, messages, took, console

    push, messages, took, console = run(scenario(), 900)
    assert "1 of 1 device(s) on 0.2" in push.stdout, push.stdout
    assert "version 0.2 confirmed after its trial" in console
    (report,) = [value for _, device, value in events(messages, "ota_result") if device == code]
    assert (report["result"], report["version_before"], report["version_after"]) == (
        "updated",
        "0.1",
        "0.2",
    ), report
    # what went over the air: the new module and the changed version (the rest of the
    # bundle the node copied from its own slot), not the bundle's size
    assert report["bytes"] == over_the_air, (report, over_the_air, update.size)
    assert over_the_air < update.size / 2
    # updated only once the node confirmed the version after its trial, not when it first
    # came back on it
    assert report["duration_s"] > trial_s, report
    states = [v["state"] for _, d, v in events(messages, "ota_progress") if d == code]
    assert states[0] == "sending" and states[-1] == "installing", states
    assert [v["state"] for _, _, v in events(messages, "ota_rollout")] == ["running", "done"]
    print(
        f"BLE rollout through the gateway: {report['bytes']} of the bundle's {update.size} "
        f"bytes over the air; {report['duration_s']} s from the transfer's start to the "
        f"confirmed version (trial {trial_s} s); {took:.1f} s for `polekit ota push`"
    )


def test_a_failing_version_over_ble_is_rolled_back_and_the_gateway_reports_it(
    tmp_path: Path,
) -> None:
    # the platform's ota command, a version that raises at start-up: the node takes it,
    # fails, goes back to 0.1 by itself; the rollout stops and says why
    code, _key, flash, update = _node_and_update(tmp_path, 27, 15, broken=RAISES)
    assert update.folder is not None

    async def scenario() -> tuple[dict[str, Any], list[Any], Any, str]:
        async with gateway_on_air(tmp_path, code, flash) as rig:
            sub = rig.sub
            command = {"id": "u-1", "ota": {"bundle": str(update.folder)}}
            await sub.publish(f"polekit/v1/{GATEWAY}/cmd/{code}", json.dumps(command).encode())
            await until(lambda: len(events(sub.messages, "ota_rollout")) == 2, 600, "the end")
            accepted = cbor.loads(sub.on(f"/cmd-result/{code}")[0].payload)
            status = await asyncio.to_thread(polekit, "ota", "status", "-c", str(rig.config))
            messages = list(sub.messages)
            console = _console(rig.boards[0])
        return accepted, messages, status, console

    accepted, messages, status, console = run(scenario(), 900)
    assert accepted["ok"] is True and accepted["ota"]["devices"] == [code], accepted
    assert "failed its trial (reason 1)" in console
    final = events(messages, "ota_rollout")[-1][2]
    assert final["state"] == "stopped" and code in final["reason"], final
    (report,) = [value for _, device, value in events(messages, "ota_result") if device == code]
    assert report["result"] == "rolled_back", report
    assert report["reason"] == ota.rollback_text(ota.RB_EXCEPTION), report
    assert (report["version_before"], report["version_after"]) == ("0.1", "0.1"), report
    assert 0 < report["bytes"] < update.size / 2, report  # what the air carried
    assert status.returncode == 1 and "rolled_back" in status.stdout, status.stdout
