"""SenML resolution (senml.resolve, RFC 8428 section 4.6) of any pack the decoders accept:
JSON when the input starts with '[', CBOR otherwise. Only SenMLError may come out; every
resolved record has a name and a time."""

from __future__ import annotations

from hypothesis import strategies as st

from polekit.protocols import senml
from polekit.protocols.errors import SenMLError

from targets import _senml

RAISES = (SenMLError,)
NOW = 1_700_000_000.5


def fuzz(data: bytes) -> None:
    pack = senml.decode_json(data) if data[:1] == b"[" else senml.decode_cbor(data)
    for record in senml.resolve(pack, now=NOW):
        assert "n" in record and "t" in record, record


def seeds() -> list[bytes]:
    return _senml.json_seeds() + _senml.cbor_seeds()


INPUTS = st.one_of(_senml.json_packs, _senml.cbor_packs)
