"""DL/T 645-2007 frames (protocols/dlt645.py) as they come off a shared RS-485 line: the
stream framer (frame_length) and the frame parser raise only DLT645Error on any bytes; a
frame the parser accepts decodes every value it carries or refuses it with DLT645Error,
and a read answer it accepts is rebuilt byte for byte by read_response."""

from __future__ import annotations

from hypothesis import strategies as st

from polekit.protocols import dlt645
from polekit.protocols.errors import DLT645Error

RAISES = (DLT645Error,)
ADDRESS = "000012345678"
ITEMS = [dlt645.item(n) for n in dlt645.item_names()]


def fuzz(data: bytes) -> None:
    n = dlt645.frame_length(data)
    assert n == 0 or 12 <= n <= len(data), n
    frame = dlt645.parse(data)
    assert len(frame["address"]) == 12 and 0 <= frame["control"] <= 255
    item = dlt645.item_by_di(frame["di"]) if frame["di"] is not None else None
    if item is not None and frame["control"] == 0x91 and len(frame["data"]) == item.size:
        value = dlt645.decode_value(item, frame["data"])
        if frame["address"] != dlt645.BROADCAST:
            again = dlt645.read_response(
                frame["address"], item.di, dlt645.encode_value(item, value)
            )
            assert again.endswith(data.lstrip(b"\xfe")), (again.hex(), data.hex())


def seeds() -> list[bytes]:
    out = [dlt645.read_request(ADDRESS, it.di) for it in ITEMS]
    out += [
        dlt645.read_response(ADDRESS, it.di, dlt645.encode_value(it, 1.5 if it.decimals else 3))
        for it in ITEMS
    ]
    out += [
        dlt645.read_address_request(),
        dlt645.address_response(ADDRESS),
        dlt645.exception_response(ADDRESS, dlt645.READ_DATA, 0x02),
    ]
    return out


def _frame(body: bytes) -> bytes:
    return b"\xfe" * (len(body) % 5) + body + bytes((sum(body) & 0xFF, 0x16))


# frames with a good checksum and end byte around random fields, so the fuzz gets past the
# checksum to the DATA, address and BCD checks
INPUTS = st.builds(
    lambda addr, control, data: _frame(b"\x68" + addr + bytes((0x68, control, len(data))) + data),
    st.binary(min_size=6, max_size=6),
    st.sampled_from([0x11, 0x91, 0xD1, 0x13, 0x93, 0xB1, 0x12]) | st.integers(0, 255),
    st.binary(max_size=40),
) | st.binary(max_size=80)
