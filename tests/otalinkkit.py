"""Helpers for the OTA transport tests (BLE and HTTP): signed bundles, and a stand-in for
the node's OtaSession while s23-otanode's is not on this branch.

The stand-in keeps the session's interface (firmware/node/ota/session.py in I16.md:
begin/need/write/commit/abort/status) with real staging files on the board's flash, a real
SHA-256 of every file at commit (the board's hashlib) and a reset at the end. It checks the
signature against /ota.sig-ok (the bytes the test allows) instead of Ed25519: it proves the
transports, not the signing. Tests that need the real session say so."""

from __future__ import annotations

import hashlib
from pathlib import Path

from polekit.protocols import cbor

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
    def __init__(self):
        self.manifest = None
        self.files = None
        self.error = 0
        try:
            os.mkdir(DIR)
        except OSError:
            pass

    def running(self):
        return (_read("/ota/running") or b"0.1").decode()

    def begin(self, manifest, sig):
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
        machine.reset()

    def abort(self):
        os.remove(DIR + "/manifest.cbor")

    def status(self):
        return {"fw_version": self.running(), "ota_state": 0, "ota_error": self.error}
"""


def install_stand_in(flash: Path, sig_ok: bytes, board: str = "community-sos-esp32c3") -> None:
    """Put the stand-in session on the board's flash (unless the real one is in the
    bundle) and allow ``sig_ok`` as the signature."""
    ota = flash / "lib" / "node" / "ota"
    if (ota / "session.py").exists() or (ota / "session.mpy").exists():
        return
    ota.mkdir(parents=True, exist_ok=True)
    (ota / "__init__.py").write_text("")
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
