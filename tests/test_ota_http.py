"""OTA over Wi-Fi HTTP (issue 16 item 3): an emulated board running MqttLink over WifiMqtt
(the node's own modules in its MicroPython VM, umqtt.simple on its TCP sockets, a real
mosquitto) takes an `ota` command with a URL, fetches a real signed bundle from an HTTP
server on loopback with its sockets into the node's real OtaSession (signature checked,
staged into slot b, committed), resets into it under the real boot selector and reports;
a connection dropped in the middle of a file resumes with a Range request from where the
staging stands; a wrongly signed bundle is refused before any file is fetched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from otalinkkit import (
    BundleServer,
    Signed,
    assert_pulled,
    flashed_node,
    signed_bundle,
    staged,
)
from uplinkkit import Subscriber, wait_for

from polekit.firmware.deploy.bundle import DEFAULT_MPY, compile_module
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity, ota

BOARD = "pole-env-esp32"
NODE_ID = "ota-node-1"
CODE = identity.make("371600", "PL", 16)
BASE = f"polekit/v1/{NODE_ID}"
EXTRA = {  # what version 0.2 adds (incompressible): fetched over HTTP
    "lib/node/extra.py": os.urandom(9000),
    "lib/node/more.py": os.urandom(4000),
    "lib/node/tiny.py": b"x = 1\n",
}


# The test's Wi-Fi node (/wifi_node.py): MqttLink over WifiMqtt, commands through the
# node's handler, the `ota` command through ota_http.OtaCommand on the node's real
# OtaSession. It runs under the real boot selector (/main.py, which starts it in place of
# node.start), so an update's commit resets into slot b and this module then runs from it;
# like node.start it runs the check boot (node.start.check_boot) when an update's header
# waits for one.
WIFI_NODE = """
import asyncio
import gc
import os

import machine

BOARD = %(board)r


def checking():
    try:
        os.stat("/ota/check")  # node/ota/verify.py's PENDING
        return True
    except OSError:
        return False


def run_node():
    from node.ota.session import OtaSession
    from node.ota_http import OtaCommand
    from node.outbox import Outbox
    from node.state import StateFile
    from node.uplinks.mqtt_link import MqttLink
    from node.uplinks.wifi_mqtt import WifiMqtt
    from node.version import VERSION

    running = "%%d.%%d" %% VERSION
    wdt = machine.WDT(timeout=30000)  # a version on trial must feed one (/main.py armed it)
    state = StateFile("/state.json")
    box = Outbox("/outbox.bin", 8192)
    wifi = WifiMqtt("polekit-lab", "lab-key", "127.0.0.1", %(port)d, timeout_s=2)
    link = MqttLink(wifi, box, %(node_id)r, state, clock=lambda: None)

    def reset():
        state.flush()
        machine.reset()

    def session():
        return OtaSession(BOARD, running, reset)

    ota = OtaCommand(box, state, session, reset, timeout_s=2)

    def handler(code, body):
        if "ota" in body:
            return ota.start(code, body)
        raise ValueError("this node takes ota only")

    link.on_command(handler)
    gc.collect()
    print("node up, running", running, "free", gc.mem_free())

    async def main():
        ota.resume()
        while True:
            wdt.feed()
            link.flush(2000)
            await asyncio.sleep_ms(100)

    asyncio.run(main())


if checking():
    from node.start import check_boot

    asyncio.run(check_boot({"name": BOARD}))  # it ends in a reset
else:
    run_node()
"""


def _update(tmp_path: Path, broken: bool = False) -> Signed:
    # version 0.2 of the node's bundle with three new modules: the files slot a has are
    # copied on the node's flash, the rest is fetched. ``broken``: its outbox module raises
    # when the node imports it (a version that cannot start), signed as a good one is
    extra = dict(EXTRA)
    if broken:
        extra["lib/node/outbox.mpy"] = compile_module(
            b'raise RuntimeError("a broken build")\n', "lib/node/outbox.py", DEFAULT_MPY
        )
    return signed_bundle(tmp_path, BOARD, "0.2", extra=extra)


def _board(tmp_path: Path, broker: LocalBroker, update: Signed) -> Path:
    flash = flashed_node(tmp_path / "flash", BOARD, update.pub)
    selector = (flash / "main.py").read_text()
    start = "        from node.start import main\n\n        main(rec)\n"
    assert start in selector, "main.py no longer starts node.start: update the test"
    (flash / "main.py").write_text(selector.replace(start, "        import wifi_node  # noqa\n"))
    (flash / "wifi_node.py").write_text(
        WIFI_NODE % {"port": broker.port, "node_id": NODE_ID, "board": BOARD}
    )
    return flash


def _command(broker: LocalBroker, body: dict[str, Any]) -> None:
    import paho.mqtt.publish as publish

    publish.single(
        f"{BASE}/cmd/{CODE}", json.dumps(body), qos=1, hostname=broker.host, port=broker.port
    )


def _results(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.on(f"{BASE}/cmd-result/{CODE}")]


def _pull(
    tmp_path: Path,
    update: Signed,
    sig: bytes | None = None,
    cut: dict[str, int] | None = None,
) -> tuple[list[dict[str, Any]], BundleServer, Path, str]:
    broker = LocalBroker().start()
    flash = _board(tmp_path, broker, update)
    served = {"manifest.cbor": update.manifest, "manifest.sig": sig or update.sig, **update.files}
    try:
        with (
            BundleServer(served, cut) as server,
            Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
            EmulatedBoard(BOARD, fs_dir=flash) as board,
        ):
            board.wait_output("node up, running 0.1", 30)
            wait_for(lambda: sub.on(f"{BASE}/state"), 30, "the node online")
            started = time.monotonic()
            _command(broker, {"id": "u1", "ota": server.url})
            try:
                wait_for(lambda: len(_results(sub)) >= 2, 240, "the update's results")
            except AssertionError as exc:
                tail = bytes(board.serial_log[-2000:]).decode(errors="replace")
                raise AssertionError(
                    f"{exc}; results {_results(sub)}; requests {server.log}; board events "
                    f"{board.events[-6:]}; the node printed:\n{tail}"
                ) from None
            print(f"HTTP pull: {time.monotonic() - started:.1f} s from the command to the result")
            log = bytes(board.serial_log).decode(errors="replace")
    finally:
        broker.stop()
    return _results(sub), server, flash, log


def test_an_ota_command_installs_the_bundle_over_http_and_reports(tmp_path: Path) -> None:
    update = _update(tmp_path)
    results, server, flash, log = _pull(tmp_path, update)
    assert results[0] == {"id": "u1", "ok": True, "ota": "fetching"}, results
    final = results[1]
    assert final["id"] == "u1" and final["ok"] is True, final
    assert final["ota"]["running"] == "0.2" and final["ota"]["state"] == "trial", final
    assert final["ota"]["previous"] == "0.1", final
    print(f"HTTP pull: heap low-water {final['heap_low']} bytes free")
    assert final["heap_low"] > 8 * 1024, final
    assert "node up, running 0.2" in log
    # the signature checked in a boot of its own (node.start.check_boot), once
    assert log.count("update: signature and manifest good") == 1, log
    # only what slot a lacks (the node's own modules are copied from it), each once, whole
    fetched = assert_pulled(update, server.log, flash, EXTRA)
    print(f"HTTP pull: {fetched} of the bundle's {update.size} bytes fetched")


def test_a_connection_dropped_mid_file_resumes_with_range(tmp_path: Path) -> None:
    update = _update(tmp_path)
    results, server, flash, _ = _pull(tmp_path, update, cut={"lib/node/extra.py": 5000})
    assert results[1]["ok"] is True and results[1]["ota"]["running"] == "0.2", results
    gets = [(p, s) for p, s in server.log if p == "lib/node/extra.py"]
    assert gets[0] == ("lib/node/extra.py", None)
    # the second GET starts where the staging stood: past 0, at most the 5000 bytes sent
    assert len(gets) == 2 and gets[1][1] is not None and 0 < gets[1][1] <= 5000, gets
    assert staged(flash, "lib/node/extra.py").read_bytes() == EXTRA["lib/node/extra.py"]


def test_a_wrongly_signed_bundle_is_refused_with_its_reason(tmp_path: Path) -> None:
    update = _update(tmp_path)
    results, server, flash, log = _pull(tmp_path, update, sig=bytes(64))
    assert results[1]["id"] == "u1" and results[1]["ok"] is False, results
    assert results[1]["code"] == 1 and "signature" in results[1]["error"], (results, log[-3000:])
    assert [p for p, _ in server.log] == ["manifest.sig", "manifest.cbor"]  # no file fetched
    assert "update refused" in log  # by the check boot, before the node started again
    assert not (flash / "slot_b").exists()  # not a byte staged
    assert not (flash / "ota" / "boot.json").exists()  # slot a runs on, untouched


def test_a_version_that_cannot_start_is_rolled_back_and_the_command_says_so(
    tmp_path: Path,
) -> None:
    update = _update(tmp_path, broken=True)
    results, _server, flash, log = _pull(tmp_path, update)
    assert results[0] == {"id": "u1", "ok": True, "ota": "fetching"}, results
    final = results[1]
    assert final["id"] == "u1" and final["ok"] is False, final
    assert final["ota"]["rollback"] == ota.RB_EXCEPTION, final
    assert (final["ota"]["running"], final["ota"]["previous"]) == ("0.1", "0.2"), final
    assert final["ota"]["state"] == "rolled_back", final
    assert "failed its trial (reason 1)" in log
    assert log.count("node up, running 0.1") == 3, log  # before, after the check, after


def test_a_power_cut_mid_file_resumes_from_the_staging_when_the_command_comes_again(
    tmp_path: Path,
) -> None:
    # the node loses its power in the middle of a file (RAM gone, flash kept); the
    # platform sends the command again: the node goes on from its staging, without a
    # second check boot, and fetches only the rest of the file
    update = _update(tmp_path)
    broker = LocalBroker().start()
    flash = _board(tmp_path, broker, update)
    served = {"manifest.cbor": update.manifest, "manifest.sig": update.sig, **update.files}
    path = "lib/node/extra.py"

    def up(board: EmulatedBoard) -> int:
        return bytes(board.serial_log).decode(errors="replace").count("node up, running 0.1")

    try:
        with (
            BundleServer(served, stall={path: 5000}) as server,
            Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
            EmulatedBoard(BOARD, fs_dir=flash) as board,
        ):
            board.wait_output("node up, running 0.1", 30)
            wait_for(lambda: sub.on(f"{BASE}/state"), 30, "the node online")
            _command(broker, {"id": "u1", "ota": server.url})
            wait_for(server.stalled.is_set, 60, "the node in the middle of the file")
            board.power_cycle(0.5)
            server.release.set()
            wait_for(lambda: up(board) == 3, 60, "the node back")  # start, check, the cut
            _command(broker, {"id": "u2", "ota": server.url})
            wait_for(
                lambda: [r for r in _results(sub) if r["id"] == "u2" and "heap_low" in r],
                120,
                "the second command's outcome",
            )
            log = bytes(board.serial_log).decode(errors="replace")
    finally:
        broker.stop()
    final = next(r for r in _results(sub) if r["id"] == "u2" and "heap_low" in r)
    assert final["ok"] is True and final["ota"]["running"] == "0.2", final
    assert log.count("update: signature and manifest good") == 1, log  # not checked again
    gets = [start for p, start in server.log if p == path]
    # the second GET of the file starts where the staging stood at the cut
    assert len(gets) == 2 and gets[0] is None and gets[1] is not None, server.log
    assert 0 < gets[1] <= 5000, server.log
    assert staged(flash, path).read_bytes() == EXTRA[path]
