"""Inputs shared by the Modbus targets: request frames with a right CRC (so the fuzz gets
past the checksum), fields drawn around their limits, and the vector frames."""

from __future__ import annotations

from hypothesis import strategies as st

from polekit.protocols import modbus

import fuzzkit

_u16 = st.sampled_from([0, 1, 2, 24, 125, 126, 0xFFFF]) | st.integers(0, 0xFFFF)


@st.composite
def pdus(draw: st.DrawFn) -> bytes:
    fc = draw(st.sampled_from([3, 4, 6, 16, 16, 1, 5, 43, 0x83, 0]) | st.integers(0, 255))
    address, count = draw(_u16), draw(_u16)
    pdu = bytes((fc,)) + address.to_bytes(2, "big") + count.to_bytes(2, "big")
    if fc == 16:
        n = draw(st.sampled_from([2 * (count & 0x7F), 0, 1, 255]) | st.integers(0, 255))
        pdu += bytes((n & 0xFF,)) + draw(st.binary(max_size=min(n, 250)))
    return pdu[: draw(st.integers(1, len(pdu)))] if draw(st.integers(0, 9)) == 0 else pdu


frames = st.builds(modbus.frame, st.sampled_from([1, 1, 0, 2, 247, 255]), pdus())


def seeds() -> list[bytes]:
    v = fuzzkit.vectors("modbus")
    out = [bytes.fromhex(r["hex"]) for r in v["requests"]]
    out += [bytes.fromhex(h) for h in v["bad_requests"]]
    return out + [bytes.fromhex(r["hex"]) for r in v["responses"]]
