"""Signed update bundles: `polekit keys new`, `polekit build --sign`, the manifest and its
check (protocols/manifest.py) with each refusal code, on CPython (signature by
`cryptography`) and inside the MicroPython VM (the node's pure Ed25519)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from polekit.firmware.deploy import signing
from polekit.hil.mpvm import VMLIB, run_script
from polekit.protocols import cbor, manifest
from polekit.protocols.manifest import ManifestError

from boardkit import polekit
from conftest import ROOT

BOARD = "pole-env-esp32"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real signed bundle built by the CLI: version 0.2, replaces 0.1 and later."""
    tmp = tmp_path_factory.mktemp("signed")
    assert polekit("keys", "new", str(tmp / "city")).returncode == 0
    assert polekit("keys", "new", str(tmp / "other")).returncode == 0
    out = tmp / "bundle"
    result = polekit(
        "build", "--board", BOARD, "--sign", str(tmp / "city.key"), "-o", str(out),
        "--version", "0.2", "--min-version", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "signed with" in result.stdout
    return {
        "dir": out,
        "key": tmp / "city.key",
        "pub": tmp / "city.pub",
        "other": tmp / "other.key",
    }


def _private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def test_keys_new_writes_a_private_key_only_its_owner_reads_and_a_public_pem(
    tmp_path: Path,
) -> None:
    result = polekit("keys", "new", str(tmp_path / "city"))
    assert result.returncode == 0, result.stderr
    key, pub = tmp_path / "city.key", tmp_path / "city.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    public = serialization.load_pem_public_key(pub.read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    assert _private(key).public_key().public_bytes_raw() == public.public_bytes_raw()
    assert signing.public_key_raw(pub) == public.public_bytes_raw()
    again = polekit("keys", "new", str(tmp_path / "city"))  # never overwrites a key
    assert again.returncode == 1 and "city.key exists" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_a_private_key_is_refused_where_the_public_key_belongs(tmp_path: Path) -> None:
    key, _pub = signing.new_key(tmp_path / "k")
    with pytest.raises(signing.SigningKeyError, match="is a private key"):
        signing.public_key_raw(key)
    (tmp_path / "junk.pub").write_text("hello\n")
    with pytest.raises(signing.SigningKeyError, match="not a PEM public key"):
        signing.public_key_raw(tmp_path / "junk.pub")


def test_build_sign_writes_the_layout_and_a_signature_cryptography_verifies(
    signed: dict[str, Path],
) -> None:
    out = signed["dir"]
    raw = (out / "manifest.cbor").read_bytes()
    sig = (out / "manifest.sig").read_bytes()
    assert len(sig) == 64
    Ed25519PublicKey.from_public_bytes(signing.public_key_raw(signed["pub"])).verify(sig, raw)
    m = cbor2.loads(raw)
    assert cbor2.dumps(m, canonical=True) == raw  # deterministic CBOR, by the reference
    assert sorted(m) == ["board", "files", "min_version", "version"]
    assert (m["board"], m["version"], m["min_version"]) == (BOARD, "0.2", "0.1")
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "lib").rglob("*") if p.is_file())
    assert [f["path"] for f in m["files"]] == on_disk
    for f in m["files"]:
        data = (out / f["path"]).read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).digest()
    paths = {f["path"].split("/")[1] for f in m["files"]}
    # config and board map stay the node's; ntptime is vendored beside umqtt
    assert paths == {"node", "protocols", "umqtt", "ntptime.mpy", "ntptime.LICENSE"}
    for own in ("main.py", "config.json", "board.json"):
        assert (out / own).exists() and own not in [f["path"] for f in m["files"]]
    assert json.loads((out / "manifest.json").read_text())["firmware_version"] == "0.2"


def test_build_version_is_what_the_bundled_node_reports(tmp_path: Path) -> None:
    result = polekit("build", "--board", BOARD, "--source", "--version", "1.7", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    reported: dict[str, object] = {}  # the module the node's app and check boot import
    exec((tmp_path / "lib/node/version.py").read_text(), reported)
    assert reported["VERSION"] == (1, 7)
    assert "from .version import VERSION\n" in (tmp_path / "lib/node/app.py").read_text()
    bad = polekit("build", "--board", BOARD, "--version", "1.x", "-o", str(tmp_path))
    assert bad.returncode == 1 and "is not MAJOR.MINOR" in bad.stderr
    unsigned = polekit("build", "--board", BOARD, "--min-version", "0.1", "-o", str(tmp_path))
    assert unsigned.returncode == 2 and "add --sign" in unsigned.stderr


def test_the_signed_bundle_round_trips_through_load_signed_and_check_manifest(
    signed: dict[str, Path],
) -> None:
    raw, sig, files = signing.load_signed(signed["dir"])
    pub = signing.public_key_raw(signed["pub"])
    m = signing.check_manifest(raw, sig, pub, BOARD, "0.1")
    assert [f["path"] for f in m["files"]] == list(files)
    assert all(len(files[f["path"]]) == f["size"] for f in m["files"])
    assert manifest.check_manifest(raw, sig, pub, BOARD, (0, 1)) == m  # the node's pure code


def _resign(raw: bytes, key: Ed25519PrivateKey, **changes: object) -> tuple[bytes, bytes]:
    m = cbor.loads(raw)
    m.update(changes)
    new = cbor.dumps(m, canonical=True)
    return new, key.sign(new)


def _cases(signed: dict[str, Path]) -> list[dict[str, object]]:
    """(name, manifest, sig, key, board, running version, expected code) for every refusal."""
    raw, sig, _files = signing.load_signed(signed["dir"])
    pub = signing.public_key_raw(signed["pub"])
    key = _private(signed["key"])
    m = cbor.loads(raw)
    tampered = dict(m)
    tampered["files"] = [dict(f) for f in m["files"]]
    tampered["files"][0]["sha256"] = hashlib.sha256(b"changed after signing").digest()
    other = _private(signed["other"]).sign(raw)
    old, old_sig = _resign(raw, key, version="0.0")
    down, down_sig = _resign(raw, key, version="0.0", downgrade=True)
    junk = b"\xa1\x61x\x01"
    loose = cbor2.dumps({**m, "board": BOARD})  # same content, not deterministic bytes
    loose = loose if loose != raw else b"\xbf" + raw[1:]
    return [
        {"name": "good", "manifest": raw, "sig": sig, "key": pub, "running": "0.1", "code": 0},
        {"name": "same_version", "manifest": raw, "sig": sig, "key": pub, "running": "0.2",
         "code": 0},
        {"name": "another_key", "manifest": raw, "sig": other, "key": pub, "running": "0.1",
         "code": manifest.BAD_SIGNATURE},
        {"name": "file_hash_changed_after_signing", "manifest": cbor.dumps(tampered, True),
         "sig": sig, "key": pub, "running": "0.1", "code": manifest.BAD_SIGNATURE},
        {"name": "another_board", "manifest": raw, "sig": sig, "key": pub, "running": "0.1",
         "board": "community-node-c3", "code": manifest.OTHER_BOARD},
        {"name": "downgrade", "manifest": old, "sig": old_sig, "key": pub, "running": "0.1",
         "code": manifest.DOWNGRADE},
        {"name": "downgrade_allowed", "manifest": down, "sig": down_sig, "key": pub,
         "running": "0.1", "code": 0},
        {"name": "running_older_than_min_version", "manifest": raw, "sig": sig, "key": pub,
         "running": "0.0", "code": manifest.TOO_OLD},
        {"name": "signed_junk", "manifest": junk, "sig": key.sign(junk), "key": pub,
         "running": "0.1", "code": manifest.MALFORMED},
        {"name": "not_deterministic_cbor", "manifest": loose, "sig": key.sign(loose),
         "key": pub, "running": "0.1", "code": manifest.MALFORMED},
        {"name": "no_key_installed", "manifest": raw, "sig": sig, "key": b"", "running": "0.1",
         "code": manifest.NO_KEY},
    ]  # fmt: skip


def test_each_refusal_has_its_code_on_cpython(signed: dict[str, Path]) -> None:
    for case in _cases(signed):
        args = (case["manifest"], case["sig"], case["key"], case.get("board", BOARD))
        for check in (signing.check_manifest, manifest.check_manifest):
            if case["code"] == 0:
                assert check(*args, case["running"])["board"] == BOARD  # type: ignore[operator]
                continue
            with pytest.raises(ManifestError) as err:
                check(*args, case["running"])  # type: ignore[operator]
            assert err.value.code == case["code"], (case["name"], str(err.value))
            assert str(err.value).startswith("[code:%d] " % case["code"])


def test_each_refusal_has_its_code_inside_the_micropython_vm(
    signed: dict[str, Path], tmp_path: Path
) -> None:
    cases = _cases(signed)
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            [
                {
                    "name": c["name"],
                    "manifest": c["manifest"].hex(),  # type: ignore[union-attr]
                    "sig": c["sig"].hex(),  # type: ignore[union-attr]
                    "key": c["key"].hex(),  # type: ignore[union-attr]
                    "board": c.get("board", BOARD),
                    "running": c["running"],
                }
                for c in cases
            ]
        )
    )
    script = (ROOT / "tests" / "mpy" / "manifest_cases.py").read_text()
    mounts = {ROOT / "protocols": "/lib/protocols", VMLIB: "/lib", tmp_path: "/cases"}
    result = run_script(script, mounts)
    assert result.returncode == 0, result.stdout + result.stderr
    got = {w[1]: w[2:] for w in map(str.split, result.stdout.splitlines()) if w[0] == "case"}
    same = {w[1]: w[2] for w in map(str.split, result.stdout.splitlines()) if w[0] == "bytes"}
    for c in cases:
        assert got[c["name"]] == [str(c["code"])] * 2, c["name"]  # type: ignore[index]
        if c["code"] == 0:
            assert same[c["name"]] == "1", c["name"]  # type: ignore[index]


def test_refusal_texts_name_each_code_once() -> None:
    codes = [
        manifest.BAD_SIGNATURE, manifest.OTHER_BOARD, manifest.DOWNGRADE, manifest.TOO_OLD,
        manifest.TOO_LARGE, manifest.MALFORMED, manifest.NO_KEY, manifest.FILE_HASH,
    ]  # fmt: skip
    assert sorted(codes) == list(range(1, 9)) and sorted(manifest.REASONS) == codes


@pytest.mark.parametrize(
    "path", ["main.py", "/lib/x.mpy", "lib/../main.py", "lib//x", "ota.pub", "config.json"]
)
def test_a_manifest_cannot_name_the_nodes_own_files_or_escape_its_folder(
    path: str, tmp_path: Path
) -> None:
    key_path, pub_path = signing.new_key(tmp_path / "k")
    key = _private(key_path)
    m = signing.manifest_map({"lib/node/app.mpy": b"x"}, BOARD, "0.2", "0.1")
    m["files"][0]["path"] = path
    raw = cbor.dumps(m, canonical=True)
    with pytest.raises(ManifestError) as err:
        signing.check_manifest(raw, key.sign(raw), signing.public_key_raw(pub_path), BOARD, "0.1")
    assert err.value.code == manifest.MALFORMED
