"""An update named by URL (issue 16 item 4: "a URL the gateway fetches with a size cap"):
the gateway's bundle loader against a real HTTP server on loopback serving a bundle
folder made by ``polekit build --sign``. A good bundle is fetched, verified and kept; a
server that sends more than a file's signed size is cut off at the cap (the bytes it
took are counted on the server's side); a bundle over ``[ota] max_bundle_mb`` is refused
from its manifest alone, before any file is fetched; a missing file and a dead server
give one line each, naming the URL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from otagwkit import make_key, signed_bundle

from polekit.firmware.deploy.signing import public_key_raw
from polekit.gateway.ota.bundle import BundleError, load_bundle


class _Server:
    """A folder over HTTP on 127.0.0.1; ``padding`` maps a path to bytes sent after the
    file (a server that lies about what it holds); ``sent`` counts body bytes written and
    ``paths`` the paths asked for."""

    def __init__(self, folder: Path, padding: dict[str, int] | None = None) -> None:
        self.padding = padding or {}
        self.sent = 0
        self.paths: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args: Any) -> None:
                pass  # the test reads server.paths

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.lstrip("/")
                server.paths.append(path)
                file = folder / path
                if not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes() + b"\0" * server.padding.get(path, 0)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for at in range(0, len(body), 4096):
                        self.wfile.write(body[at : at + 4096])
                        server.sent += min(4096, len(body) - at)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway stopped reading at its cap

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    @contextmanager
    def running(self) -> Iterator[_Server]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("bundle")
    key = make_key(folder, "city")
    return signed_bundle(folder / "v0.2", key, "0.2"), public_key_raw(key.with_suffix(".pub"))


def test_a_bundle_by_url_is_fetched_verified_and_kept(
    signed: tuple[Path, bytes], tmp_path: Path
) -> None:
    bundle, key = signed
    with _Server(bundle).running() as server:
        got = load_bundle(server.url, key, tmp_path / "store", 2 * 1024 * 1024)
    files = [p for p in server.paths if p.startswith("lib/")]
    assert len(files) == len(got.files) and got.fields["version"] == "0.2"
    kept = got.folder / "manifest.cbor"
    assert kept.read_bytes() == (bundle / "manifest.cbor").read_bytes()
    for entry, data in zip(got.fields["files"], got.files, strict=True):
        assert (
            (bundle / entry["path"]).read_bytes()
            == data
            == (got.folder / entry["path"]).read_bytes()
        )


def test_a_server_that_sends_more_than_the_signed_size_is_cut_off(
    signed: tuple[Path, bytes], tmp_path: Path
) -> None:
    bundle, key = signed
    victim = "lib/node/app.mpy"
    size = (bundle / victim).stat().st_size
    with _Server(bundle, padding={victim: 50 * 1024 * 1024}).running() as server:
        with pytest.raises(BundleError) as caught:
            load_bundle(server.url, key, tmp_path / "store", 2 * 1024 * 1024)
    assert f"{server.url}{victim} is over {size} bytes" in str(caught.value)
    # 50 MB offered; the gateway read its cap and hung up (the socket's buffers aside)
    assert server.sent < 2 * 1024 * 1024 + 50 * 1024 * 1024 // 8, server.sent
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_a_bundle_over_the_cap_is_refused_from_its_manifest(
    signed: tuple[Path, bytes], tmp_path: Path
) -> None:
    bundle, key = signed
    with _Server(bundle).running() as server:
        with pytest.raises(BundleError) as caught:
            load_bundle(server.url, key, tmp_path / "store", 64 * 1024)
    assert "over the 65536-byte limit ([ota] max_bundle_mb)" in str(caught.value)
    assert server.paths == ["manifest.cbor", "manifest.sig"]  # not one file fetched


def test_a_missing_file_or_a_dead_server_is_one_line_naming_the_url(
    signed: tuple[Path, bytes], tmp_path: Path
) -> None:
    bundle, key = signed
    with _Server(bundle.parent).running() as server:  # the folder above: no bundle there
        with pytest.raises(BundleError) as missing:
            load_bundle(server.url + "nothing/", key, tmp_path / "store", 2 * 1024 * 1024)
        dead = server.url + "v0.2/"
    with pytest.raises(BundleError) as refused:  # the server is gone now
        load_bundle(dead, key, tmp_path / "store", 2 * 1024 * 1024, timeout_s=5)
    assert str(missing.value).startswith(
        f"cannot fetch {server.url}nothing/manifest.cbor: HTTP 404"
    )
    assert str(refused.value).startswith(f"cannot fetch {dead}manifest.cbor: ")
    for text in (str(missing.value), str(refused.value)):
        assert "\n" not in text and "Traceback" not in text
