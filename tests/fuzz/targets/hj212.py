"""HJ 212-2017 packets (protocols/hj212.py) as a platform's TCP stream brings them: the
stream framer (frame_length) and the packet parser raise only HJ212Error on any bytes,
and a packet the parser accepts is rebuilt byte for byte from its fields and CP text (the
CRC's hex digits in capitals)."""

from __future__ import annotations

from hypothesis import strategies as st

from polekit.protocols import hj212
from polekit.protocols.errors import HJ212Error

RAISES = (HJ212Error,)


def fuzz(data: bytes) -> None:
    n = hj212.frame_length(data)
    assert n == 0 or 12 <= n <= len(data), n
    p = hj212.parse(data)
    assert p["CN"].isdigit()
    fields = [(k, p[k]) for k in hj212.FIELDS if k in p]
    if [k for k, _ in fields] == [k for k in p if k not in ("cp", "CP")]:
        # the CRC's hex digits are taken in either case (a platform may send e2c1) and
        # written in capitals, as the standard's examples do
        assert hj212.encode(fields, p["cp"]) == data[:-6] + data[-6:].upper(), data


def seeds() -> list[bytes]:
    head = [("QN", "20240801080000001"), ("ST", 22), ("PW", "123456"), ("MN", "MN1")]
    return [
        b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
        b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n",
        hj212.encode([*head, ("CN", 9014), ("Flag", 4)]),
        hj212.encode([*head, ("CN", 2011), ("Flag", 5)], "DataTime=20240801080000;a34004-Rtd=1"),
        hj212.encode([*head, ("CN", 1011), ("Flag", 5)], "PolId=a34004"),
    ]


def _packet(text: bytes) -> bytes:
    return b"##%04d" % len(text) + text + b"%04X\r\n" % hj212.crc16(text)


# packets with a good length and CRC around random data segments, so the fuzz gets past
# the CRC to the field and CP parsing
INPUTS = st.builds(
    lambda fields, cp: _packet(fields + b"CP=&&" + cp + b"&&"),
    st.sampled_from([b"QN=1;CN=2011;Flag=5;", b"CN=9014;", b"CN=;", b"QN=;CN=1", b""])
    | st.binary(max_size=40),
    st.binary(max_size=60) | st.sampled_from([b"a=1,b=2;c=3", b";;,", b"=x", b"a"]),
) | st.binary(max_size=80)
