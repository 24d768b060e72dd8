# CBOR (RFC 8949) for the subset polekit sends and receives.
#
# Encoding is byte-identical to ``cbor2.dumps`` with its default options (floats as
# doubles, NaN and infinities as half floats, integers beyond 64 bits as bignum tags,
# maps in their iteration order), so the board and the gateway produce the same bytes.
# MicroPython dicts do not keep insertion order: code that needs a fixed key order on both
# interpreters writes the map head with ``head(out, 5, n)`` and the pairs itself (senml does).
#
# ``dumps(obj, canonical=True)`` is RFC 8949's deterministic encoding (cbor_canonical.py).
#
# Decoding accepts well-formed CBOR of the supported types (definite lengths, half/single/
# double floats, tags passed through as ``Tag``) and raises ``CBORDecodeError`` for anything
# else, indefinite-length items included (nothing polekit talks to sends them). Every
# length is checked against the bytes that remain before anything is allocated, and
# nesting is bounded, so hostile input can neither hang the decoder nor make it allocate
# more than the input's size.

from struct import pack as _pack
from struct import unpack_from as _unpack_from

from .errors import CBORDecodeError, ProtocolError, shown

MAX_DEPTH = 32  # nesting of arrays, maps and tags; SenML needs 2

_INF = float("inf")
_NAN = float("nan")


# A tagged value that has no built-in meaning here (tags 2 and 3 become ints).
class Tag:
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and other.tag == self.tag and other.value == self.value


# Append the head of a data item to ``out`` (a bytearray): major type and argument (a
# length, a count, an integer, a tag).
def head(out, major, n):
    m = major << 5
    if n < 24:
        out.append(m | n)
    elif n < 0x100:
        out.append(m | 24)
        out.append(n)
    else:
        k = 1 if n < 0x10000 else 2 if n < 0x100000000 else 3
        out.append(m | 24 + k)
        out += n.to_bytes(1 << k, "big")


# Append the encoding of ``obj`` to ``out`` (a bytearray). Text and numbers, SenML's bulk,
# are tested first; True and False before int, which they are an instance of.
def encode_into(obj, out, depth=0):
    if depth > MAX_DEPTH:
        raise ProtocolError("nesting deeper than %d (a cycle?)" % MAX_DEPTH)
    if isinstance(obj, str):
        raw = obj.encode("utf-8")
        head(out, 3, len(raw))
        out += raw
    elif isinstance(obj, float):
        if obj != obj:
            out += b"\xf9\x7e\x00"
        elif obj == _INF:
            out += b"\xf9\x7c\x00"
        elif obj == -_INF:
            out += b"\xf9\xfc\x00"
        else:
            out += _pack(">Bd", 0xFB, obj)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if 0 <= obj < 0x10000000000000000:
            head(out, 0, obj)
        elif -0x10000000000000000 <= obj < 0:
            head(out, 1, -1 - obj)
        else:
            tag, n = (2, obj) if obj > 0 else (3, -1 - obj)
            raw = n.to_bytes((len("%x" % n) + 1) // 2, "big")
            head(out, 6, tag)
            head(out, 2, len(raw))
            out += raw
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        head(out, 2, len(obj))
        out += obj
    elif isinstance(obj, (list, tuple)):
        head(out, 4, len(obj))
        for item in obj:
            encode_into(item, out, depth + 1)
    elif isinstance(obj, dict):
        head(out, 5, len(obj))
        for key, value in obj.items():
            encode_into(key, out, depth + 1)
            encode_into(value, out, depth + 1)
    elif isinstance(obj, Tag):
        head(out, 6, obj.tag)
        encode_into(obj.value, out, depth + 1)
    else:
        raise ProtocolError("cannot encode a value of type %s" % type(obj).__name__)


# Encode ``obj`` to CBOR bytes, exactly as ``cbor2.dumps(obj)`` does; ``canonical``: the
# deterministic encoding (see the top of this file).
def dumps(obj, canonical=False):
    if canonical:  # its own module: only updates need it, and the node's heap is small
        from .cbor_canonical import dumps as dumps_canonical

        return dumps_canonical(obj)
    out = bytearray()
    encode_into(obj, out)
    return bytes(out)


def _half(h):
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        val = mant * 5.960464477539063e-08  # 2**-24
    elif exp == 31:
        val = _NAN if mant else _INF
    else:
        val = (mant + 1024) * (2.0 ** (exp - 25))
    return -val if h & 0x8000 else val


def _take(buf, pos, n):
    if n > len(buf) - pos:
        raise CBORDecodeError(
            "truncated: need %d bytes at offset %d, %d left" % (n, pos, len(buf) - pos)
        )
    return buf[pos : pos + n]


# Decode the item at ``pos``: returns (value, position after it).
def _dec(buf, pos, depth):
    if depth > MAX_DEPTH:
        raise CBORDecodeError("nesting deeper than %d at offset %d" % (MAX_DEPTH, pos))
    ib = _take(buf, pos, 1)[0]
    major = ib >> 5
    info = ib & 0x1F
    pos += 1
    if major == 7:
        if 20 <= info <= 23:  # false, true, null, undefined (as None)
            return (False, True, None, None)[info - 20], pos
        if info == 25:
            return _half(int.from_bytes(_take(buf, pos, 2), "big")), pos + 2
        if info == 26:
            return _unpack_from(">f", _take(buf, pos, 4))[0], pos + 4
        if info == 27:
            return _unpack_from(">d", _take(buf, pos, 8))[0], pos + 8
        raise CBORDecodeError("unsupported simple value 0x%02x at offset %d" % (ib, pos - 1))
    if info < 24:
        n = info
    elif info < 28:
        size = 1 << (info - 24)
        n = int.from_bytes(_take(buf, pos, size), "big")
        pos += size
    else:
        raise CBORDecodeError(
            "indefinite length or reserved value 0x%02x at offset %d" % (ib, pos - 1)
        )
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major < 4:
        raw = bytes(_take(buf, pos, n))
        pos += n
        if major == 2:
            return raw, pos
        try:
            return raw.decode("utf-8"), pos
        except UnicodeError:
            raise CBORDecodeError("text at offset %d is not UTF-8" % pos) from None
    if major == 6:
        value, pos = _dec(buf, pos, depth + 1)
        if n == 2 or n == 3:
            if not isinstance(value, bytes):
                raise CBORDecodeError("bignum tag %d must wrap bytes" % n)
            v = int.from_bytes(value, "big")
            return (v if n == 2 else -1 - v), pos
        return Tag(n, value), pos
    # arrays and maps: every item takes a byte at least, so a count the input cannot hold is a lie
    if n * (major - 3) > len(buf) - pos:
        raise CBORDecodeError(
            "%d items declared at offset %d, %d bytes left" % (n, pos, len(buf) - pos)
        )
    if major == 4:
        items = []
        for _ in range(n):
            item, pos = _dec(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    result = {}
    for _ in range(n):
        key, pos = _dec(buf, pos, depth + 1)
        if isinstance(key, list):
            key = tuple(key)
        value, pos = _dec(buf, pos, depth + 1)
        try:
            result[key] = value
        except TypeError:
            raise CBORDecodeError("map key %s is not hashable" % shown(key)) from None
    return result, pos


# Decode exactly one CBOR item from ``data`` (bytes-like); trailing bytes are an error.
def loads(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORDecodeError("expected bytes, got %s" % type(data).__name__)
    buf = bytes(data)
    value, pos = _dec(buf, 0, 0)
    if pos != len(buf):
        raise CBORDecodeError("%d trailing bytes at offset %d" % (len(buf) - pos, pos))
    return value
