# DL/T 645-2007 framing: the Chinese multi-function electricity meter protocol on RS-485.
#
# Gateway-side: the node never imports this module, so it is not counted in the node's heap
# budget (tests/test_micropython.py), but it stays pure and MicroPython-compatible like the
# rest of protocols/ (the same test imports it and frames a request inside the VM).
#
# Frame (DL/T 645-2007 section 4.3, figure 2): optional wake-up preamble FE FE FE FE, then
#   68 A0..A5 68 C L DATA CS 16
# A0..A5: the meter's 12-digit address, two BCD digits a byte, lowest byte first
# ("000012345678" travels as 78 56 34 12 00 00). C: control code (section 4.3.3): D7 set in
# an answer, D6 set in an exception answer, D5 "more frames follow", D4..D0 the function
# (0x11 read data, 0x13 read address). L: bytes of DATA. DATA: each byte sent + 0x33
# (section 4.3.5). CS: sum of every byte from the first 68 to the end of DATA, mod 256.
# Read data (section 7.1): DATA = the 4-byte data identifier DI0..DI3 (lowest first), then,
# in the answer, the value as BCD, lowest byte first. Read address (section 7.3): sent to
# AA AA AA AA AA AA, the only meter on the line answers 0x93 with its address.
# An exception answer carries one error-information byte (ERR, a bit per reason).

from .errors import DLT645Error, shown

READ_DATA = 0x11
READ_ADDRESS = 0x13
ANSWER = 0x80
EXCEPTION = 0x40
PREAMBLE = b"\xfe\xfe\xfe\xfe"
BROADCAST = "AAAAAAAAAAAA"  # the address every meter takes for a read-address query

# ERR bits of an exception answer (DL/T 645-2007, error information word): bit text
ERRORS = """
0 other error
1 no requested data
2 password wrong or not authorised
3 baud rate cannot be changed
4 too many year time zones
5 too many day time periods
6 too many tariffs
"""

# The data identifiers we read, from DL/T 645-2007 annex A: table A.1 (energy, kWh,
# XXXXXX.XX, 4 bytes) and table A.3 (variables). name DI format unit signed
# ("s": the top bit of the highest byte is the sign, as the standard's notes on current,
# power and power factor say). Names are the reference model's (protocols/model.py);
# phases A, B, C of the standard are L1, L2, L3. Rates 1..4 are the tariff periods
# (sharp, peak, flat, valley).
ITEMS = """
energy 00010000 XXXXXX.XX kWh -
energy_t1 00010100 XXXXXX.XX kWh -
energy_t2 00010200 XXXXXX.XX kWh -
energy_t3 00010300 XXXXXX.XX kWh -
energy_t4 00010400 XXXXXX.XX kWh -
energy_net 00000000 XXXXXX.XX kWh s
voltage_l1 02010100 XXX.X V -
voltage_l2 02010200 XXX.X V -
voltage_l3 02010300 XXX.X V -
current_l1 02020100 XXX.XXX A s
current_l2 02020200 XXX.XXX A s
current_l3 02020300 XXX.XXX A s
power 02030000 XX.XXXX kW s
power_l1 02030100 XX.XXXX kW s
power_l2 02030200 XX.XXXX kW s
power_l3 02030300 XX.XXXX kW s
power_factor 02060000 X.XXX / s
power_factor_l1 02060100 X.XXX / s
power_factor_l2 02060200 X.XXX / s
power_factor_l3 02060300 X.XXX / s
frequency 02800002 XX.XX Hz -
"""


# One value a meter is read for: its reference-model name, data identifier, BCD format
# and unit (it has the ``name`` and ``unit`` a register map's Point has).
class Item:
    def __init__(self, name, di, fmt, unit, signed):
        self.name = name
        self.di = di
        self.fmt = fmt
        self.unit = unit
        self.signed = signed
        self.size = (len(fmt) - fmt.count(".") + 1) // 2  # bytes of BCD
        self.decimals = len(fmt) - fmt.find(".") - 1 if "." in fmt else 0


# The item called ``name``; KeyError naming the known ones.
def item(name):
    at = ITEMS.find("\n" + name + " ")
    if at < 0:
        raise KeyError("no DL/T 645 item %r; known: %s" % (name, ", ".join(item_names())))
    f = ITEMS[at + 1 : ITEMS.find("\n", at + 1)].split()
    return Item(f[0], int(f[1], 16), f[2], f[3], f[4] == "s")


def item_names():
    return [row.split()[0] for row in ITEMS.strip().split("\n")]


# The item with data identifier ``di`` (None for one we do not read).
def item_by_di(di):
    key = " %08X " % di
    at = ITEMS.find(key)
    if at < 0:
        return None
    return item(ITEMS[ITEMS.rfind("\n", 0, at) + 1 : at])


def error_text(err):
    reasons = []
    for row in ERRORS.strip().split("\n"):
        bit, text = row.split(" ", 1)
        if err >> int(bit) & 1:
            reasons.append(text)
    return ", ".join(reasons) or "error byte 0x%02X" % err


# The 6 address bytes on the wire for a 12-digit address (lowest byte first).
def address_bytes(address):
    if not isinstance(address, str) or len(address) != 12:
        raise DLT645Error("address %s: give its 12 digits, e.g. '000012345678'" % shown(address))
    if address.upper() == BROADCAST:
        return b"\xaa" * 6
    if not all("0" <= c <= "9" for c in address):
        raise DLT645Error("address %s: only digits 0-9 (BCD)" % shown(address))
    return bytes(int(address[i : i + 2], 16) for i in range(10, -2, -2))


def _address_text(raw):
    return "".join("%02X" % b for b in reversed(raw))


# A whole frame: preamble, header, control, DATA (+0x33), checksum, end.
def build(address, control, data=b""):
    if len(data) > 255:
        raise DLT645Error("DATA of %d bytes; at most 255" % len(data))
    body = b"\x68" + address_bytes(address) + bytes((0x68, control, len(data)))
    body += bytes((b + 0x33) & 0xFF for b in data)
    return PREAMBLE + body + bytes((sum(body) & 0xFF, 0x16))


def _di_bytes(di):
    return bytes((di & 0xFF, di >> 8 & 0xFF, di >> 16 & 0xFF, di >> 24 & 0xFF))


# The master's request to read data identifier ``di`` from the meter at ``address``.
def read_request(address, di):
    return build(address, READ_DATA, _di_bytes(di))


# The broadcast query that makes the only meter on a line say its address.
def read_address_request():
    return build(BROADCAST, READ_ADDRESS)


# The meter's answer to a read: DI then the value's bytes (see ``encode_value``).
def read_response(address, di, value_bytes):
    return build(address, READ_DATA | ANSWER, _di_bytes(di) + value_bytes)


def address_response(address):
    return build(address, READ_ADDRESS | ANSWER, address_bytes(address))


# A meter's exception answer to ``function`` with error-information byte ``err``.
def exception_response(address, function, err):
    return build(address, function | ANSWER | EXCEPTION, bytes((err,)))


# Bytes of the frame at the start of ``buf`` (after any FE preamble): 0 while more bytes
# are needed; DLT645Error when the bytes cannot start a frame.
def frame_length(buf):
    i = 0
    while i < len(buf) and buf[i] == 0xFE:
        i += 1
    if len(buf) <= i:
        return 0
    if buf[i] != 0x68:
        raise DLT645Error("byte 0x%02X where a frame starts with 68" % buf[i])
    if len(buf) < i + 10:
        return 0
    if buf[i + 7] != 0x68:
        raise DLT645Error("byte 0x%02X where the second 68 belongs" % buf[i + 7])
    n = i + 12 + buf[i + 9]
    return n if len(buf) >= n else 0


# Decode one whole frame: a dict with address (12 digits, "AAAAAAAAAAAA" for the broadcast
# query), control, di (None when DATA has no identifier), data (the bytes after the DI, or
# all of DATA for a read-address frame; 0x33 removed) and error (the ERR byte of an
# exception answer, else None). Raises DLT645Error for anything that is not one frame.
def parse(frame):
    n = frame_length(frame)
    if n == 0 or n != len(frame):
        raise DLT645Error("%d bytes are not one whole frame" % len(frame))
    i = 0
    while frame[i] == 0xFE:
        i += 1
    length = frame[i + 9]
    if sum(frame[i : n - 2]) & 0xFF != frame[n - 2]:
        raise DLT645Error("checksum mismatch in frame %s" % bytes(frame[:64]).hex())
    if frame[n - 1] != 0x16:
        raise DLT645Error("frame ends with 0x%02X, not 16" % frame[n - 1])
    raw = frame[i + 1 : i + 7]
    if raw == b"\xaa" * 6:
        address = BROADCAST
    else:
        address = _address_text(raw)
        if not all("0" <= c <= "9" for c in address):
            raise DLT645Error("address %s is not BCD" % address)
    control = frame[i + 8]
    data = bytes((b - 0x33) & 0xFF for b in frame[i + 10 : i + 10 + length])
    out = {"address": address, "control": control, "di": None, "data": data, "error": None}
    if control & (ANSWER | EXCEPTION) == ANSWER | EXCEPTION:
        if length != 1:
            raise DLT645Error("exception answer with %d bytes of DATA; 1 expected" % length)
        out["error"] = data[0]
        out["data"] = b""
    elif control & 0x1F in (READ_DATA, 0x12, 0x14) and length >= 4:
        out["di"] = data[0] | data[1] << 8 | data[2] << 16 | data[3] << 24
        out["data"] = data[4:]
    elif control & 0x1F == READ_DATA:
        raise DLT645Error("read frame with %d bytes of DATA; a DI takes 4" % length)
    return out


# The number in ``raw`` (BCD, lowest byte first) laid out by ``it`` (an Item).
def decode_value(it, raw):
    if len(raw) < it.size:
        raise DLT645Error("%s: %d bytes, %d expected" % (it.name, len(raw), it.size))
    n = 0
    negative = False
    for k in range(it.size - 1, -1, -1):
        b = raw[k]
        if k == it.size - 1 and it.signed:
            negative = bool(b & 0x80)
            b &= 0x7F
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise DLT645Error("%s: byte 0x%02X is not BCD" % (it.name, raw[k]))
        n = n * 100 + hi * 10 + lo
    value = n / 10**it.decimals if it.decimals else n
    return -value if negative else value


# The BCD bytes (lowest first) of ``value`` for ``it``; DLT645Error when it does not fit.
def encode_value(it, value):
    negative = value < 0
    if negative and not it.signed:
        raise DLT645Error("%s: %r is negative; the format is unsigned" % (it.name, value))
    n = int(round(abs(value) * 10**it.decimals))
    # a signed format's top digit shares its byte with the sign bit: 0..7 only
    if n >= (8 if it.signed else 10) * 10 ** (2 * it.size - 1):
        raise DLT645Error("%s: %r does not fit %s" % (it.name, value, it.fmt))
    out = bytearray(it.size)
    for k in range(it.size):
        n, pair = divmod(n, 100)
        out[k] = (pair // 10) << 4 | pair % 10
    if negative:
        out[-1] |= 0x80
    return bytes(out)
