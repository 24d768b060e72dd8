"""SenML: the RFC 8428 examples decode and resolve as the RFC says; bad packs are refused."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polekit.protocols import senml
from polekit.protocols.errors import SenMLError

from conftest import from_tagged, load_vectors

VECTORS = load_vectors("senml")
EXAMPLES = VECTORS["examples"]


def _approx(records: list[dict]) -> list[dict]:
    return [
        {k: pytest.approx(v) if isinstance(v, float) else v for k, v in r.items()} for r in records
    ]


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e["name"])
def test_rfc_example_resolves(ex: dict) -> None:
    resolved = senml.resolve(senml.decode_json(ex["json"]), now=ex["now"])
    assert resolved == _approx(from_tagged(ex["resolved"]))


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: e["name"])
def test_rfc_example_survives_cbor_and_json_round_trips(ex: dict) -> None:
    pack = senml.decode_json(ex["json"])
    via_cbor = senml.decode_cbor(senml.encode_cbor(pack))
    via_json = senml.decode_json(senml.encode_json(pack))
    assert via_cbor == pack
    assert via_json == pack
    # the integer labels are the RFC's: the reference CBOR library reads the same map
    raw = cbor2.loads(senml.encode_cbor(pack))
    assert all(isinstance(k, int) for rec in raw for k in rec)


def test_rfc_cbor_example_decodes_to_the_json_example() -> None:
    ex = next(e for e in EXAMPLES if "cbor" in e)
    from_cbor = senml.decode_cbor(bytes.fromhex(ex["cbor"].replace(" ", "")))
    assert senml.resolve(from_cbor, now=ex["now"]) == senml.resolve(
        senml.decode_json(ex["json"]), now=ex["now"]
    )


def test_relative_times_use_now() -> None:
    resolved = senml.resolve([{"n": "a", "v": 1, "t": -10}], now=1_700_000_000)
    assert resolved[0]["t"] == 1_699_999_990


def test_base_value_and_sum_are_added() -> None:
    resolved = senml.resolve(
        [{"bn": "x", "bv": 10, "bs": 5, "v": 1, "s": 2}, {"n": "y"}], now=2**30
    )
    assert (resolved[0]["v"], resolved[0]["s"]) == (11, 7)
    assert resolved[1]["v"] == 10


@pytest.mark.parametrize("text", VECTORS["invalid"])
def test_invalid_pack_is_refused_with_a_senml_error(text: str) -> None:
    with pytest.raises(SenMLError):
        senml.decode_json(text)


@pytest.mark.parametrize("hex_", VECTORS["invalid_cbor"], ids=lambda h: h[:24])
def test_invalid_cbor_pack_is_refused_with_a_senml_error(hex_: str) -> None:
    with pytest.raises(SenMLError):
        senml.decode_cbor(bytes.fromhex(hex_))


def test_unknown_optional_field_is_kept_and_mandatory_one_refused() -> None:
    assert senml.decode_json('[{"n":"a","v":1,"foo":2}]')[0]["foo"] == 2
    with pytest.raises(SenMLError, match="mandatory"):
        senml.encode_cbor([{"n": "a", "v": 1, "bar_": 1}])


def test_vd_is_base64url_in_json_and_bytes_in_cbor() -> None:
    pack = [{"n": "raw", "vd": b"\xfb\xff\x00"}]
    assert json.loads(senml.encode_json(pack))[0]["vd"] == "-_8A"
    assert cbor2.loads(senml.encode_cbor(pack))[0][8] == b"\xfb\xff\x00"


def test_pack_readings_uses_primary_units_by_default() -> None:
    pack = senml.pack_readings(
        "371600PL000001C",
        [
            ("temperature", 23.45, "Cel"),
            ("pm2_5", 12, "ug/m3"),
            ("lamp_level", 40, "/100"),
            ("door_open", True, None),
            ("seq", 7, None),
        ],
        base_time=1_700_000_000,
    )
    assert pack[0]["bn"] == "urn:dev:pk:371600PL000001C:"
    assert "bver" not in pack[0]
    units = {r["n"]: r.get("u") for r in pack}
    assert units == {
        "temperature": "Cel",
        "pm2_5": "kg/m3",
        "lamp_level": "/",
        "door_open": None,
        "seq": None,
    }
    values = {r["n"]: r.get("v", r.get("vb")) for r in pack}
    assert (
        values["pm2_5"] == 1.2e-08 and values["lamp_level"] == 0.4 and values["door_open"] is True
    )


def test_pack_readings_secondary_units_declare_bver_26() -> None:
    pack = senml.pack_readings(
        "371600PL000001C", [("pm2_5", 12, "ug/m3"), ("co2", 0.000612, "/")], secondary=True
    )
    assert pack[0]["bver"] == 26
    assert [(r["u"], r["v"]) for r in pack] == [("ug/m3", 12), ("ppm", 612)]


def test_pack_readings_refuses_a_unit_of_another_quantity() -> None:
    with pytest.raises(SenMLError, match="convert"):
        senml.pack_readings("371600PL000001C", [("temperature", 1, "hPa")])


def test_a_bignum_where_a_name_belongs_is_refused_with_a_senml_error() -> None:
    # a 4,301-digit integer: CPython refuses to print it, so the error message must not try
    raw = cbor2.dumps([{0: 10**4300}])
    with pytest.raises(SenMLError, match="wrong type"):
        senml.decode_cbor(raw)
    with pytest.raises(SenMLError, match="bver"):
        senml.decode_cbor(cbor2.dumps([{-1: -(10**4300), 0: "a", 2: 1}]))


@pytest.mark.parametrize(
    "pack",
    [
        [{"bt": 10**400, "n": "a", "v": 1}],
        [{"bt": 10**400, "n": "a", "v": 1, "t": 0.5}],
        [{"n": "a", "v": -(10**400)}],
        [{"n": "a", "bv": 1.5, "v": 10**309}],
        [{"n": "a", "bs": 10**309, "s": 1}],
    ],
)
def test_numbers_beyond_a_double_are_refused_with_a_senml_error(pack: list[dict]) -> None:
    # SenML numbers are IEEE 754 doubles in JSON and CBOR alike; an integer past a double's
    # range used to escape resolve() as OverflowError (int + float)
    with pytest.raises(SenMLError, match="range"):
        senml.resolve(pack, now=1_700_000_000)
    text = json.dumps(pack)
    with pytest.raises(SenMLError):
        senml.decode_json(text)


def test_json_nested_too_deep_is_refused_with_a_senml_error() -> None:
    with pytest.raises(SenMLError):
        senml.decode_json("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("vec", VECTORS["ignored_cbor_labels"], ids=lambda v: v["json"])
def test_unknown_cbor_labels_other_than_text_are_ignored(vec: dict) -> None:
    # RFC 8428 section 6 and the senml+cbor media type: keys not understood are ignored. A
    # bignum label used to stay in the record and make encode_cbor raise ValueError (its
    # text form has more than 4300 digits); CBOR true used to pass for label 1, the unit.
    pack = senml.decode_cbor(bytes.fromhex(vec["cbor"]))
    assert pack == senml.decode_json(vec["json"])
    assert senml.decode_cbor(senml.encode_cbor(pack)) == pack


# RFC 8428 table 4's labels, in the order polekit writes them (bver, base fields, then n, u,
# the values, s, t, ut); extension labels follow, sorted
_RFC_LABELS = [
    ("bver", -1),
    ("bn", -2),
    ("bt", -3),
    ("bu", -4),
    ("bv", -5),
    ("bs", -6),
    ("n", 0),
    ("u", 1),
    ("v", 2),
    ("vs", 3),
    ("vb", 4),
    ("vd", 8),
    ("s", 5),
    ("t", 6),
    ("ut", 7),
]
_names = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9:./_-]{0,20}", fullmatch=True)
_numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(
    allow_nan=False, allow_infinity=False
)
_value_fields = {
    "v": _numbers,
    "vs": st.text(max_size=12),
    "vb": st.booleans(),
    "vd": st.binary(max_size=12),
}
_other_fields = {
    "bver": st.integers(min_value=0, max_value=2**40),
    "bn": _names,
    "bt": _numbers,
    "bu": st.text(max_size=6),
    "bv": _numbers,
    "bs": _numbers,
    "u": st.text(max_size=6),
    "s": _numbers,
    "t": _numbers,
    "ut": _numbers,
    "x-ext": st.text(max_size=6) | _numbers,
    "ext2": st.booleans() | st.none(),
}


@st.composite
def _records(draw: st.DrawFn) -> dict:
    rec = {"n": draw(_names)}
    for key in draw(st.lists(st.sampled_from(sorted(_other_fields)), unique=True)):
        rec[key] = draw(_other_fields[key])
    value = draw(st.sampled_from([None, *_value_fields]))
    if value:
        rec[value] = draw(_value_fields[value])
    # the keys arrive in any order; the bytes must not depend on it
    order = draw(st.permutations(list(rec)))
    return {k: rec[k] for k in order}


@given(st.lists(_records(), max_size=6))
def test_cbor_pack_is_byte_identical_to_cbor2_in_the_fixed_label_order(pack: list[dict]) -> None:
    # the reference is cbor2 (maps in iteration order) fed the RFC's integer labels in the
    # documented order: what the board and the gateway must both produce for the same pack
    expected = []
    for rec in pack:
        m = {label: rec[key] for key, label in _RFC_LABELS if key in rec}
        for key in sorted(k for k in rec if k not in dict(_RFC_LABELS)):
            m[key] = rec[key]
        expected.append(m)
    assert senml.encode_cbor(pack) == cbor2.dumps(expected)


def test_pack_readings_with_a_targets_memo_builds_the_same_pack_and_keeps_one_entry_a_point() -> (
    None
):
    # the gateway passes one memo for all its polls: the model's tables are searched once a
    # point, and the pack is the same as without it
    readings = [
        ("temperature", 23.45, "Cel"),
        ("pm2_5", 12, "ug/m3"),
        ("door_open", True, None),
        ("r0", 5, "mV"),
        ("seq", 7, None),
    ]
    expected = {
        False: {("temperature", "Cel"): "Cel", ("pm2_5", "ug/m3"): "kg/m3", ("r0", "mV"): "V"},
        True: {("temperature", "Cel"): "Cel", ("pm2_5", "ug/m3"): "ug/m3", ("r0", "mV"): "mV"},
    }
    for secondary in (False, True):
        targets: dict = {}
        packs = [
            senml.pack_readings("371600PL000001C", readings, 1_700_000_000, secondary, targets)
            for _ in range(3)
        ]
        assert (
            packs[0]
            == packs[2]
            == senml.pack_readings("371600PL000001C", readings, 1_700_000_000, secondary)
        )
        assert targets == {**expected[secondary], ("seq", None): None}


def test_a_model_quantity_without_a_unit_is_refused_with_a_memo_too() -> None:
    targets: dict = {}
    for _ in range(2):
        with pytest.raises(SenMLError, match="no unit; expected one convertible to Cel"):
            senml.pack_readings("371600PL000001C", [("temperature", 1, None)], targets=targets)
    assert targets == {}
