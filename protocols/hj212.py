# HJ 212-2017 framing: the data transmission standard for pollutant online monitoring
# systems, what environmental bureaus' platforms take from monitoring stations over TCP.
#
# Gateway-side: the node never imports this module, so it is not counted in the node's heap
# budget (tests/test_micropython.py), but it stays pure and MicroPython-compatible like the
# rest of protocols/ (the same test frames a packet inside the VM).
#
# Packet (HJ 212-2017 section 6.3.1): "##" + data segment length as 4 decimal digits +
# data segment (ASCII, 0..1024 bytes) + CRC16 of the data segment as 4 hex digits + CR LF.
# Data segment (section 6.3.2): "QN=...;ST=..;CN=....;PW=...;MN=...;Flag=..;CP=&&...&&"
# (PNUM and PNO after Flag when the packet is split). QN: the request's time to the
# millisecond, YYYYMMDDhhmmsszzz, which identifies it and its answers. Flag (section
# 6.3.3): bits V5..V0 the standard's version (000001 = 2017), D (PNUM/PNO present), A (an
# answer is asked for): 4 = 2017 without answer, 5 = with. CP holds the data area:
# "key=value" items, "," between items of one pollutant, ";" between groups.
# CRC (appendix A): 0xFFFF; for each byte crc = (crc >> 8) ^ byte, then eight right shifts
# with 0xA001 when the bit shifted out is 1. Not the Modbus CRC (which XORs the byte in
# without the shift first).

from .errors import HJ212Error, shown

MAX_SEGMENT = 1024
VERSION_2017 = 4  # Flag: V5..V0 = 000001, above the D and A bits
ANSWER = 1  # Flag bit A: the receiver answers (9014 for data, 9011 for a request)
SPLIT = 2  # Flag bit D: PNUM and PNO follow Flag
FIELDS = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


# The data segment for these header fields (a list of (key, value), in order, values as
# text) and the CP text (what goes between && and &&).
def segment(fields, cp):
    parts = []
    for key, value in fields:
        value = str(value)
        if ";" in value or "=" in value or "&" in value:
            raise HJ212Error("%s=%s: a field may not hold ';', '=' or '&'" % (key, shown(value)))
        parts.append(key + "=" + value)
    parts.append("CP=&&" + cp + "&&")
    return ";".join(parts).encode()


# The whole packet around a data segment (bytes).
def frame(data):
    if len(data) > MAX_SEGMENT:
        raise HJ212Error(
            "data segment of %d bytes: HJ 212 allows %d; send fewer pollutants a packet"
            % (len(data), MAX_SEGMENT)
        )
    return ("##%04d" % len(data)).encode() + data + ("%04X\r\n" % crc16(data)).encode()


# A packet in one call: header fields as (key, value) pairs, the CP text.
def encode(fields, cp=""):
    return frame(segment(fields, cp))


# The CP text of groups: each group a list of (key, value); values as text.
def cp_text(groups):
    return ";".join(",".join(k + "=" + str(v) for k, v in g) for g in groups)


# A time as HJ 212 writes it: ``tm`` a (year, month, day, hour, minute, second, ...) tuple
# in the platform's local time; ``ms`` adds the milliseconds (QN).
def stamp(tm, ms=None):
    text = "%04d%02d%02d%02d%02d%02d" % tuple(tm[:6])
    return text if ms is None else text + "%03d" % ms


# How many bytes the packet at the start of ``buf`` takes: 0 while more are needed.
# HJ212Error when ``buf`` does not start like a packet (the stream is out of step).
def frame_length(buf):
    if len(buf) < 6:
        if buf[: min(len(buf), 2)] != b"##"[: min(len(buf), 2)]:
            raise HJ212Error("packet does not start with ##: %s" % shown(bytes(buf[:6])))
        return 0
    if buf[:2] != b"##":
        raise HJ212Error("packet does not start with ##: %s" % shown(bytes(buf[:6])))
    digits = bytes(buf[2:6])
    if not all(0x30 <= c <= 0x39 for c in digits):
        raise HJ212Error("length %s is not 4 decimal digits" % shown(digits))
    n = int(digits.decode())
    if n > MAX_SEGMENT:
        raise HJ212Error("length %d is past HJ 212's %d" % (n, MAX_SEGMENT))
    total = 6 + n + 6
    return total if len(buf) >= total else 0


def _text(data):
    try:
        return bytes(data).decode()
    except UnicodeError:
        raise HJ212Error("data segment is not text: %s" % shown(bytes(data[:40]))) from None


# The CP text as a dict: "k=v" items split on ';' and ','. HJ212Error for an item with
# no '='.
def parse_cp(cp):
    out = {}
    if not cp:
        return out
    for group in cp.split(";"):
        for item in group.split(","):
            if not item:
                continue
            at = item.find("=")
            if at <= 0:
                raise HJ212Error("CP item %s is not key=value" % shown(item))
            out[item[:at]] = item[at + 1 :]
    return out


# One whole packet -> {"QN", "ST", "CN", "PW", "MN", "Flag", ... (those present, text),
# "cp": the CP text, "CP": parse_cp of it}. HJ212Error for anything malformed.
# a data segment as an error may show it: the password (PW=...) masked
def _no_pw(text):
    at = text.find("PW=")
    if at < 0:
        return text
    end = text.find(";", at)
    return text[: at + 3] + "***" + (text[end:] if end >= 0 else "")


def parse(packet):
    n = frame_length(packet)
    if n == 0 or n != len(packet):
        raise HJ212Error("packet of %d bytes, its header says %d" % (len(packet), n or -1))
    data = bytes(packet[6 : n - 6])
    if packet[n - 2 : n] != b"\r\n":
        raise HJ212Error("packet does not end with CR LF: %s" % shown(bytes(packet[n - 2 :])))
    sent = _text(packet[n - 6 : n - 2])
    try:
        want = int(sent, 16)
    except ValueError:
        raise HJ212Error("CRC %s is not 4 hex digits" % shown(sent)) from None
    got = crc16(data)
    if got != want:
        raise HJ212Error("CRC %s, the data segment's is %04X" % (sent, got))
    text = _text(data)
    # CP comes last, first or after a ';' (the fields before it hold no '&')
    at = 0 if text.startswith("CP=&&") else text.find(";CP=&&") + 1
    if at == 0 and not text.startswith("CP=&&") or not text.endswith("&&") or len(text) < at + 7:
        raise HJ212Error("data segment has no CP=&&...&&: %s" % shown(_no_pw(text)[:60]))
    out = {}
    head = text[:at]
    for item in head.split(";"):
        if not item:
            continue
        eq = item.find("=")
        if eq <= 0:
            raise HJ212Error("field %s is not key=value" % shown(item))
        out[item[:eq]] = item[eq + 1 :]
    cn = out.get("CN")
    if cn is None or not cn.isdigit():
        raise HJ212Error("data segment has no numeric CN: %s" % shown(_no_pw(text)[:60]))
    flag = out.get("Flag")
    if flag is not None and not flag.isdigit():
        raise HJ212Error("Flag %s is not a number" % shown(flag))
    out["cp"] = text[at + 5 : -2]
    out["CP"] = parse_cp(out["cp"])
    return out


# Whether a parsed packet asks for an answer (Flag bit A).
def wants_answer(packet):
    flag = packet.get("Flag")
    return flag is not None and int(flag) & ANSWER != 0
