"""Update keys and signed bundles on the host (docs/ota.md, "Keys and signing").

``polekit keys new NAME`` makes an Ed25519 key pair: NAME.key (PEM PKCS#8, mode 0600) and
NAME.pub (PEM SubjectPublicKeyInfo). ``polekit build --sign NAME.key -o DIR`` writes
DIR/manifest.cbor, the deterministic CBOR manifest of the update's files (protocols/
manifest.py), and DIR/manifest.sig, the 64-byte signature of its bytes. The node holds the
raw 32-byte public key as /ota.pub (``polekit deploy --key NAME.pub``) and checks every
update against it with the same ``check_manifest`` the gateway runs here, where the
signature is checked by `cryptography` (OpenSSL) instead of the node's pure code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from polekit.protocols import cbor
from polekit.protocols import manifest as _manifest
from polekit.protocols.manifest import ManifestError, parse_version

MANIFEST_CBOR = "manifest.cbor"
MANIFEST_SIG = "manifest.sig"
UPDATE_ROOT = "lib"  # an update carries the board's lib/ folder: the node's code, no config

__all__ = [
    "MANIFEST_CBOR",
    "MANIFEST_SIG",
    "SigningKeyError",
    "ManifestError",
    "check_manifest",
    "load_signed",
    "new_key",
    "public_key_raw",
    "sign_bundle",
    "verify",
]


class SigningKeyError(RuntimeError):
    """A key file cannot be made or read; the message names the file and what to do."""


def new_key(name: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair NAME.key (PEM PKCS#8, mode 0600, created so: never
    readable by others, even for a moment) and NAME.pub (PEM SubjectPublicKeyInfo).
    Refuses to overwrite either file: a lost signing key strands every node that holds its
    public half. Returns (key path, public key path)."""
    text = str(name)
    if not Path(text).name or text.endswith(("/", ".key", ".pub")) or Path(text).is_dir():
        raise SigningKeyError(
            f"{text!r} is not a key name: give a name such as city-2026 (writes city-2026.key "
            "and city-2026.pub), in a folder you can write"
        )
    key_path = Path(f"{text}.key")
    pub_path = Path(f"{text}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise SigningKeyError(f"{path} exists: keep it, or remove it first to make a new key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub_path.write_bytes(pub)
    except OSError as exc:
        raise SigningKeyError(
            f"cannot write {exc.filename}: {exc.strerror}; give a NAME in a folder you can write"
        ) from None
    return key_path, pub_path


def _load_private(key_path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(key_path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {key_path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(
            f"{key_path} is not an unencrypted PEM private key; make one with `polekit keys new`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{key_path} is not an Ed25519 key; make one with `polekit keys new`")
    return key


def public_key_raw(pub_path: str | Path) -> bytes:
    """The 32 raw bytes of a NAME.pub (what the node stores as /ota.pub). A NAME.key is
    refused: the private half never goes to a node or a gateway."""
    try:
        data = Path(pub_path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {pub_path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise SigningKeyError(
            f"{pub_path} is a private key: give its .pub (the private key stays with you)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SigningKeyError(
            f"{pub_path} is not a PEM public key; use the NAME.pub of `polekit keys new`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(
            f"{pub_path} is not an Ed25519 key; use the NAME.pub of `polekit keys new`"
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification by `cryptography` (the host's verify for check_manifest)."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(
            bytes(signature), bytes(message)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def check_manifest(
    manifest_bytes: bytes,
    sig: bytes,
    public_key: bytes | None,
    board: str,
    running_version: str | tuple[int, int],
) -> dict[str, Any]:
    """The node's check (protocols/manifest.py), the signature checked by `cryptography`.
    Returns the manifest map; raises ManifestError (``.code``, ``.text``)."""
    return dict(
        _manifest.check_manifest(
            manifest_bytes, sig, public_key or b"", board, running_version, verify=verify
        )
    )


def update_files(folder: str | Path) -> dict[str, bytes]:
    """The files of a bundle folder an update carries: everything under lib/ (board paths,
    sorted). main.py, config.json and board.json stay the node's own."""
    root = Path(folder)
    out: dict[str, bytes] = {}
    for path in sorted((root / UPDATE_ROOT).rglob("*")):
        if path.is_file():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def manifest_map(
    files: dict[str, bytes], board: str, version: str, min_version: str, downgrade: bool = False
) -> dict[str, Any]:
    """The manifest of ``files`` (board path -> bytes)."""
    for v in (version, min_version):
        parse_version(v)
    m: dict[str, Any] = {
        "board": board,
        "version": version,
        "min_version": min_version,
        "files": [
            {"path": p, "size": len(b), "sha256": hashlib.sha256(b).digest()}
            for p, b in sorted(files.items())
        ],
    }
    if downgrade:
        m["downgrade"] = True
    return m


def sign_bundle(
    folder: str | Path,
    key_path: str | Path,
    board: str,
    version: str,
    min_version: str,
    downgrade: bool = False,
) -> tuple[bytes, bytes]:
    """Sign the bundle written in ``folder``: its update files (see update_files) go into
    FOLDER/manifest.cbor, their signature into FOLDER/manifest.sig. Returns (manifest
    bytes, signature)."""
    key = _load_private(key_path)
    files = update_files(folder)
    if not files:
        raise ManifestError(_manifest.MALFORMED, f"{folder} has no {UPDATE_ROOT}/ files to sign")
    raw = cbor.dumps(manifest_map(files, board, version, min_version, downgrade), canonical=True)
    sig = key.sign(raw)
    Path(folder, MANIFEST_CBOR).write_bytes(raw)
    Path(folder, MANIFEST_SIG).write_bytes(sig)
    return raw, sig


def load_signed(folder: str | Path) -> tuple[bytes, bytes, dict[str, bytes]]:
    """(manifest bytes, signature, files {board path: bytes}) of a signed bundle folder,
    the files as the manifest lists them, in its order. Checks nothing: check_manifest
    does, and the node hashes each file."""
    root = Path(folder)
    try:
        raw = (root / MANIFEST_CBOR).read_bytes()
        sig = (root / MANIFEST_SIG).read_bytes()
    except OSError as exc:
        raise ManifestError(
            _manifest.MALFORMED,
            f"{exc.filename}: {exc.strerror}; sign the bundle with `polekit build --sign`",
        ) from None
    m = _manifest.parse(raw)
    files: dict[str, bytes] = {}
    for entry in m["files"]:
        try:
            files[entry["path"]] = (root / entry["path"]).read_bytes()
        except OSError as exc:
            raise ManifestError(
                _manifest.MALFORMED,
                f"{root}: the manifest lists {entry['path']}, which cannot be read: {exc.strerror}",
            ) from None
    return raw, sig, files
