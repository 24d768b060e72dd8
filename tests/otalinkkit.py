"""Helpers for the OTA transport tests (BLE and HTTP): real signed bundles of the node
firmware for a board (bundle.build with a version, signing.sign_bundle with a fresh key),
and a node flashed as `polekit deploy --key` leaves it (compiled libraries in slot a, the
update key at /ota.pub), so the transports run on the node's real OtaSession; and an HTTP
server on loopback that serves a bundle's folder as the nodes' HTTP pull fetches it."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from polekit.firmware.deploy import signing
from polekit.firmware.deploy.bundle import DEFAULT_MPY, build, compile_module
from polekit.firmware.install import install

COMMUNITY = "community-sos-esp32c3"
_NODE = Path(__file__).resolve().parent.parent / "firmware" / "node"


@dataclass
class Signed:
    """A signed update: manifest bytes, signature, files {board path: bytes} in order."""

    manifest: bytes
    sig: bytes
    files: dict[str, bytes]
    pub: bytes  # the raw 32-byte public key (/ota.pub on the node)
    folder: Path | None = None  # the bundle as `polekit build --sign` writes it

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())


def signed_bundle(
    tmp: Path,
    board: str,
    version: str = "0.2",
    key: Path | None = None,
    change: Callable[[dict[str, bytes]], None] | None = None,
    extra: dict[str, bytes] | None = None,
) -> Signed:
    """The node bundle for ``board`` at ``version`` (compiled), signed with ``key`` (a new
    one in ``tmp`` by default); ``extra`` are files the new version adds (signed with it);
    ``change`` edits the files after signing (tampering)."""
    folder = tmp / f"bundle-{version}"
    if key is None:
        key, _pub = signing.new_key(tmp / "update")
    built = build(board, DEFAULT_MPY, version=version)
    built.files.update(extra or {})
    built.write(folder)
    signing.sign_bundle(folder, key, board, version, "0.1")
    raw, sig, files = signing.load_signed(folder)
    if change is not None:
        change(files)
    pub = signing.public_key_raw(key.with_suffix(".pub"))
    return Signed(raw, sig, files, pub, folder)


# a version that raises as it starts: the boot selector rolls it back at once (reason 1)
RAISES = ("class CommunityNode:", 'raise RuntimeError("broken")\n\n\nclass CommunityNode:')
# its loop hangs once it advertises: the watchdog it armed on trial resets it (reason 2)
HANGS = (
    "            await asyncio.sleep_ms(10)\n",
    "            while True:\n                pass\n",
)


def community_update(
    tmp: Path, new_bytes: int, key: Path | None = None, broken: tuple[str, str] | None = None
) -> Signed:
    """Version 0.2 of the community node's own bundle, which also brings a new module of
    ``new_bytes`` (incompressible): the files the node runs already are copied from its
    slot a, the rest goes over the air. ``broken``: (text in community.py, what replaces
    it): a version that fails (RAISES, HANGS), signed as a good one is."""
    extra = {"lib/node/assets.bin": os.urandom(new_bytes)}
    if broken is not None:
        source = (_NODE / "community.py").read_text()
        assert broken[0] in source, f"community.py no longer has {broken[0]!r}"
        extra["lib/node/community.mpy"] = compile_module(
            source.replace(broken[0], broken[1], 1).encode(), "lib/node/community.py", DEFAULT_MPY
        )
    return signed_bundle(tmp, COMMUNITY, "0.2", key, extra=extra)


def over_the_link(update: Signed, flash: Path) -> int:
    """The bytes of ``update``'s files that slot a of ``flash`` does not hold as they are:
    what the link must carry (the node copies the rest on its flash)."""
    return sum(
        len(data)
        for path, data in update.files.items()
        if not (flash / path).exists() or (flash / path).read_bytes() != data
    )


def flashed_node(flash: Path, board: str, pub: bytes, config: dict[str, Any] | None = None) -> Path:
    """A node's flash as `polekit deploy --key` leaves it: version 0.1's compiled libraries
    in slot a, ``config`` over the board's settings, the raw update key at /ota.pub."""
    install(flash, board, config, compiled=True)
    (flash / "ota.pub").write_bytes(pub)
    return flash


def staged(flash: Path, path: str) -> Path:
    """Where the session staged a bundle path: the inactive slot (b: /slot_b) of a node
    that ran slot a."""
    return flash / "slot_b" / path


def assert_pulled(update: Signed, log: list[tuple[str, int | None]], flash: Path, new: Any) -> int:
    """An HTTP pull's requests (``log``: BundleServer.log) fetched the header first, then
    only what slot a lacked (the paths in ``new`` and the changed version module), each
    once and whole, and the staging holds the whole bundle. The file bytes fetched."""
    for path, data in update.files.items():
        assert staged(flash, path).read_bytes() == data, path
    paths = [p for p, _ in log]
    assert paths[:2] == ["manifest.sig", "manifest.cbor"], paths
    assert paths[2:] == [p for p in update.files if p in new or p.endswith("version.mpy")], paths
    assert all(start is None for _, start in log), log
    return sum(len(update.files[p]) for p in paths[2:])


class BundleServer:
    """A real HTTP/1.1 server on loopback serving one bundle folder, with Range (RFC 9110
    section 14: `bytes=N-` answered 206 with Content-Range). ``cut`` maps a path to a byte
    count: its first GET sends that many body bytes and drops the connection. Every request
    is logged as (path, range start or None). ``stall`` maps a path to a byte count: its
    first GET sends that many body bytes, sets ``stalled`` and holds the connection open
    until ``release`` is set."""

    def __init__(
        self,
        files: dict[str, bytes],
        cut: dict[str, int] | None = None,
        stall: dict[str, int] | None = None,
    ) -> None:
        self.files = files
        self.cut = dict(cut or {})
        self.stall = dict(stall or {})
        self.stalled = threading.Event()
        self.release = threading.Event()
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
                held = server.stall.pop(path, None)
                if held is not None:
                    self.wfile.write(body[:held])
                    self.wfile.flush()
                    server.stalled.set()
                    server.release.wait(30)
                    self.close_connection = True
                    return
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
