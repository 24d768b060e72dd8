"""OTA over Wi-Fi HTTP (issue 16 item 3): an emulated board running MqttLink over WifiMqtt
(the node's own modules in its MicroPython VM, umqtt.simple on its TCP sockets, a real
mosquitto) takes an `ota` command with a URL, fetches the signed bundle from a real HTTP
server on loopback with its sockets, installs it and reports; a connection dropped in the
middle of a file resumes with a Range request from where the staging stands."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from otalinkkit import bundle, install_stand_in
from uplinkkit import Subscriber, wait_for

from polekit.firmware.install import install
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity

BOARD = "pole-env-esp32"
NODE_ID = "ota-node-1"
CODE = identity.make("371600", "PL", 16)
BASE = f"polekit/v1/{NODE_ID}"


class BundleServer:
    """A real HTTP/1.1 server on loopback serving one bundle folder, with Range (RFC 9110
    section 14: `bytes=N-` answered 206 with Content-Range). ``cut`` maps a path to a byte
    count: its first GET sends that many body bytes and drops the connection. Every request
    is logged as (path, range start or None)."""

    def __init__(self, files: dict[str, bytes], cut: dict[str, int] | None = None) -> None:
        self.files = files
        self.cut = dict(cut or {})
        self.log: list[tuple[str, int | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass  # the test reads server.log

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.removeprefix("/bundle/")
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                start = int(ranged.group(1)) if ranged else None
                server.log.append((path, start))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                body = data[start or 0 :]
                self.send_response(206 if ranged else 200)
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                cut = server.cut.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the link dropped mid-file
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/bundle/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> BundleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


BOARD_MAIN = """
# the test's Wi-Fi node: MqttLink over WifiMqtt, commands through the node's handler, the
# `ota` command through ota_http.OtaCommand (the session: node/ota/session.py)
import asyncio
import gc

from node.ota.session import OtaSession
from node.ota_http import OtaCommand
from node.outbox import Outbox
from node.state import StateFile
from node.uplinks.mqtt_link import MqttLink
from node.uplinks.wifi_mqtt import WifiMqtt

state = StateFile("/state.json")
box = Outbox("/outbox.bin", 8192)
wifi = WifiMqtt("polekit-lab", "lab-key", "127.0.0.1", %(port)d, timeout_s=2)
link = MqttLink(wifi, box, %(node_id)r, state, clock=lambda: None)
ota = OtaCommand(link, state, OtaSession, timeout_s=2)


def handler(code, body):
    if "ota" in body:
        return ota.start(code, body)
    raise ValueError("this node takes ota only")


link.on_command(handler)
ota.report_boot()
gc.collect()
print("node up, running", OtaSession().status()["running"], "free", gc.mem_free())


async def main():
    while True:
        link.flush(2000)
        await asyncio.sleep_ms(100)


asyncio.run(main())
"""


def _files() -> dict[str, bytes]:
    return {
        "lib/node/extra.py": os.urandom(9000),
        "lib/node/more.py": os.urandom(4000),
        "lib/node/tiny.py": b"x = 1\n",
    }


def _board(tmp_path: Path, broker: LocalBroker, sig_ok: bytes) -> Path:
    flash = install(tmp_path / "flash", BOARD, start=False)
    install_stand_in(flash, sig_ok, BOARD)
    (flash / "main.py").write_text(BOARD_MAIN % {"port": broker.port, "node_id": NODE_ID})
    return flash


def _command(broker: LocalBroker, body: dict[str, Any]) -> None:
    import paho.mqtt.publish as publish

    publish.single(
        f"{BASE}/cmd/{CODE}", json.dumps(body), qos=1, hostname=broker.host, port=broker.port
    )


def _results(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.on(f"{BASE}/cmd-result/{CODE}")]


def _pull(
    tmp_path: Path, served: dict[str, bytes], sig_ok: bytes, cut: dict[str, int] | None = None
) -> tuple[list[dict[str, Any]], BundleServer, Path, str]:
    broker = LocalBroker().start()
    flash = _board(tmp_path, broker, sig_ok)
    try:
        with (
            BundleServer(served, cut) as server,
            Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
            EmulatedBoard(BOARD, fs_dir=flash) as board,
        ):
            board.wait_output("node up, running 0.1", 30)
            wait_for(lambda: sub.on(f"{BASE}/state"), 30, "the node online")
            _command(broker, {"id": "u1", "ota": server.url})
            try:
                wait_for(lambda: len(_results(sub)) >= 2, 120, "the update's results")
            except AssertionError as exc:
                tail = bytes(board.serial_log[-2000:]).decode(errors="replace")
                raise AssertionError(f"{exc}; the node printed:\n{tail}") from None
            log = bytes(board.serial_log).decode(errors="replace")
    finally:
        broker.stop()
    return _results(sub), server, flash, log


def test_an_ota_command_installs_the_bundle_over_http_and_reports(tmp_path: Path) -> None:
    files = _files()
    manifest, sig = bundle(files, board=BOARD)
    served = {"manifest.cbor": manifest, "manifest.sig": sig, **files}
    results, server, flash, log = _pull(tmp_path, served, sig)
    assert results[0] == {"id": "u1", "ok": True, "ota": "fetching"}, results
    final = results[1]
    assert final["id"] == "u1" and final["ok"] is True, final
    assert final["ota"]["running"] == "0.2", final
    print(f"HTTP pull: heap low-water {final['heap_low']} bytes free (budget 110 KiB)")
    assert final["heap_low"] > 8 * 1024, final
    assert "node up, running 0.2" in log
    for i, data in enumerate(files.values()):
        assert hashlib.sha256((flash / "ota" / f"f{i}").read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )
    assert [p for p, _ in server.log] == ["manifest.cbor", "manifest.sig", *files]
    assert all(start is None for _, start in server.log)


def test_a_connection_dropped_mid_file_resumes_with_range(tmp_path: Path) -> None:
    files = _files()
    manifest, sig = bundle(files, board=BOARD)
    served = {"manifest.cbor": manifest, "manifest.sig": sig, **files}
    results, server, flash, _ = _pull(tmp_path, served, sig, cut={"lib/node/extra.py": 5000})
    assert results[1]["ok"] is True and results[1]["ota"]["running"] == "0.2", results
    gets = [(p, s) for p, s in server.log if p == "lib/node/extra.py"]
    assert gets[0] == ("lib/node/extra.py", None)
    # the second GET starts where the staging stood: past 0, at most the 5000 bytes sent
    assert len(gets) == 2 and gets[1][1] is not None and 0 < gets[1][1] <= 5000, gets
    assert (flash / "ota" / "f0").read_bytes() == files["lib/node/extra.py"]


def test_a_wrongly_signed_bundle_is_refused_with_its_reason(tmp_path: Path) -> None:
    files = _files()
    manifest, sig = bundle(files, board=BOARD)
    served = {"manifest.cbor": manifest, "manifest.sig": bytes(64), **files}
    results, server, flash, _ = _pull(tmp_path, served, sig)
    assert results[1]["id"] == "u1" and results[1]["ok"] is False, results
    assert results[1]["code"] == 1 and "signature" in results[1]["error"], results
    assert [p for p, _ in server.log] == ["manifest.cbor", "manifest.sig"]  # no file fetched
