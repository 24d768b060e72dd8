"""A keyed community node's signed SETTINGS write (firmware/node/signed.py, the MicroPython
code run here under CPython): any bytes a central writes give (settings, after) or
ValueError with the reason; nothing else may escape, or the node's main loop would stop.
The structured inputs are signed with the right key for the right challenge, so the fuzz
reaches the CBOR parsing and the checks behind the tag."""

from __future__ import annotations

import importlib
import sys

from hypothesis import strategies as st

from polekit.gateway.ble_commands import sign_settings
from polekit.protocols import cbor

RAISES = (ValueError,)
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
CHALLENGE = bytes.fromhex("0001000599aabbcc")
SALT = bytes.fromhex("01020304")


def _open_signed():  # type: ignore[no-untyped-def]
    # the node imports ``protocols`` as a top-level package (/lib/protocols on the board)
    for name in ("protocols", "protocols.errors", "protocols.cbor", "protocols.ccm"):
        sys.modules.setdefault(name, importlib.import_module("polekit." + name))
    return importlib.import_module("polekit.firmware.node.signed").open_signed


def fuzz(data: bytes) -> None:
    changes, after = _open_signed()(data, KEY, CHALLENGE)
    assert isinstance(changes, dict)
    assert after is None or (isinstance(after, int) and 0 <= after <= 0xFFFFFFFF)
    assert changes or after is not None


def _signed(msg: bytes) -> bytes:
    return sign_settings(KEY, CHALLENGE, msg, SALT)


def seeds() -> list[bytes]:
    return [
        _signed(cbor.dumps({"set": {"lamp_level": 40}})),
        _signed(cbor.dumps({"set": {"advert_s": 60}, "after": 0x00290004})),
        _signed(cbor.dumps({"after": 7})),
        cbor.dumps({"lamp_level": 77}),  # a phone's unsigned write
    ]


INPUTS = st.one_of(
    st.binary(max_size=600).map(_signed),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=10,
    ).map(lambda v: _signed(cbor.dumps({"set": v, "after": 1} if isinstance(v, dict) else v))),
)
