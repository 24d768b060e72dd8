"""CBOR decoding (protocols/cbor.py): any bytes give a value or CBORDecodeError, and a
value the decoder returns encodes again, to bytes that decode to the same encoding."""

from __future__ import annotations

import cbor2
from hypothesis import strategies as st

from polekit.protocols import cbor
from polekit.protocols.errors import CBORDecodeError

import fuzzkit

RAISES = (CBORDecodeError,)


def fuzz(data: bytes) -> None:
    value = cbor.loads(data)
    again = cbor.dumps(value)
    # NaN map keys are the exception: every NaN encodes as f97e00, so keys that were distinct
    # NaNs become duplicates (the last wins) once decoded again
    same = cbor.dumps(cbor.loads(again)) == again
    assert same or _nan_in_keys(value), "a decoded value does not round-trip"


def _nan_in_keys(value: object, in_key: bool = False) -> bool:
    if isinstance(value, float):
        return in_key and value != value
    if isinstance(value, dict):
        return any(_nan_in_keys(k, True) or _nan_in_keys(v, in_key) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_nan_in_keys(x, in_key) for x in value)
    if isinstance(value, cbor.Tag):
        return _nan_in_keys(value.value, in_key)
    return False


def seeds() -> list[bytes]:
    v = fuzzkit.vectors("cbor")
    hexes = [x["hex"] for k in ("encode", "decode_only", "malformed", "rejected") for x in v[k]]
    hexes += [ex["cbor"] for ex in fuzzkit.vectors("senml")["examples"] if "cbor" in ex]
    # a map keyed by an array holding a map (unhashable) and a bignum
    hexes.append("a182c24101a001")
    return [bytes.fromhex(h.replace(" ", "")) for h in hexes]


# Values as cbor2 (the reference encoder) writes them: huge bignums, deep nesting, tags,
# maps keyed by arrays, NaN.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(0, 5000).map(lambda d: 10**d)
    | st.integers(0, 5000).map(lambda d: -(10**d))
    | st.floats()
    | st.binary(max_size=40)
    | st.text(max_size=40)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_scalars, inner, max_size=4)
        | st.lists(_scalars, min_size=1, max_size=2).map(lambda key: {tuple(key): 1})
        | st.builds(cbor2.CBORTag, st.integers(6, 2**64 - 1), inner)
    ),
    max_leaves=20,
)


def _nested(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


def _array_key(value: object) -> bytes:
    # a map keyed by [value, {}]: unhashable, and the error message shows the key
    return b"\xa1\x82" + cbor2.dumps(value) + b"\xa0\x01"


INPUTS = st.one_of(
    _values.map(cbor2.dumps),
    _values.map(_array_key),
    st.builds(_nested, _values, st.integers(25, 40)).map(cbor2.dumps),
)
