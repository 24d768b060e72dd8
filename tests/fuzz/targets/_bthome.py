"""Inputs shared by the BTHome targets: service data built object by object from the
BTHome table (ids, sizes, text and raw lengths, right and wrong), and the spec's bind key."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import strategies as st

from polekit.protocols import bthome

import fuzzkit

ROWS = [bthome._row(line) for line in bthome.TABLE.strip().split("\n")]
# the bthome.io example key and MAC (tests/vectors/bthome.json)
SPEC = fuzzkit.vectors("bthome")["encrypted"][0]
KEY = bytes.fromhex(SPEC["key"])
MAC = bytes.fromhex(SPEC["mac"].replace(":", ""))


@st.composite
def _object(draw: st.DrawFn) -> bytes:
    row = draw(st.sampled_from(ROWS))
    obj_id, kind, size = row[0], row[2], row[3]
    if draw(st.integers(0, 9)) == 0:
        obj_id = draw(st.integers(0, 255))  # an id the table may not have
    if kind in "tr":
        body = draw(st.binary(max_size=12)) if kind == "r" else draw(st.text()).encode()
        length = draw(st.sampled_from([len(body), len(body), len(body) + 1, 255]))
        return bytes((obj_id, length & 0xFF)) + body
    size += draw(st.sampled_from([0, 0, 0, -1, 1]))
    return bytes((obj_id,)) + draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))


_info = st.sampled_from([0x40, 0x40, 0x44, 0x41, 0x45, 0x00, 0x20, 0x60, 0xFF])
plaintexts = st.lists(_object(), max_size=8).map(b"".join)
plain_adverts = st.builds(lambda info, body: bytes((info,)) + body, _info, plaintexts)


def seal(body: bytes, counter: int, trigger: bool) -> bytes:
    """An encrypted advert of ``body`` under the spec key, sealed with the cryptography
    package's AES-CCM (the reference, not our ccm.py)."""
    info = 0x41 | (0x04 if trigger else 0)
    count = counter.to_bytes(4, "little")
    nonce = MAC + b"\xd2\xfc" + bytes((info,)) + count
    sealed = AESCCM(KEY, tag_length=4).encrypt(nonce, body, None)
    return bytes((info,)) + sealed[:-4] + count + sealed[-4:]


encrypted_adverts = st.builds(seal, plaintexts, st.integers(0, 2**32 - 1), st.booleans())


def plain_seeds() -> list[bytes]:
    v = fuzzkit.vectors("bthome")
    hexes = [x["hex"] for x in v["plain"]] + v["malformed"]
    return [bytes.fromhex(h) for h in hexes]
