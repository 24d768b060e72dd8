"""Helpers for the OTA transport tests (BLE and HTTP): real signed bundles of the node
firmware for a board (bundle.build with a version, signing.sign_bundle with a fresh key),
and a node flashed as `polekit deploy --key` leaves it (compiled libraries in slot a, the
update key at /ota.pub), so the transports run on the node's real OtaSession."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polekit.firmware.deploy import signing
from polekit.firmware.deploy.bundle import DEFAULT_MPY, build, compile_module
from polekit.firmware.install import install
from polekit.protocols import cbor

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


# ---- still used by tests/test_ota_http.py only (not yet moved to the real session) ----
STAND_IN_SESSION = """
# test stand-in for firmware/node/ota/session.py (tests/otakit.py says why)
import asyncio
import hashlib
import os

import machine

from protocols import cbor

DIR = "/ota"


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class ManifestError(ValueError):
    def __init__(self, code, text):
        super().__init__(code, text)
        self.code = code
        self.text = text


class OtaSession:
    def __init__(self, board=None, running=None, reset=None, checker=None, key_path=None,
                 on_heap=None):
        self.reset = reset or machine.reset
        self.on_heap = on_heap
        self.manifest = None
        self.files = None
        self.error = 0
        try:
            os.mkdir(DIR)
        except OSError:
            pass

    def running(self):
        return (_read("/ota/running") or b"0.1").decode()

    async def begin(self, manifest, sig):
        if sig != _read("/ota.sig-ok"):
            self.error = 1
            raise ManifestError(1, "bad signature")
        m = cbor.loads(manifest)
        if m["board"] != "%(board)s":
            self.error = 2
            raise ManifestError(2, "manifest for another board")
        if _read(DIR + "/manifest.cbor") != manifest:
            for name in os.listdir(DIR):
                if name.startswith("f"):
                    os.remove(DIR + "/" + name)
            with open(DIR + "/manifest.cbor", "wb") as f:
                f.write(manifest)
        self.manifest = m
        self.files = m["files"]
        self.error = 0

    def need(self):
        for i, entry in enumerate(self.files):
            have = max(0, _size(DIR + "/f%d" % i))
            if have < entry["size"]:
                return (i, have)
        return None

    def write(self, file_index, offset, data):
        have = max(0, _size(DIR + "/f%d" % file_index))
        if offset != have:
            return have
        if offset + len(data) > self.files[file_index]["size"]:
            raise ValueError(5, "past the file's size")
        with open(DIR + "/f%d" % file_index, "ab") as f:
            f.write(data)
        if self.on_heap:
            import gc

            self.on_heap(gc.mem_free())
        return offset + len(data)

    async def commit(self):
        for i, entry in enumerate(self.files):
            h = hashlib.sha256()
            if not entry["size"]:
                open(DIR + "/f%d" % i, "wb").close()
            with open(DIR + "/f%d" % i, "rb") as f:
                while True:
                    block = f.read(512)
                    if not block:
                        break
                    h.update(block)
                    await asyncio.sleep_ms(0)
            if h.digest() != entry["sha256"]:
                os.remove(DIR + "/f%d" % i)
                self.error = 8
                raise ManifestError(8, "%s: SHA-256 differs" % entry["path"])
        with open(DIR + "/running", "w") as f:
            f.write(self.manifest["version"])
        self.reset()

    def abort(self):
        os.remove(DIR + "/manifest.cbor")

    def status(self):
        return {"running": self.running(), "state": "idle", "error": self.error}
"""


def install_stand_in(flash: Path, sig_ok: bytes, board: str = "community-sos-esp32c3") -> None:
    """Put the stand-in session on the board's flash in the real one's place and allow
    ``sig_ok`` as the signature."""
    ota = flash / "lib" / "node" / "ota"
    ota.mkdir(parents=True, exist_ok=True)
    for old in ota.glob("session.*"):
        old.unlink()
    (ota / "session.py").write_text(STAND_IN_SESSION.replace("%(board)s", board))
    (flash / "ota.sig-ok").write_bytes(sig_ok)


def bundle(
    files: dict[str, bytes], version: str = "0.2", board: str = "community-sos-esp32c3"
) -> tuple[bytes, bytes]:
    """(manifest.cbor, a signature) for ``files``; the stand-in signs nothing."""
    manifest = cbor.dumps(
        {
            "board": board,
            "version": version,
            "min_version": "0.1",
            "files": [
                {"path": p, "size": len(d), "sha256": hashlib.sha256(d).digest()}
                for p, d in files.items()
            ],
        }
    )
    return manifest, hashlib.sha512(manifest).digest()
