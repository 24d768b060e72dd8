"""Ed25519 verification and SHA-512 in pure code (protocols/ed25519.py, sha512.py), as the
node runs them: against RFC 8032 section 7.1's test vectors and against `cryptography`
(OpenSSL) on CPython and inside the MicroPython VM, rejections included."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from polekit.firmware.deploy.signing import verify as openssl_verify
from polekit.hil.mpvm import VMLIB, run_script
from polekit.protocols import ed25519
from polekit.protocols.sha512 import SHA512, sha512

from conftest import ROOT, VECTORS, load_vectors

V = load_vectors("ed25519")
# garbage one step of verify_async() may make: an ESP32 without PSRAM leaves ~110 KiB to
# MicroPython, the node holds less than half of it (tests/test_micropython.py)
STEP_BYTES_MAX = 24 * 1024
ALL = V["rfc8032"] + V["rejected"] + V["refused_beyond_openssl"]


def _args(case: dict) -> tuple[bytes, bytes, bytes]:
    return (
        bytes.fromhex(case["public"]),
        bytes.fromhex(case["message"]),
        bytes.fromhex(case["signature"]),
    )


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize("case", V["rfc8032"], ids=lambda c: c["name"])
def test_rfc8032_vectors_verify_as_cryptography_signs_them(case: dict) -> None:
    # the transcription is checked by OpenSSL: from the RFC's secret key it makes the
    # RFC's public key and signature (Ed25519 signing is deterministic)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["secret"]))
    pk, msg, sig = _args(case)
    assert _raw(key) == pk and key.sign(msg) == sig
    assert openssl_verify(pk, msg, sig) and ed25519.verify(pk, msg, sig)


@pytest.mark.parametrize("case", V["rejected"], ids=lambda c: c["name"])
def test_bad_signatures_keys_and_messages_are_rejected_as_cryptography_does(case: dict) -> None:
    assert openssl_verify(*_args(case)) is case["cryptography"] is False
    assert ed25519.verify(*_args(case)) is False


@pytest.mark.parametrize("case", V["refused_beyond_openssl"], ids=lambda c: c["name"])
def test_small_order_and_non_canonical_keys_are_refused_where_openssl_accepts(case: dict) -> None:
    # OpenSSL accepts these forgeries (R = identity, S = 0 under a small-order key): the
    # node must not, or anyone could sign an update for a node given such a key
    assert openssl_verify(*_args(case)) is case["cryptography"] is True
    assert ed25519.verify(*_args(case)) is False


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300), st.integers(0, 511))
def test_random_keys_and_messages_agree_with_cryptography(
    seed: bytes, msg: bytes, bit: int
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pk, sig = _raw(key), key.sign(msg)
    assert ed25519.verify(pk, msg, sig) is True
    bad = bytearray(sig)
    bad[bit // 8] ^= 1 << bit % 8
    assert ed25519.verify(pk, msg, bytes(bad)) is openssl_verify(pk, msg, bytes(bad)) is False
    assert ed25519.verify(pk, msg + b"\0", sig) is False


def test_verify_async_yields_between_steps_and_agrees() -> None:
    case = V["rfc8032"][3]  # TEST 1024: 1023 bytes, several SHA-512 blocks
    yields = 0

    async def main() -> bool:
        nonlocal yields
        job = asyncio.ensure_future(ed25519.verify_async(*_args(case)))
        while not job.done():
            yields += 1
            await asyncio.sleep(0)
        return job.result()

    assert asyncio.run(main()) is True
    assert yields > 64, f"only {yields} steps: the event loop would stall"
    bad = V["rejected"][0]
    assert asyncio.run(ed25519.verify_async(*_args(bad))) is False


@pytest.mark.parametrize("n", [0, 1, 55, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256])
def test_sha512_matches_hashlib_around_the_padding_boundary(n: int) -> None:
    data = random.Random(n).randbytes(n)
    assert sha512(data).digest() == hashlib.sha512(data).digest()


@settings(max_examples=200)
@given(st.binary(max_size=700), st.integers(1, 200))
def test_sha512_matches_hashlib_on_random_input_fed_in_pieces(data: bytes, piece: int) -> None:
    h = SHA512()
    for i in range(0, len(data), piece):
        h.update(data[i : i + piece])
    assert h.digest() == hashlib.sha512(data).digest()


def test_vectors_agree_with_cryptography_inside_the_micropython_vm() -> None:
    script = (ROOT / "tests" / "mpy" / "ed25519_cases.py").read_text()
    mounts = {ROOT / "protocols": "/lib/protocols", VMLIB: "/lib", VECTORS: "/vectors"}
    result = run_script(script, mounts)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split("\n")
    cases = {w[1]: w[2:] for w in (x.split() for x in lines) if w and w[0] == "case"}
    for case in ALL:
        expect = str(int(case in V["rfc8032"]))
        assert cases[case["name"].replace(" ", "_")][:2] == [expect, expect], case["name"]
    for w in (x.split() for x in lines):
        if w and w[0] == "sha512":
            n = int(w[1])
            data = bytes((i * 7 + n) & 0xFF for i in range(n))
            assert w[2] == hashlib.sha512(data).hexdigest(), n
    times = {name: int(w[2]) for name, w in cases.items() if name.startswith("TEST")}
    print("verify in the MicroPython VM (ms, unthrottled):", times)


def test_the_base_point_table_holds_the_multiples_of_b() -> None:
    # the literals in ed25519.py: [i]B, from the RFC 8032 base point, as (Y+X, Y-X, 2dT, 2);
    # the same as the table verify() builds for a public key
    p, d = ed25519.P, ed25519.D
    bx, by = ed25519._BX, ed25519._BY
    assert (by * by - bx * bx - 1 - d * bx * bx * by * by) % p == 0  # -x^2 + y^2 = 1 + dx^2y^2
    point = (bx, by, 1, bx * by % p)
    acc = point
    for i in range(1, 16):
        x, y, z, t = acc
        zi = pow(z, p - 2, p)
        x, y = x * zi % p, y * zi % p
        assert ed25519._BASE[i] == ((y + x) % p, (y - x) % p, 2 * d * x * y % p, 2), i
        acc = ed25519._add(acc, ed25519._cached(point))
    built: list = []
    for _ in ed25519._table(point, built):
        pass
    for i in range(1, 16):
        yp, ym, t2, z2 = built[i]
        zi = pow(z2 * pow(2, p - 2, p) % p, p - 2, p)
        assert ed25519._BASE[i] == (yp * zi % p, ym * zi % p, t2 * zi % p, 2), i


def test_each_async_step_makes_little_enough_garbage_for_the_emulated_esp32(
    tmp_path: Path,
) -> None:
    # the emulated board collects garbage only at the yields (docs/hil.md): what one step
    # allocates must fit in the heap an update leaves free, with room to spare
    case = V["rfc8032"][3]  # TEST 1024: several SHA-512 blocks
    (tmp_path / "case").mkdir()
    for name, key in (("pk", "public"), ("msg", "message"), ("sig", "signature")):
        (tmp_path / "case" / name).write_bytes(bytes.fromhex(case[key]))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "ed25519_heap.py").write_bytes(
        (ROOT / "tests" / "mpy" / "ed25519_heap.py").read_bytes()
    )
    mounts = {
        ROOT / "protocols": "/lib/protocols",
        tmp_path / "lib": "/jobs",
        tmp_path / "case": "/ed25519_case",
    }
    script = "import sys\nsys.path.append('/jobs')\nimport ed25519_heap\n"
    result = run_script(script + "await ed25519_heap.main()\nprint(ed25519_heap.RESULT)", mounts)
    assert result.returncode == 0, result.stderr
    ok, _ms, steps, _total, step_bytes = result.stdout.strip()[1:-1].split(", ")
    print(f"{steps} steps, at most {step_bytes} bytes allocated by one")
    assert ok == "True" and int(step_bytes) < STEP_BYTES_MAX
