# Deterministic CBOR (RFC 8949 section 4.2.1), for bytes that are signed (the OTA manifest):
# shortest heads, definite lengths, floats in the shortest of half, single and double that
# holds the value exactly (section 4.2.2), and the pairs of every map sorted by the bytes of
# their encoded keys, so both interpreters produce the same bytes whatever order their dicts
# iterate in. cbor2's ``canonical=True`` sorts keys length first (RFC 7049's canonical
# order, RFC 8949 section 4.2.3); the two agree whenever keys of one map encode to the same
# length or are all text shorter than 24 bytes.
#
# A module of its own, imported only when an update is checked (cbor.dumps(obj,
# canonical=True) loads it): the node's resident protocols/ stay within their heap budget.
from struct import pack as _pack
from struct import unpack_from as _unpack_from

from .cbor import MAX_DEPTH, Tag, encode_into, head
from .errors import ProtocolError

_FLOAT32_MAX = 3.4028234663852886e38


def _encode(obj, out, depth):
    if depth > MAX_DEPTH:
        raise ProtocolError("nesting deeper than %d (a cycle?)" % MAX_DEPTH)
    if isinstance(obj, float) and obj == obj and abs(obj) != float("inf"):
        _short_float(obj, out)
    elif isinstance(obj, (list, tuple)):
        head(out, 4, len(obj))
        for item in obj:
            _encode(item, out, depth + 1)
    elif isinstance(obj, dict):
        head(out, 5, len(obj))
        pairs = []
        for key, value in obj.items():
            encoded = bytearray()
            _encode(key, encoded, depth + 1)
            pairs.append((bytes(encoded), value))
        pairs.sort(key=lambda pair: pair[0])
        for key_bytes, value in pairs:
            out += key_bytes
            _encode(value, out, depth + 1)
    elif isinstance(obj, Tag):
        head(out, 6, obj.tag)
        _encode(obj.value, out, depth + 1)
    else:  # text, bytes, integers, booleans, None, NaN and infinities: already shortest
        encode_into(obj, out, depth)


# A finite float in the shortest form that holds it exactly. Half floats are built from the
# single's bits: MicroPython's struct has no "e" format.
def _short_float(x, out):
    single = _pack(">f", x) if -_FLOAT32_MAX <= x <= _FLOAT32_MAX else b""
    if not single or _unpack_from(">f", single)[0] != x:
        out += _pack(">Bd", 0xFB, x)
        return
    bits = int.from_bytes(single, "big")
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    half = -1
    if exp == 0 and mant == 0:
        half = 0
    elif exp:
        e = exp - 127
        if -14 <= e <= 15 and not mant & 0x1FFF:
            half = (e + 15) << 10 | mant >> 13
        elif -24 <= e < -14:
            full = mant | 0x800000
            shift = -1 - e
            if not full & ((1 << shift) - 1):
                half = full >> shift
    if half < 0:
        out.append(0xFA)
        out += single
    else:
        out.append(0xF9)
        out += (half | (bits >> 16 & 0x8000)).to_bytes(2, "big")


# ``obj`` as deterministic CBOR bytes
def dumps(obj):
    out = bytearray()
    _encode(obj, out, 0)
    return bytes(out)
