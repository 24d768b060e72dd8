"""DL/T 645-2007 framing (protocols/dlt645.py) against references we did not write:

- the `dlt645` package from PyPI (an independent implementation, Apache-2.0): its frame
  builder (``DLT645Protocol.build_frame``) for every request we send, and its meter
  (``MeterServerService.handle_request``, fed our request) for every answer, normal,
  read-address and exception, byte for byte;
- frames published with their decoded values (cited at each vector).

The package takes the address as the 6 bytes of the wire (lowest first); its
``MeterClientService.set_address("...")`` would not reverse the digits, so the address
bytes are handed to it directly, as the standard lays them out (section 4.3.2).
"""

from __future__ import annotations

import struct

import pytest
from dlt645 import DLT645Protocol, MeterServerService
from dlt645.common.transform import float_to_bcd
from dlt645.model.types.dlt645_type import CtrlCode, ErrorCode
from hypothesis import given
from hypothesis import strategies as st

from polekit.protocols import dlt645
from polekit.protocols.errors import DLT645Error, ProtocolError

ADDRESS = "000012345678"
# a value inside each item's range, negative where the format is signed
SAMPLES = {
    "energy": 1206.42,
    "energy_t1": 301.5,
    "energy_t2": 402.25,
    "energy_t3": 250.0,
    "energy_t4": 252.67,
    "energy_net": -12.5,
    "voltage_l1": 230.4,
    "voltage_l2": 229.9,
    "voltage_l3": 231.0,
    "current_l1": -5.123,
    "current_l2": 4.5,
    "current_l3": 0.012,
    "power": -1.2345,
    "power_l1": 0.4115,
    "power_l2": 2.0,
    "power_l3": 79.9999,
    "power_factor": -0.987,
    "power_factor_l1": 0.5,
    "power_factor_l2": 0.999,
    "power_factor_l3": 0.0,
    "frequency": 49.98,
}


@pytest.fixture(scope="module")
def meter() -> MeterServerService:
    """The package's meter, holding SAMPLES (built once: it copies a table of ~6000 DIs)."""
    meter = MeterServerService(server=None, address=bytearray(dlt645.address_bytes(ADDRESS)))
    for name, value in SAMPLES.items():
        item = dlt645.item(name)
        ok = meter.set_02(item.di, value) if item.di >> 24 == 2 else meter.set_00(item.di, value)
        assert ok, f"the package refused {name} = {value}"
    return meter


def test_every_item_has_a_sample() -> None:
    assert set(SAMPLES) == set(dlt645.item_names())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_request_and_answer_agree_with_the_dlt645_package(
    name: str, meter: MeterServerService
) -> None:
    item = dlt645.item(name)
    theirs = bytes(
        DLT645Protocol.build_frame(
            dlt645.address_bytes(ADDRESS), CtrlCode.ReadData, struct.pack("<I", item.di)
        )
    )
    assert dlt645.read_request(ADDRESS, item.di) == theirs
    answer = meter.handle_request(DLT645Protocol.deserialize(theirs))
    assert answer is not None
    value = SAMPLES[name]
    ours = dlt645.read_response(ADDRESS, item.di, dlt645.encode_value(item, value))
    assert ours == bytes(answer)
    frame = dlt645.parse(bytes(answer))
    assert (frame["address"], frame["control"], frame["di"], frame["error"]) == (
        ADDRESS,
        0x91,
        item.di,
        None,
    )
    assert dlt645.decode_value(item, frame["data"]) == pytest.approx(value, abs=1e-9)


def test_read_address_query_and_answer_agree_with_the_dlt645_package(
    meter: MeterServerService,
) -> None:
    query = dlt645.read_address_request()
    assert query == bytes(DLT645Protocol.build_frame(b"\xaa" * 6, CtrlCode.ReadAddress, b""))
    answer = bytes(meter.handle_request(DLT645Protocol.deserialize(query)))
    assert answer == dlt645.address_response(ADDRESS)
    frame = dlt645.parse(answer)
    assert frame["control"] == 0x93 and frame["data"] == dlt645.address_bytes(ADDRESS)


def test_exception_answer_agrees_with_the_dlt645_package(meter: MeterServerService) -> None:
    unknown = 0x02800099  # no such variable: the meter answers "no requested data"
    request = dlt645.read_request(ADDRESS, unknown)
    answer = bytes(meter.handle_request(DLT645Protocol.deserialize(request)))
    assert answer == dlt645.exception_response(ADDRESS, dlt645.READ_DATA, 0x02)
    frame = dlt645.parse(answer)
    assert frame["control"] == 0xD1 and frame["error"] == ErrorCode.RequestDataEmpty
    assert dlt645.error_text(frame["error"]) == "no requested data"
    assert dlt645.error_text(0x05) == "other error, password wrong or not authorised"


@given(st.sampled_from(sorted(SAMPLES)), st.integers(min_value=0, max_value=10**8))
def test_value_encoding_agrees_with_the_dlt645_package(name: str, n: int) -> None:
    item = dlt645.item(name)
    top = (8 if item.signed else 10) * 10 ** (2 * item.size - 1)
    n %= top
    for value in (n / 10**item.decimals, -n / 10**item.decimals if item.signed else None):
        if value is None:
            continue
        ours = dlt645.encode_value(item, value)
        assert ours == bytes(float_to_bcd(value, item.fmt, "little"))
        assert dlt645.decode_value(item, ours) == pytest.approx(value)


# Published frames with the values their authors decoded.
PUBLISHED = [
    # "DL645通信协议97/07规约(附上下行例子)", https://553668.com/manong/786292.html:
    # meter 000102030425, forward active total energy 00010000 = 1206.42 kWh
    (
        "68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16",
        "68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16",
        "000102030425",
        "energy",
        1206.42,
    ),
    # "DLT645-2007报文解析" (a meter log): meter 000000000161, phase A voltage = 100.1 V
    (
        "FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 34 34 35 17 16",
        "68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16",
        "000000000161",
        "voltage_l1",
        100.1,
    ),
    # same log: forward active total energy = 000000.26 kWh
    (
        "FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16",
        "68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16",
        "000000000161",
        "energy",
        0.26,
    ),
]


@pytest.mark.parametrize(("request_hex", "answer_hex", "address", "name", "value"), PUBLISHED)
def test_published_frames(
    request_hex: str, answer_hex: str, address: str, name: str, value: float
) -> None:
    request, answer = bytes.fromhex(request_hex), bytes.fromhex(answer_hex)
    item = dlt645.item(name)
    assert dlt645.read_request(address, item.di).endswith(request.lstrip(b"\xfe"))
    frame = dlt645.parse(answer)
    assert frame["address"] == address and frame["di"] == item.di
    assert dlt645.decode_value(item, frame["data"]) == value


def test_published_read_address_query() -> None:
    # the same page: "FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16 reads the address"
    assert dlt645.read_address_request().endswith(bytes.fromhex("68AAAAAAAAAAAA681300DF16"))


def _framed(body_hex: str) -> bytes:
    # a header and DATA with a good checksum and end byte: only the named defect is left
    body = bytes.fromhex(body_hex)
    return body + bytes((sum(body) & 0xFF, 0x16))


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (bytes.fromhex("68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8C 16"), "checksum"),
        (bytes.fromhex("68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 17"), "ends"),
        (bytes.fromhex("68 25 04 03 02 01 00 68 91 08 33 33"), "whole frame"),
        (bytes.fromhex("69 25 04 03 02 01 00 68 91 00 00 16"), "starts with 68"),
        (_framed("68 2A 04 03 02 01 00 68 91 00"), "not BCD"),
        (_framed("68 25 04 03 02 01 00 68 D1 02 35 35"), "exception answer"),
        (_framed("68 25 04 03 02 01 00 68 11 02 33 33"), "a DI takes 4"),
    ],
)
def test_malformed_frames_raise_dlt645_error(frame: bytes, why: str) -> None:
    with pytest.raises(DLT645Error, match=why):
        dlt645.parse(frame)
    assert issubclass(DLT645Error, ProtocolError)


@pytest.mark.parametrize("address", ["12345", "00001234567X", 12, "AAAAAAAAAAA"])
def test_bad_addresses_are_refused(address: object) -> None:
    with pytest.raises(DLT645Error, match="address"):
        dlt645.read_request(address, 0x00010000)  # type: ignore[arg-type]


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(DLT645Error, match="does not fit"):
        dlt645.encode_value(dlt645.item("power_factor"), 8.5)  # the sign takes the 8
    with pytest.raises(DLT645Error, match="unsigned"):
        dlt645.encode_value(dlt645.item("voltage_l1"), -1)
