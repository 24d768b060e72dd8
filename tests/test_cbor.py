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


@pytest.mark.parametrize("vec", VECTORS["canonical"], ids=lambda v: v["hex"][:24])
def test_canonical_vector_encodes_as_cbor2_canonical_does(vec: dict) -> None:
    # the VM replays these too (tests/mpy/replay_vectors.py): same bytes on both interpreters
    assert cbor.dumps(from_tagged(vec["value"], cbor.Tag), canonical=True).hex() == vec["hex"]
    assert cbor2.dumps(from_tagged(vec["value"], cbor2.CBORTag), canonical=True).hex() == vec["hex"]


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


# Deterministic encoding (RFC 8949 section 4.2.1). cbor2's canonical=True orders map keys
# length first (RFC 7049's canonical order, RFC 8949 section 4.2.3); the orders agree when
# every key of a map encodes to the same number of bytes or is text shorter than 24 bytes,
# so the property test against cbor2 draws its keys from those.
canonical_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=40)
)
same_order_keys = st.text(max_size=23) | st.integers(min_value=-24, max_value=23)


def _canonical_values(tag: type) -> st.SearchStrategy:
    return st.recursive(
        canonical_scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(same_order_keys, inner, max_size=6)
            | st.builds(tag, st.integers(min_value=6000, max_value=2**32), inner)
        ),
        max_leaves=30,
    )


@settings(max_examples=400)
@given(_canonical_values(cbor.Tag))
def test_canonical_encoding_is_byte_identical_to_cbor2_canonical(value: object) -> None:
    assert cbor.dumps(value, canonical=True) == cbor2.dumps(_as_cbor2(value), canonical=True)


@settings(max_examples=300)
@given(st.dictionaries(keys, st.integers(), max_size=8))
def test_canonical_maps_do_not_depend_on_insertion_order(value: dict) -> None:
    reordered = dict(reversed(list(value.items())))
    raw = cbor.dumps(value, canonical=True)
    assert cbor.dumps(reordered, canonical=True) == raw
    # RFC 8949 4.2.1: the pairs sorted by the bytes of their keys as cbor2 encodes them
    pairs = sorted(zip([cbor2.dumps(k) for k in value], value.values(), strict=True))
    body = b"".join(k + cbor2.dumps(v) for k, v in pairs)
    assert raw.endswith(body) and cbor.loads(raw) == value


def test_canonical_key_order_is_bytewise_not_length_first() -> None:
    # RFC 8949 section 4.2.3's example of where the two orders differ: 10 (0x0a) < 100
    # (0x1864) < -1 (0x20) bytewise; length first puts -1 before 100
    value = {-1: 0, 100: 0, 10: 0}
    assert cbor.dumps(value, canonical=True).hex() == "a30a001864002000"
    assert cbor2.dumps(value, canonical=True).hex() == "a30a002000186400"


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        # RFC 8949 appendix A: the shortest float forms a deterministic encoder must pick
        (0.0, "f90000"),
        (-0.0, "f98000"),
        (1.0, "f93c00"),
        (1.1, "fb3ff199999999999a"),
        (1.5, "f93e00"),
        (65504.0, "f97bff"),
        (100000.0, "fa47c35000"),
        (3.4028234663852886e38, "fa7f7fffff"),
        (1.0e300, "fb7e37e43c8800759c"),
        (5.960464477539063e-8, "f90001"),
        (0.00006103515625, "f90400"),
        (-4.0, "f9c400"),
        (-4.1, "fbc010666666666666"),
        (float("inf"), "f97c00"),
        (float("nan"), "f97e00"),
        (float("-inf"), "f9fc00"),
        # and its integers, strings, arrays and maps, already in their shortest forms
        (1000000000000, "1b000000e8d4a51000"),
        (-1000, "3903e7"),
        ("\u00fc", "62c3bc"),
        ([1, [2, 3], [4, 5]], "8301820203820405"),
        ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
        ({1: 2, 3: 4}, "a201020304"),
        (
            {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
            "a56161614161626142616361436164614461656145",
        ),
    ],
)
def test_rfc8949_appendix_a_examples_encode_deterministically(value: object, hex_: str) -> None:
    assert cbor.dumps(value, canonical=True).hex() == hex_
    if value == value:  # NaN aside (cbor2 picks the same bytes, compared above)
        assert cbor2.dumps(value, canonical=True).hex() == hex_
