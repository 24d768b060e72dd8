"""Modbus RTU: CRC and frames agree with pymodbus's own framer; register maps are sound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from polekit.protocols import modbus, model
from polekit.protocols.errors import CRCError, FrameError, ModbusException

from conftest import load_vectors

VECTORS = load_vectors("modbus")


def test_crc_of_the_spec_example() -> None:
    assert modbus.crc16(b"\x01\x03\x00\x00\x00\x0a") == 0xCDC5


# Simply Modbus's worked examples (simplymodbus.ca, FC03 and FC16 pages): a request and
# the slave's answer each; a drop on a shared line hears both and tells them by the CRC
# at the lengths frame_lengths gives (as a request, as an answer)
@pytest.mark.parametrize(
    ("hexdata", "lengths", "size"),
    [
        ("1103006B00037687", (8, 5), 8),  # read holding registers 107..109 of unit 17
        ("110306AE415652434049AD", (8, 11), 11),  # its answer: 3 registers
        ("11100001000204000A0102C6F0", (13, 8), 13),  # write 2 registers from 1
        ("1110000100021298", (27, 8), 8),  # its answer
    ],
)
def test_frame_lengths_tell_requests_from_answers(
    hexdata: str, lengths: tuple[int, int], size: int
) -> None:
    frame = bytes.fromhex(hexdata)
    assert modbus.frame_lengths(frame) == lengths
    valid = [
        n
        for n in lengths
        if n <= len(frame)
        and modbus.crc16(frame[: n - 2]) == int.from_bytes(frame[n - 2 : n], "little")
    ]
    assert valid == [size]
    assert modbus.frame_lengths(frame[:2]) is None  # its length byte has not come yet
    assert modbus.frame_lengths(bytes([17, 43])) == ()  # unknown function: a silence ends it


@given(st.binary(max_size=256))
def test_crc_matches_pymodbus(data: bytes) -> None:
    assert FramerRTU.compute_CRC(data) == int.from_bytes(
        modbus.crc16(data).to_bytes(2, "little"), "big"
    )


@pytest.mark.parametrize("vec", VECTORS["crc"], ids=lambda v: v["hex"] or "empty")
def test_crc_vectors(vec: dict) -> None:
    assert modbus.crc16(bytes.fromhex(vec["hex"])) == vec["crc"]


@pytest.mark.parametrize("vec", VECTORS["responses"], ids=lambda v: v["fn"] + str(v["args"][1]))
def test_pymodbus_client_decodes_our_responses(vec: dict) -> None:
    raw = getattr(modbus, vec["fn"])(*vec["args"])
    assert raw.hex() == vec["hex"]
    used, pdu = FramerRTU(DecodePDU(False)).handleFrame(raw, 0, 0)
    assert used == len(raw) and pdu is not None
    assert pdu.dev_id == vec["args"][0]
    if vec["fn"] == "read_response":
        assert pdu.registers == vec["args"][2]
    elif vec["fn"] == "exception_response":
        assert pdu.exception_code == vec["args"][2]


@pytest.mark.parametrize("vec", VECTORS["requests"], ids=lambda v: v["hex"])
def test_requests_decode(vec: dict) -> None:
    raw = bytes.fromhex(vec["hex"])
    req = modbus.decode_request(raw)
    assert (req.unit, req.function, req.address, req.count, list(req.values), req.error) == (
        vec["unit"],
        vec["function"],
        vec["address"],
        vec["count"],
        vec["values"],
        vec["error"],
    )
    if vec["function"] in modbus.FUNCTIONS:
        assert modbus.request_length(raw) == len(raw)


def test_requests_pymodbus_builds_decode_the_same() -> None:
    from pymodbus.pdu.register_message import (
        ReadHoldingRegistersRequest,
        ReadInputRegistersRequest,
        WriteMultipleRegistersRequest,
        WriteSingleRegisterRequest,
    )

    framer = FramerRTU(DecodePDU(False))
    cases = [
        (ReadHoldingRegistersRequest(address=7, count=3, dev_id=5), (5, 3, 7, 3, ())),
        (ReadInputRegistersRequest(address=0, count=125, dev_id=1), (1, 4, 0, 125, ())),
        (WriteSingleRegisterRequest(address=1, registers=[55], dev_id=2), (2, 6, 1, 1, (55,))),
        (
            WriteMultipleRegistersRequest(address=2, registers=[1, 2, 3], dev_id=3),
            (3, 16, 2, 3, (1, 2, 3)),
        ),
    ]
    for pdu, expected in cases:
        raw = framer.buildFrame(pdu)
        req = modbus.decode_request(raw)
        assert (req.unit, req.function, req.address, req.count, tuple(req.values)) == expected
        assert modbus.request_length(raw[:7]) in (0, len(raw)) and modbus.request_length(
            raw
        ) == len(raw)


@pytest.mark.parametrize("hexdata", VECTORS["bad_requests"])
def test_frames_a_slave_must_ignore_raise(hexdata: str) -> None:
    with pytest.raises(FrameError):
        modbus.decode_request(bytes.fromhex(hexdata))


def test_bad_crc_is_a_crc_error() -> None:
    with pytest.raises(CRCError):
        modbus.check(bytes.fromhex("01030000000ac5ce"))


@pytest.mark.parametrize("vec", VECTORS["points"], ids=lambda v: v["point"])
def test_point_values_encode_and_decode(vec: dict) -> None:
    point = modbus.register_map(vec["map"]).point(vec["point"])
    assert point.encode(vec["value"]) == vec["registers"]
    assert point.decode(vec["registers"]) == pytest.approx(vec["value"])


def test_writable_point_refuses_out_of_range_values() -> None:
    lamp = modbus.register_map("pole-env").point("lamp_level")
    with pytest.raises(ModbusException) as err:
        lamp.encode(150)
    assert err.value.code == modbus.ILLEGAL_VALUE


@pytest.mark.parametrize("name", modbus.map_names())
def test_register_maps_have_no_overlaps_and_known_units(name: str) -> None:
    used: dict[tuple[str, int], str] = {}
    names = set()
    for p in modbus.register_map(name):
        assert p.name not in names
        names.add(p.name)
        for a in range(p.address, p.address + p.count):
            assert (p.table, a) not in used, f"{p.name} overlaps {used.get((p.table, a))}"
            used[(p.table, a)] = p.name
        q = model.quantity(p.name)
        if q is not None and q[1] is not None:
            assert (
                model.convert(1, p.unit, q[1]) is not None
            )  # the unit converts to the primary one


def test_modbus_timing_rules() -> None:
    assert modbus.char_time_s(9600) == pytest.approx(11 / 9600)
    assert modbus.t35_s(9600) == pytest.approx(3.5 * 11 / 9600)
    assert modbus.t35_s(115200) == 0.00175 and modbus.t15_s(115200) == 0.00075


def test_exception_texts() -> None:
    assert modbus.exception_text(2) == "illegal data address"
    assert modbus.exception_text(7) == "exception 7"
