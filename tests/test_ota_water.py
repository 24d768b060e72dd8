"""OTA on the water node (issue 16 item 3, "over Wi-Fi HTTP for nodes that have it"): the
battery node that sleeps between wakes takes the `ota` command in a wake's flush, through a
real mosquitto, and fetches the signed bundle from an HTTP server on loopback in update
boots of its own (node/ota_wake.py): the header, its signature checked in the check boot,
then the files, and a reset into the new version, whose first wake is its trial
(self-test, then its report acknowledged by the broker); an update boot sends the result.
All of it on the emulated ESP32 under the real boot selector (/main.py), deep sleeps
included; the node's own modules in its MicroPython VM."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish
import pytest
from otalinkkit import (
    BundleServer,
    Signed,
    assert_pulled,
    flashed_node,
    signed_bundle,
)
from uplinkkit import Subscriber, wait_for

from polekit.firmware.deploy.bundle import DEFAULT_MPY, compile_module
from polekit.firmware.install import install
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import manifest, ota

from boardkit import board_exec

BOARD = "water-esp32"
CODE = "WTR1"
BASE = f"polekit/v1/{CODE}"
FAST = {  # a report every 5 s, the shortest the node takes: each wake is short
    "device_code": CODE,
    "mqtt_host": "127.0.0.1",
    "report_s": 5,
    "storm_report_s": 5,
    "flow_gate_ms": 100,
    "flush_ms": 4000,
}
EXTRA = {  # what version 0.2 adds (incompressible): fetched over HTTP
    "lib/node/extra.py": os.urandom(9000),
    "lib/node/more.py": os.urandom(4000),
}
_NODE = Path(__file__).resolve().parent.parent / "firmware" / "node"
CONNECT = "    def connect(self, client_id, will_topic, will_payload):\n"
BROKEN = {  # a version signed as a good one is, that fails its trial wake
    # its outbox module raises when the wake's send imports it: rolled back, reason 1
    "raises": (
        "lib/node/outbox.py",
        lambda _source: b'raise RuntimeError("a broken build")\n',
        ota.RB_EXCEPTION,
    ),
    # its Wi-Fi transport never reaches the broker: the report is not acknowledged, 5
    "no broker": (
        "lib/node/uplinks/wifi_mqtt.py",
        lambda source: source.replace(
            CONNECT, CONNECT + '        raise OSError(113, "a broken build")\n', 1
        ).encode(),
        ota.RB_UPLINK,
    ),
}


def _update(tmp_path: Path, broken: str | None = None) -> Signed:
    # version 0.2 of the water node's bundle with two new modules; ``broken``: one of
    # BROKEN, a module of it changed so
    extra = dict(EXTRA)
    if broken is not None:
        path, change, _ = BROKEN[broken]
        source = (_NODE / path.removeprefix("lib/node/")).read_text()
        assert CONNECT in source or path.endswith("outbox.py"), "update BROKEN's anchor"
        extra[path.replace(".py", ".mpy")] = compile_module(change(source), path, DEFAULT_MPY)
    return signed_bundle(tmp_path, BOARD, "0.2", extra=extra)


def _log(board: EmulatedBoard) -> str:
    return bytes(board.serial_log).decode(errors="replace")


def _cycles(board: EmulatedBoard) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"water cycle (\{[^\r\n]*\})\r?\n", _log(board))]


def _results(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.on(f"{BASE}/cmd-result/{CODE}")]


@contextmanager
def _water_node(
    tmp_path: Path, update: Signed, sig: bytes | None = None
) -> Iterator[tuple[EmulatedBoard, Subscriber, BundleServer, LocalBroker, Path]]:
    served = {"manifest.cbor": update.manifest, "manifest.sig": sig or update.sig, **update.files}
    with LocalBroker() as broker:
        flash = flashed_node(
            tmp_path / "flash", BOARD, update.pub, {**FAST, "mqtt_port": broker.port}
        )
        with (
            BundleServer(served) as server,
            Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
            EmulatedBoard(BOARD, fs_dir=flash) as board,
        ):
            board.set("level.metres", 1.0)
            wait_for(lambda: any(c["sent"] for c in _cycles(board)), 60, "a first report")
            yield board, sub, server, broker, flash


def _command_and_outcome(
    board: EmulatedBoard, sub: Subscriber, server: BundleServer, broker: LocalBroker
) -> tuple[list[dict[str, Any]], float]:
    # the command goes to the broker while the node sleeps (its session is persistent):
    # it arrives in the next wake's flush. The outcome: the result that has the status
    started = time.monotonic()
    publish.single(
        f"{BASE}/cmd/{CODE}",
        json.dumps({"id": "u1", "ota": server.url}),
        qos=1,
        hostname=broker.host,
        port=broker.port,
    )
    try:
        wait_for(
            lambda: [r for r in _results(sub) if r.get("ota") != "fetching"], 240, "the outcome"
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; results {_results(sub)}; requests {server.log}; board events "
            f"{board.events[-6:]}; the node printed:\n{_log(board)[-3000:]}"
        ) from None
    return _results(sub), time.monotonic() - started


def test_a_water_node_takes_an_ota_command_in_a_wake_and_confirms_the_new_version(
    tmp_path: Path,
) -> None:
    update = _update(tmp_path)
    with _water_node(tmp_path, update) as (board, sub, server, broker, flash):
        results, seconds = _command_and_outcome(board, sub, server, broker)
        # the new version sleeps and wakes on its own afterwards, confirmed
        try:
            wait_for(lambda: re.search(r"version 0\.2\s", _log(board)), 60, "a confirmed wake")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the node printed:\n{_log(board)[-4000:]}") from None
        log = _log(board)
        cycles = _cycles(board)
        record = json.loads((flash / "ota" / "boot.json").read_text())
    assert results[0] == {"id": "u1", "ok": True, "ota": "fetching"}, results
    final = results[-1]
    assert final["id"] == "u1" and final["ok"] is True, final
    assert final["ota"]["running"] == "0.2" and final["ota"]["previous"] == "0.1", final
    assert final["ota"]["rollback"] == 0, final
    # confirmed in the trial wake, before the result went: no longer on trial
    assert final["ota"]["state"] == "idle", final
    assert record["slot"] == "b" and record["state"] == "confirmed", record
    assert "version 0.2 on trial" in log and "confirmed after its trial" in log, log[-3000:]
    assert "trial self-test" not in log  # every sensor passed
    assert log.count("update: signature and manifest good") == 1, log  # its own boot, once
    # only what slot a lacks (the node's own modules are copied from it), each once, whole
    fetched = assert_pulled(update, server.log, flash, EXTRA)
    assert final["heap_low"] > 8 * 1024, final
    low = min(c["heap_min"] for c in cycles)
    print(
        f"water node OTA: {fetched} of the bundle's {update.size} bytes fetched; "
        f"{seconds:.1f} s from the command to the new version's result (the wake that took "
        f"it, an update boot, the check boot, an update boot, the trial wake, an update boot "
        f"for the result); least free heap {final['heap_low']} B while it fetched, {low} B "
        f"at the wakes' fullest"
    )


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_water_version_that_fails_its_trial_wake_is_rolled_back_and_reported(
    tmp_path: Path, broken: str
) -> None:
    update = _update(tmp_path, broken)
    reason = BROKEN[broken][2]
    with _water_node(tmp_path, update) as (board, sub, server, broker, flash):
        results, _ = _command_and_outcome(board, sub, server, broker)
        log = _log(board)
        record = json.loads((flash / "ota" / "boot.json").read_text())
    final = results[-1]
    assert final["id"] == "u1" and final["ok"] is False, final
    assert final["ota"]["rollback"] == reason, final
    assert (final["ota"]["running"], final["ota"]["previous"]) == ("0.1", "0.2"), final
    assert final["ota"]["state"] == "rolled_back", final
    assert "a broken build" in log, log[-3000:]
    assert f"failed its trial (reason {reason})" in log, log[-3000:]
    assert record["slot"] == "a" and record["state"] == "rolled_back", record


def test_a_wrongly_signed_bundle_is_refused_before_a_file_is_fetched(tmp_path: Path) -> None:
    update = _update(tmp_path)
    with _water_node(tmp_path, update, sig=bytes(64)) as (board, sub, server, broker, flash):
        results, _ = _command_and_outcome(board, sub, server, broker)
        # the node goes back to its wakes on 0.1: a report after the refusal
        at = len(_cycles(board))
        wait_for(lambda: any(c["sent"] for c in _cycles(board)[at:]), 30, "a report after")
        log = _log(board)
    final = results[-1]
    assert final["id"] == "u1" and final["ok"] is False, final
    assert final["code"] == manifest.BAD_SIGNATURE and "signature" in final["error"], final
    assert [p for p, _ in server.log] == ["manifest.sig", "manifest.cbor"]  # no file fetched
    assert "update refused" in log  # by the check boot, before the update went on
    assert not (flash / "slot_b").exists()  # not a byte staged
    assert not (flash / "ota" / "boot.json").exists()  # slot a runs on, untouched


def test_an_nbiot_water_node_refuses_an_ota_command_with_what_to_do(tmp_path: Path) -> None:
    flash = install(
        tmp_path / "flash", BOARD, {**FAST, "uplink": "nbiot"}, start=False, compiled=True
    )
    with EmulatedBoard(BOARD, fs_dir=flash) as board:
        out = board_exec(
            board,
            "from node.settings import load_json\nfrom node.water import WaterNode\n"
            "node = WaterNode(load_json('/config.json', None), load_json('/board.json', None))\n"
            "try:\n    node.on_command('WTR1', {'id': 1, 'ota': 'http://10.0.0.1/b/'})\n"
            "except ValueError as e:\n    print('refused:', e)",
        )
    assert "refused: ota: this node's uplink is NB-IoT" in out, out
    assert "update it by cable (polekit deploy)" in out, out
