# Modbus RTU framing, timing and the register maps of polekit's node types.
#
# The firmware's slave frames its answers with these functions; the gateway polls with
# pymodbus (the master side lives there) but takes its register maps, value scaling and
# timing from here.
# Framing follows the Modbus over Serial Line spec: unit id, PDU, CRC-16 (poly 0xA001,
# init 0xFFFF) low byte first. ``request_length`` is the stream framer: it returns 0
# while more bytes are needed to know a frame's length.

from struct import pack as _pack
from struct import unpack as _unpack

from .errors import CRCError, FrameError, ModbusException

READ_HOLDING = 3
READ_INPUT = 4
WRITE_SINGLE = 6
WRITE_MULTIPLE = 16
FUNCTIONS = (READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE)
MAX_READ = 125  # registers in one read (spec limit: a 256-byte ADU)
MAX_WRITE = 123

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4

# code text, one a line
EXCEPTIONS = """
1 illegal function
2 illegal data address
3 illegal data value
4 server device failure
5 acknowledge
6 server device busy
8 memory parity error
10 gateway path unavailable
11 gateway target device failed to respond
"""


# What a Modbus exception code means ("exception 7" for codes the spec leaves open).
def exception_text(code):
    at = EXCEPTIONS.find("\n%d " % code)
    return (
        "exception %d" % code
        if at < 0
        else EXCEPTIONS[at + 2 + len(str(code)) : EXCEPTIONS.find("\n", at + 1)]
    )


def _make_table():
    # 256 CRCs, two bytes each, little-endian: half the heap of a tuple of ints
    table = bytearray(512)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table[2 * i] = crc & 0xFF
        table[2 * i + 1] = crc >> 8
    return bytes(table)


_CRC_TABLE = _make_table()


# The Modbus RTU CRC of ``data``; its two bytes, low first, end a frame.
def crc16(data):
    crc = 0xFFFF
    t = _CRC_TABLE
    for b in data:
        i = 2 * ((crc ^ b) & 0xFF)
        crc = (crc >> 8) ^ (t[i] | t[i + 1] << 8)
    return crc


# An RTU frame: unit id + PDU + CRC.
def frame(unit, pdu):
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


# Verify an RTU frame's length and CRC; returns (unit, pdu) or raises FrameError/CRCError.
def check(adu):
    if len(adu) < 4:
        raise FrameError("frame of %d bytes is shorter than the 4-byte minimum" % len(adu))
    if crc16(adu[:-2]) != adu[-2] | adu[-1] << 8:
        raise CRCError("CRC mismatch in frame %s" % bytes(adu).hex())
    return adu[0], bytes(adu[1:-2])


# The lengths the frame at the start of ``buf`` can have on a shared line: (as a request,
# as an answer of a slave), since every drop hears both; None when more bytes are needed
# to tell, () for an unknown function (such a frame ends at a silence).
def frame_lengths(buf):
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc & 0x80:  # an exception answer
        return (0, 5)
    if fc == READ_HOLDING or fc == READ_INPUT:
        return None if len(buf) < 3 else (8, 5 + buf[2])
    if fc == WRITE_SINGLE:
        return (8, 8)
    if fc == WRITE_MULTIPLE:
        return None if len(buf) < 7 else (9 + buf[6], 8)
    return ()


# Total length of the request at the start of ``buf``: 0 = need more bytes, -1 = unknown function.
def request_length(buf):
    if len(buf) < 2:
        return 0
    fc = buf[1]
    if fc in (READ_HOLDING, READ_INPUT, WRITE_SINGLE):
        return 8
    if fc == WRITE_MULTIPLE:
        return 9 + buf[6] if len(buf) >= 7 else 0
    return -1


# A decoded request: ``values`` holds the registers to write; ``error`` is the
# exception code the slave must answer with (0 when the request is well-formed).
class Request:
    def __init__(self, unit, function, address=0, count=0, values=(), error=0):
        self.unit = unit
        self.function = function
        self.address = address
        self.count = count
        self.values = values
        self.error = error


# Decode a whole request frame; raises FrameError/CRCError for frames a slave must ignore.
def decode_request(adu):
    unit, pdu = check(adu)
    fc = pdu[0]
    if fc not in FUNCTIONS:
        return Request(unit, fc, error=ILLEGAL_FUNCTION)
    if len(pdu) < 5:
        raise FrameError("function %d request of %d bytes is too short" % (fc, len(adu)))
    address, count = _unpack(">HH", pdu[1:5])
    if fc == WRITE_SINGLE:
        return Request(unit, fc, address, 1, (count,))
    if fc == WRITE_MULTIPLE:
        nbytes = pdu[5] if len(pdu) > 5 else -1
        if nbytes != len(pdu) - 6:
            raise FrameError("function 16 byte count %d does not match the frame" % nbytes)
        if not 1 <= count <= MAX_WRITE or nbytes != 2 * count:
            return Request(unit, fc, address, count, error=ILLEGAL_VALUE)
        return Request(unit, fc, address, count, _unpack(">%dH" % count, pdu[6:]))
    if not 1 <= count <= MAX_READ:
        return Request(unit, fc, address, count, error=ILLEGAL_VALUE)
    return Request(unit, fc, address, count)


# Frame the answer to a read: byte count and register values.
def read_response(unit, function, registers):
    n = len(registers)
    return frame(unit, _pack(">BB%dH" % n, function, 2 * n, *registers))


# Frame the answer to a write: function 6 echoes the value, 16 the count.
def write_response(unit, function, address, count_or_value):
    return frame(unit, _pack(">BHH", function, address, count_or_value))


# Frame an exception response (function code with the high bit set).
def exception_response(unit, function, code):
    return frame(unit, bytes((function | 0x80, code)))


# Seconds one character takes on the line: 11 bits (start, 8 data, parity or 2nd stop, stop).
def char_time_s(baudrate, bits=11):
    return bits / baudrate


# The silent interval that ends a frame: 3.5 characters, fixed at 1.75 ms above 19200 baud.
def t35_s(baudrate):
    return 0.00175 if baudrate > 19200 else 3.5 * char_time_s(baudrate)


# The longest gap allowed inside a frame: 1.5 characters, fixed at 0.75 ms above 19200 baud.
def t15_s(baudrate):
    return 0.00075 if baudrate > 19200 else 1.5 * char_time_s(baudrate)


# ---- register maps ---------------------------------------------------------------

_TABLES = ("holding", "input", "coil", "discrete")
_DTYPES = {"u16": 1, "i16": 1, "bool": 1, "u32": 2, "i32": 2, "f32": 2}
_LIMITS = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "bool": (0, 1),
    "u32": (0, 0xFFFFFFFF),
    "i32": (-0x80000000, 0x7FFFFFFF),
}


# One value in a device's registers: where it is, how it is coded, what it means.
# ``scale`` multiplies the raw integer into ``unit``; ``low``/``high`` bound writes.
class Point:
    def __init__(
        self,
        name,
        address,
        table="holding",
        dtype="u16",
        word_order="big",
        scale=1,
        unit=None,
        writable=False,
        low=None,
        high=None,
    ):
        for key, value, ok in (
            ("table", table, table in _TABLES),
            ("type", dtype, dtype in _DTYPES),
            ("word_order", word_order, word_order in ("big", "little")),
            ("address", address, 0 <= address <= 0xFFFF),
            ("scale", scale, scale != 0),
        ):
            if not ok:
                raise ValueError("point %r: bad %s %r (see docs/protocols.md)" % (name, key, value))
        self.name = name
        self.address = address
        self.table = table
        self.dtype = dtype
        self.word_order = word_order
        self.scale = scale
        self.unit = unit
        self.writable = writable
        self.low = low
        self.high = high
        self.count = _DTYPES[dtype] if table in ("holding", "input") else 1

    # The scaled value from this point's ``count`` registers (bool for "bool" points).
    def decode(self, regs):
        if self.count == 2:
            hi, lo = (regs[0], regs[1]) if self.word_order == "big" else (regs[1], regs[0])
            if self.dtype == "f32":
                raw = _unpack(">f", _pack(">HH", hi, lo))[0]
            else:
                raw = hi << 16 | lo
                if self.dtype == "i32" and raw & 0x80000000:
                    raw -= 0x100000000
        else:
            raw = regs[0]
            if self.dtype == "bool":
                return bool(raw)
            if self.dtype == "i16" and raw & 0x8000:
                raw -= 0x10000
        if self.scale == 1:
            return raw
        return round(raw * self.scale, 9)  # drop float noise: 2345 * 0.01 -> 23.45

    # The registers that hold ``value``; ModbusException(code 3) if it does not fit.
    def encode(self, value):
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise ModbusException(
                "%s: %r is outside %r..%r" % (self.name, value, self.low, self.high),
                ILLEGAL_VALUE,
            )
        if self.dtype == "f32":
            hi, lo = _unpack(">HH", _pack(">f", value / self.scale))
        else:
            raw = int(round(value / self.scale)) if self.dtype != "bool" else int(bool(value))
            lim = _LIMITS[self.dtype]
            if not lim[0] <= raw <= lim[1]:
                raise ModbusException(
                    "%s: %r does not fit a %s register" % (self.name, value, self.dtype),
                    ILLEGAL_VALUE,
                )
            raw &= 0xFFFFFFFF
            if self.count == 1:
                return [raw & 0xFFFF]
            hi, lo = raw >> 16, raw & 0xFFFF
        return [hi, lo] if self.word_order == "big" else [lo, hi]


# A named, ordered set of points. Overlaps are checked where maps enter the system: the
# gateway's config loader for inline maps, the test suite for the maps below.
class RegisterMap:
    def __init__(self, name, points):
        self.name = name
        self.points = list(points)

    def __iter__(self):
        return iter(self.points)

    # The point called ``name``; KeyError naming the known points if there is none.
    def point(self, name):
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(
            "register map %r has no point %r; it has: %s"
            % (self.name, name, ", ".join(p.name for p in self.points))
        )


# One row a point: name, address, table, type, then optionally word order, scale, unit,
# access (ro/rw), low, high; left-out trailing columns default to big, 1, none ("-"), ro.
# Kept as text: one constant string on the node instead of a heap of tuples. The node's
# own maps keep raw values in the units below (ug/m3, /100...); the reference model
# converts them to SenML primary units when a pack is built.
_MAPS = {
    "pole-env": """
temperature 0 input i16 big 0.01 Cel
humidity 1 input u16 big 0.01 %RH
illuminance 2 input u32 big 0.1 lx
pm1 4 input u16 big 1 ug/m3
pm2_5 5 input u16 big 1 ug/m3
pm10 6 input u16 big 1 ug/m3
noise 7 input u16 big 0.1 dB
tilt 8 input i16 big 0.1 deg
door_open 9 input bool
water 10 input bool
alarms 11 input u16
valid 12 input u16
lamp_on 13 input bool
uptime 14 input u32 big 1 s
free_heap 16 input u32 big 1 B
reset_cause 18 input u16
fw_version 19 input u16
node_seq 20 input u32
errors 22 input u16
loop_stalls 23 input u16
fw_previous 24 input u16
ota_state 25 input u16
ota_error 26 input u16
ota_rollback 27 input u16
lamp_level 0 holding u16 big 1 /100 rw 0 100
lamp_default 1 holding u16 big 1 /100 rw 0 100
report_interval 2 holding u16 big 1 s rw 1 3600
tilt_threshold 3 holding u16 big 0.1 deg rw 0 90
tilt_hysteresis 4 holding u16 big 0.1 deg rw 0 30
""",
    # Eastron SDM120-series energy meter: IEEE-754 floats, high word first. The gateway's
    # device library (devices.py) cites its source; the other library maps live there
    "sdm120": """
voltage 0 input f32 big 1 V
current 6 input f32 big 1 A
power 12 input f32 big 1 W
power_factor 30 input f32 big 1 /
frequency 70 input f32 big 1 Hz
energy 342 input f32 big 1 kWh
""",
}


def _num(text):
    return None if text == "-" else (float(text) if "." in text else int(text))


def _point(row):
    f = row.split()
    f += ["big", "1", "-", "ro"][len(f) - 4 :]
    low, high = (_num(f[8]), _num(f[9])) if len(f) > 9 else (None, None)
    unit = None if f[6] == "-" else f[6]
    return Point(f[0], int(f[1]), f[2], f[3], f[4], _num(f[5]), unit, f[7] == "rw", low, high)


# pole-env "alarms" and "valid" bits
ALARM_TILT = 0x01
ALARM_WATER = 0x02
ALARM_DOOR = 0x04
ALARM_SENSOR = 0x08
VALID_SHT3X = 0x01
VALID_BH1750 = 0x02
VALID_PMS5003 = 0x04
VALID_ADXL345 = 0x08
VALID_NOISE = 0x10


# Names of the register maps defined here.
def map_names():
    return sorted(_MAPS)


# The register map called ``name`` (e.g. "pole-env"); KeyError listing the known maps.
def register_map(name):
    rows = _MAPS.get(name)
    if rows is None:
        raise KeyError("no register map %r; known: %s" % (name, ", ".join(map_names())))
    return RegisterMap(name, [_point(row) for row in rows.strip().split("\n")])
