"""Inputs shared by the SenML targets: packs as JSON and as CBOR (written by json and cbor2,
not by our encoders) of two kinds: records of the right shape whose numbers run to the edges
(huge integers, NaN, the infinities, 2**28), which get through validation to resolve(); and
records of any labels and values. Seeds are the RFC 8428 examples."""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
from hypothesis import strategies as st

from polekit.protocols import senml

import fuzzkit

LABELS = [f[0] for f in senml._FIELDS]
CBOR_LABELS = {f[0]: f[1] for f in senml._FIELDS}

# json writes integers of up to 4300 digits; larger ones come as text (_too_long) or CBOR
_huge = st.integers(300, 4299).map(lambda d: 10**d)
_huger = st.integers(4300, 6000).map(lambda d: 10**d)
_edges = [0, 2**28 - 1, 2**28, -(2**28), 1.7976931348623157e308, 2**1024, 5e-324, 2**64]
numbers = (
    st.integers()
    | st.floats()
    | st.sampled_from(_edges)
    | st.one_of(_huge, _huge.map(lambda n: -n))
)
names = st.text(alphabet="abcz09-:./_", min_size=1, max_size=12)
_odd_names = st.text(alphabet="abcz09-:./_ ²Ü", max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | _odd_names | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
cbor_values = json_values | st.binary(max_size=20) | _huger | _huge.map(lambda n: {n: 1})

# a record of the right shape: each field of its own type, numbers from the edges
_shaped: dict[str, st.SearchStrategy[Any]] = {
    "bver": st.integers(-1, 30) | _huge,
    "bn": names,
    "bt": numbers,
    "bu": st.sampled_from(["Cel", "V", "%RH"]),
    "bv": numbers,
    "bs": numbers,
    "n": names,
    "u": st.sampled_from(["Cel", "A", "lon"]),
    "v": numbers,
    "vs": st.text(max_size=10),
    "vb": st.booleans(),
    "vd": st.binary(max_size=10),
    "s": numbers,
    "t": numbers,
    "ut": numbers,
}
shaped_records = st.lists(
    st.fixed_dictionaries({}, optional=_shaped).map(lambda r: {"n": "a", **r}),
    min_size=1,
    max_size=5,
)
_json_labels = st.sampled_from(LABELS) | st.text(max_size=4) | st.just("x_")
_cbor_labels = (
    st.sampled_from(LABELS).map(CBOR_LABELS.get)
    | st.integers(-(2**70), 2**70)
    | _huge
    | _huger
    | st.text(max_size=4)
    | st.binary(max_size=2)
)
wild_json_records = st.lists(st.dictionaries(_json_labels, json_values, max_size=7), max_size=5)
wild_cbor_records = st.lists(st.dictionaries(_cbor_labels, cbor_values, max_size=7), max_size=5)


def _as_json(pack: list[dict[str, Any]]) -> bytes:
    out = []
    for rec in pack:
        rec = dict(rec)
        if isinstance(rec.get("vd"), bytes):
            rec["vd"] = base64.urlsafe_b64encode(rec["vd"]).decode().rstrip("=")
        out.append(rec)
    return json.dumps(out, allow_nan=True).encode()


def _as_cbor(pack: list[dict[Any, Any]]) -> bytes:
    labelled = [{CBOR_LABELS.get(k, k): v for k, v in rec.items()} for rec in pack]
    return bytes(cbor2.dumps(labelled))


def _deep(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def _too_long(digits: int) -> bytes:
    return b'[{"n":"a","bt":1' + b"0" * digits + b',"v":1}]'


json_packs = st.one_of(
    shaped_records.map(_as_json),
    wild_json_records.map(_as_json),
    st.integers(500, 200_000).map(_deep),
    st.integers(4300, 6000).map(_too_long),
)
# unknown labels next to a record of the right shape: RFC 8428 says to ignore them
_extra_labels = st.dictionaries(
    st.integers(-(2**70), 2**70)
    | _huger
    | st.text(max_size=4)
    | st.binary(max_size=2)
    | st.booleans(),
    cbor_values,
    min_size=1,
    max_size=2,
)
cbor_packs = st.one_of(
    shaped_records.map(_as_cbor),
    st.builds(
        lambda pack, extra: [{**extra, **r} for r in pack], shaped_records, _extra_labels
    ).map(_as_cbor),
    st.lists(st.fixed_dictionaries({}, optional={**_shaped, "n": names | _huger}), max_size=3).map(
        _as_cbor
    ),
    wild_cbor_records.map(_as_cbor),
)


def json_seeds() -> list[bytes]:
    v = fuzzkit.vectors("senml")
    return [ex["json"].encode() for ex in v["examples"]] + [t.encode() for t in v["invalid"]]


def cbor_seeds() -> list[bytes]:
    v = fuzzkit.vectors("senml")
    out = [bytes.fromhex(ex["cbor"].replace(" ", "")) for ex in v["examples"] if "cbor" in ex]
    out += [senml.encode_cbor(senml.decode_json(ex["json"])) for ex in v["examples"]]
    return out
