"""A signed bundle as the gateway takes it: from a folder (``polekit build --sign KEY -o
DIR`` wrote it) or from a URL of such a folder, fetched with a size cap; its signature
checked with the gateway's key before anything else is read or sent, every file checked
against the manifest's size and SHA-256; then kept in ``data_dir/ota/`` under the
manifest's digest, so a restarted gateway finds the very bytes it verified.

A URL is a folder's address: ``URL/manifest.cbor``, ``URL/manifest.sig`` and each file
at ``URL/<path in the manifest>``. The manifest is fetched and verified first, so a bundle
signed by another key costs two small requests, not the download of its files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polekit.firmware.deploy.signing import (
    ManifestError,
    SigningKeyError,
    check_manifest,
    public_key_raw,
    verify,
)
from polekit.protocols.manifest import BAD_SIGNATURE, parse

MANIFEST = "manifest.cbor"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 64 * 1024  # a manifest lists files; this is hundreds of them


class BundleError(Exception):
    """The bundle cannot be used: unreadable, too big, not signed by our key, a file that
    does not match its manifest. The message says which and what to do; ``code`` is the
    manifest error code when the signature check refused it (1 bad signature, ...)."""

    def __init__(self, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: the manifest's bytes and fields, its signature, and the files'
    contents in the manifest's order. ``folder``: where its verified copy is kept."""

    manifest: bytes
    sig: bytes
    fields: dict[str, Any]
    files: list[bytes]
    folder: Path

    @property
    def version(self) -> str:
        return str(self.fields["version"])

    @property
    def board(self) -> str:
        return str(self.fields["board"])

    @property
    def size(self) -> int:
        """Bytes of the files (what crosses the link to each node)."""
        return sum(len(f) for f in self.files)

    @property
    def digest(self) -> str:
        """The manifest's SHA-256, hex: names the bundle (and its folder)."""
        return hashlib.sha256(self.manifest).hexdigest()

    def check_for(self, public_key: bytes, running: str) -> None:
        """Whether a node running ``running`` may take this bundle (the manifest's
        version rules: no downgrade unless allowed, ``min_version``); BundleError with
        the manifest error code when not."""
        try:
            check_manifest(self.manifest, self.sig, public_key, self.board, running)
        except ManifestError as exc:
            raise _refused(exc) from None


def load_public_key(path: Path | None) -> bytes:
    """The raw 32-byte Ed25519 key of the PEM file at ``path`` ([ota] public_key)."""
    if path is None:
        raise BundleError(
            "this gateway has no key to check updates with: set [ota] public_key to the "
            ".pub file `polekit keys new NAME` wrote"
        )
    try:
        return public_key_raw(path)
    except SigningKeyError as exc:
        raise BundleError(f"[ota] public_key: {exc}") from None


def _refused(exc: ManifestError) -> BundleError:
    return BundleError(f"bundle refused: {exc.text} (code {exc.code})", exc.code)


def _verified_manifest(manifest: bytes, sig: bytes, public_key: bytes) -> dict[str, Any]:
    # the signature (and that the manifest is well formed) against our key; the version
    # rules are the nodes' (each is checked against what it runs, before its transfer),
    # so here the running version is taken as the manifest's own min_version
    try:
        fields = parse(manifest)  # the board and min_version to check against
        return check_manifest(manifest, sig, public_key, fields["board"], fields["min_version"])
    except ManifestError as exc:
        if exc.code != BAD_SIGNATURE and not _signed(manifest, sig, public_key):
            exc = ManifestError(BAD_SIGNATURE, "the manifest's signature is not the update key's")
        raise _refused(exc) from None


def _signed(manifest: bytes, sig: bytes, public_key: bytes) -> bool:
    # a malformed manifest is reported as such only when it is ours: whoever did not
    # sign it learns nothing of how we parse
    return len(sig) == 64 and verify(public_key, manifest, sig)


def _check_file(entry: dict[str, Any], data: bytes) -> None:
    path = entry["path"]
    if len(data) != entry["size"]:
        raise BundleError(
            f"bundle refused: {path} has {len(data)} bytes, the signed manifest says "
            f"{entry['size']} (changed after signing?); rebuild it with polekit build --sign"
        )
    if hashlib.sha256(data).digest() != entry["sha256"]:
        raise BundleError(
            f"bundle refused: {path} differs from the signed manifest (changed after "
            "signing?); rebuild it with polekit build --sign"
        )


def _total_cap(fields: dict[str, Any], cap: int) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = fields["files"]  # checked by manifest.parse
    total = sum(f["size"] for f in files)
    if total > cap:
        raise BundleError(
            f"bundle of {total} bytes is over the {cap}-byte limit ([ota] max_bundle_mb)"
        )
    return files


def _read_local(
    folder: Path, public_key: bytes, cap: int
) -> tuple[bytes, bytes, dict[str, Any], list[bytes]]:
    try:
        manifest = _read_capped(folder / MANIFEST, MAX_MANIFEST_BYTES)
        sig = _read_capped(folder / SIGNATURE, 64)
    except FileNotFoundError as exc:
        raise BundleError(
            f"{folder}: no {Path(str(exc.filename)).name}: not a signed bundle; build one "
            "with `polekit build --board B --sign KEY -o DIR`"
        ) from None
    fields = _verified_manifest(manifest, sig, public_key)
    entries = _total_cap(fields, cap)
    files = []
    for entry in entries:
        try:
            data = _read_capped(folder / entry["path"], int(entry["size"]) + 1)
        except FileNotFoundError:
            raise BundleError(f"bundle refused: {entry['path']} is missing from {folder}") from None
        _check_file(entry, data)
        files.append(data)
    return manifest, sig, fields, files


def _read_capped(path: Path, cap: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except IsADirectoryError:
        raise BundleError(f"{path} is a folder, not a file") from None
    except PermissionError:
        raise BundleError(f"cannot read {path}: permission denied") from None
    if len(data) > cap:
        raise BundleError(f"{path} is over {cap} bytes: not part of a bundle this size")
    return data


def _fetch(url: str, cap: int, timeout_s: float) -> bytes:
    # one GET, at most ``cap`` bytes read whatever the server says its length is
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            data: bytes = answer.read(cap + 1)
    except urllib.error.HTTPError as exc:
        raise BundleError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BundleError(f"cannot fetch {url}: {reason}") from None
    if len(data) > cap:
        raise BundleError(f"{url} is over {cap} bytes ([ota] max_bundle_mb): not fetched")
    return data


def _read_url(
    url: str, public_key: bytes, cap: int, timeout_s: float
) -> tuple[bytes, bytes, dict[str, Any], list[bytes]]:
    base = url if url.endswith("/") else url + "/"
    manifest = _fetch(base + MANIFEST, MAX_MANIFEST_BYTES, timeout_s)
    sig = _fetch(base + SIGNATURE, 64, timeout_s)
    fields = _verified_manifest(manifest, sig, public_key)
    entries = _total_cap(fields, cap)
    files = []
    for entry in entries:
        data = _fetch(base + urllib.parse.quote(entry["path"]), int(entry["size"]), timeout_s)
        _check_file(entry, data)
        files.append(data)
    return manifest, sig, fields, files


def is_url(source: str) -> bool:
    """Whether ``source`` is an http(s) URL rather than a folder."""
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def load_bundle(
    source: str, public_key: bytes, store_dir: Path, max_bytes: int, timeout_s: float = 30.0
) -> Bundle:
    """The bundle at ``source`` (a folder or an http(s) URL of one), verified against
    ``public_key`` and kept under ``store_dir/<digest>``. Blocking (file and network
    I/O): the gateway runs it in a thread. Raises BundleError saying why it is refused."""
    if is_url(source):
        manifest, sig, fields, files = _read_url(source, public_key, max_bytes, timeout_s)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise BundleError(
                f"{source}: no such folder; give the -o folder of `polekit build --sign`, "
                "or an http(s) URL of one"
            )
        manifest, sig, fields, files = _read_local(folder, public_key, max_bytes)
    digest = hashlib.sha256(manifest).hexdigest()
    folder = store_dir / digest[:32]
    _keep(folder, manifest, sig, fields, files)
    return Bundle(manifest, sig, fields, files, folder)


def _keep(
    folder: Path, manifest: bytes, sig: bytes, fields: dict[str, Any], files: list[bytes]
) -> None:
    # written to a new folder and renamed into place: a crash leaves the old copy or none
    if (folder / MANIFEST).exists():
        return
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=0o700)
    for name, data in ((MANIFEST, manifest), (SIGNATURE, sig)):
        (tmp / name).write_bytes(data)
    for entry, data in zip(fields["files"], files, strict=True):
        target = tmp / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    try:
        tmp.rename(folder)
    except OSError:  # another process kept the same bundle meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


async def load_bundle_async(
    source: str, public_key: bytes, store_dir: Path, max_bytes: int, timeout_s: float = 30.0
) -> Bundle:
    """``load_bundle`` in a thread, off the event loop."""
    return await asyncio.to_thread(load_bundle, source, public_key, store_dir, max_bytes, timeout_s)
