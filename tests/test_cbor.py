"""CBOR: byte-identical to cbor2 on encode, round-trips on decode, fails cleanly on bad input."""

from __future__ import annotations

import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polekit.protocols import cbor
from polekit.protocols.errors import CBORDecodeError, ProtocolError

from conftest import from_tagged, load_vectors

VECTORS = load_vectors("cbor")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=40)
    | st.text(max_size=40)
)
keys = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.text(max_size=10)


def _values(tag: type) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(keys, inner, max_size=5)
            | st.builds(tag, st.integers(min_value=6000, max_value=2**32), inner)
        ),
        max_leaves=25,
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, cbor.Tag) and isinstance(b, cbor.Tag):
        return a.tag == b.tag and _same(a.value, b.value)
    return type(a) is type(b) and a == b


def _as_cbor2(v: object) -> object:
    if isinstance(v, cbor.Tag):
        return cbor2.CBORTag(v.tag, _as_cbor2(v.value))
    if isinstance(v, list):
        return [_as_cbor2(x) for x in v]
    if isinstance(v, dict):
        return {k: _as_cbor2(x) for k, x in v.items()}
    return v


@settings(max_examples=400)
@given(_values(cbor.Tag))
def test_encoding_is_byte_identical_to_cbor2(value: object) -> None:
    assert cbor.dumps(value) == cbor2.dumps(_as_cbor2(value))


@settings(max_examples=400)
@given(_values(cbor.Tag))
def test_decode_round_trips(value: object) -> None:
    assert _same(cbor.loads(cbor.dumps(value)), value)


@settings(max_examples=300)
@given(_values(cbor2.CBORTag))
def test_decodes_what_cbor2_encodes(value: object) -> None:
    decoded = cbor.loads(cbor2.dumps(value))
    assert cbor2.dumps(_as_cbor2(decoded)) == cbor2.dumps(value)


@pytest.mark.parametrize("vec", VECTORS["encode"], ids=lambda v: v["hex"][:24])
def test_vector_encodes_as_cbor2_does(vec: dict) -> None:
    ours = from_tagged(vec["value"], cbor.Tag)
    assert cbor2.dumps(from_tagged(vec["value"], cbor2.CBORTag)) == bytes.fromhex(vec["hex"])
    assert cbor.dumps(ours) == bytes.fromhex(vec["hex"])
    assert _same(cbor.loads(bytes.fromhex(vec["hex"])), ours)


@pytest.mark.parametrize("vec", VECTORS["decode_only"], ids=lambda v: v["hex"])
def test_half_single_and_simple_values_decode(vec: dict) -> None:
    assert _same(cbor.loads(bytes.fromhex(vec["hex"])), from_tagged(vec["value"], cbor.Tag))


@pytest.mark.parametrize("vec", VECTORS["malformed"], ids=lambda v: v["hex"] or "empty")
def test_malformed_input_raises_one_error_type(vec: dict) -> None:
    raw = bytes.fromhex(vec["hex"])
    with pytest.raises(Exception):  # noqa: B017 - the reference rejects it too
        cbor2.loads(raw)
    with pytest.raises(CBORDecodeError):
        cbor.loads(raw)


@pytest.mark.parametrize("vec", VECTORS["rejected"], ids=lambda v: v["hex"][:24])
def test_indefinite_lengths_trailing_bytes_and_unhashable_keys_are_rejected(vec: dict) -> None:
    with pytest.raises(CBORDecodeError):
        cbor.loads(bytes.fromhex(vec["hex"]))


@settings(max_examples=2000)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    try:
        cbor.loads(raw)
    except CBORDecodeError:
        pass


def test_huge_declared_lengths_fail_before_allocating() -> None:
    for raw in (b"\x5b" + b"\xff" * 8, b"\x9b" + b"\xff" * 8, b"\xbb" + b"\x7f" * 8 + b"\x00"):
        with pytest.raises(CBORDecodeError, match="left"):
            cbor.loads(raw)


def test_deep_nesting_is_bounded() -> None:
    with pytest.raises(CBORDecodeError, match="nesting"):
        cbor.loads(b"\x81" * 1000 + b"\x00")
    nested: list = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(ProtocolError, match="nesting"):
        cbor.dumps(nested)


def test_unknown_types_do_not_encode() -> None:
    with pytest.raises(ProtocolError, match="set"):
        cbor.dumps({1, 2})
