# BTHome v2 adverts (https://bthome.io): encoder, decoder, and AES-CCM encryption.
#
# ``encode`` and ``decode`` work on the service data that follows the 16-bit UUID 0xFCD2:
# one device-information byte (bit 0 encrypted, bit 2 trigger-based, bits 5-7 version 2),
# then objects (id, little-endian value) in ascending id order. Values are keyed by the
# names of the reference model where one fits (``temperature``, ``humidity``, ``battery``,
# ``tilt``, ``door_open``, ``water``, ``smoke``...), and by BTHome's own names otherwise.

from .errors import BTHomeError

UUID16 = 0xFCD2
# The polekit node GATT service, one UUID pattern (GATT % n): 0 the service, 1 SETTINGS
# (write a CBOR map, e.g. {"lamp_level": 40}), 2 RESULT (read/notify: {"ok": true, "set":
# {...}} or {"ok": false, "error": "..."} for the last write), 3 STATUS (read: a CBOR map),
# 4 OTA_CONTROL and 5 OTA_DATA (write, notify: protocols/ota_gatt.py), each taking writes
# of up to OTA_WRITE bytes (ATT MTU 247 - 3); the node queues OTA_QUEUE writes
GATT = "7f1c000%d-5a1e-4c0b-9b1e-706f6c656b69"
OTA_CONTROL = 4
OTA_DATA = 5
OTA_WRITE = 244
OTA_QUEUE = 8
_UUID_LE = b"\xd2\xfc"
INFO_ENCRYPTED = 0x01
INFO_TRIGGER = 0x04
INFO_V2 = 0x40

# id name kind [bytes [factor [unit]]], trailing columns defaulting to 1, 1, none.
# kind: u = unsigned, s = signed, b = binary (bool), e = button event, t = text, r = raw
# bytes (t and r carry their own length byte), v = firmware version. Encoding a name uses
# the first row whose range fits the value.
TABLE = """
00 packet_id u
01 battery u 1 1 %EL
02 temperature s 2 0.01 Cel
03 humidity u 2 0.01 %RH
04 pressure u 3 0.01 hPa
05 illuminance u 3 0.01 lx
06 mass u 2 0.01 kg
07 mass_lb u 2 0.01 lb
08 dew_point s 2 0.01 Cel
09 count u
0a energy u 3 0.001 kWh
0b power u 3 0.01 W
0c voltage u 2 0.001 V
0d pm2_5 u 2 1 ug/m3
0e pm10 u 2 1 ug/m3
0f generic b
10 power_on b
11 opening b
12 co2 u 2 1 ppm
13 tvoc u 2 1 ug/m3
14 moisture u 2 0.01 %
15 battery_low b
16 battery_charging b
17 co b
18 cold b
19 connectivity b
1a door_open b
1b garage_door b
1c gas b
1d heat b
1e light b
1f unlocked b
20 water b
21 motion b
22 moving b
23 occupancy b
24 plug b
25 presence b
26 problem b
27 running b
28 safety b
29 smoke b
2a sound b
2b tamper b
2c vibration b
2d window b
2e humidity u 1 1 %RH
2f moisture u 1 1 %
3a button e
3c dimmer u 2
3d count u 2
3e count u 4
3f tilt s 2 0.1 deg
40 distance u 2 1 mm
41 distance_m u 2 0.1 m
42 duration u 3 0.001 s
43 current u 2 0.001 A
44 speed u 2 0.01 m/s
45 temperature s 2 0.1 Cel
46 uv_index u 1 0.1
47 volume u 2 0.1 l
48 volume_ml u 2 1 ml
49 flow_rate u 2 0.001 m3/h
4a voltage u 2 0.1 V
4b gas_volume u 3 0.001 m3
4c gas_volume u 4 0.001 m3
4d energy u 4 0.001 kWh
4e volume u 4 0.001 l
4f water_volume u 4 0.001 l
50 timestamp u 4 1 s
51 acceleration u 2 0.001 m/s2
52 gyroscope u 2 0.001 deg/s
53 text t 0
54 raw r 0
55 volume_storage u 4 0.001 l
56 conductivity u 2 1 uS/cm
57 temperature s 1 1 Cel
58 temperature s 1 0.35 Cel
59 count s
5a count s 2
5b count s 4
5c power s 4 0.01 W
5d current s 2 0.001 A
5e direction u 2 0.01 deg
5f precipitation u 2 0.1 mm
60 channel u
61 rotational_speed u 2 1 rpm
62 speed s 4 0.000001 m/s
63 acceleration s 4 0.000001 m/s2
64 light_level u
65 settings_revision u
f0 device_type u 2
f1 fw_version v 4
f2 fw_version v 3
"""

BUTTON_EVENTS = (
    "none",
    "press",
    "double_press",
    "triple_press",
    "long_press",
    "long_double_press",
    "long_triple_press",
)
_HOLD_PRESS = 0x80


def _row(line):
    # "02 temperature s 2 0.01 Cel" -> (2, "temperature", "s", 2, 0.01, "Cel"); trailing
    # columns may be left out: 1 byte, factor 1, no unit
    f = line.split() + ["1", "1", "-"][len(line.split()) - 3 :]
    factor = float(f[4]) if "." in f[4] else int(f[4])
    return int(f[0], 16), f[1], f[2], int(f[3]), factor, None if f[5] == "-" else f[5]


# Look-ups scan the table text: slower than a dict, but the table stays one constant
# string on the node instead of ~90 tuples of heap.
# The table row (id, name, kind, bytes, factor, unit) of ``obj_id``, or None if unknown.
def object_by_id(obj_id):
    at = TABLE.find("\n%02x " % obj_id)
    return None if at < 0 else _row(TABLE[at + 1 : TABLE.find("\n", at + 1)])


# All table rows for ``name``, in table (= preference) order.
def objects_named(name):
    key = " " + name + " "
    return [_row(line) for line in TABLE.split("\n") if key in line]


# bytes of one object's value, or None when the value does not fit this row
def _encode_value(row, value):
    obj_id, name, kind, size, factor, unit = row
    if kind == "b":
        return bytes((1 if value else 0,))
    if kind == "e":
        if isinstance(value, str):
            code = (
                _HOLD_PRESS
                if value == "hold_press"
                else (BUTTON_EVENTS.index(value) if value in BUTTON_EVENTS else -1)
            )
            if code < 0:
                raise BTHomeError(
                    "unknown button event %r; known: %s, hold_press"
                    % (value, ", ".join(BUTTON_EVENTS))
                )
            value = code
        return bytes((value,))
    if kind in "tr":
        raw = value.encode() if kind == "t" else bytes(value)
        if len(raw) > 255:
            raise BTHomeError("%s of %d bytes is longer than 255" % (name, len(raw)))
        return bytes((len(raw),)) + raw
    if kind == "v":
        parts = [int(p) for p in str(value).split(".")]
        if len(parts) != size:
            return None
        return bytes(reversed(parts))
    raw = int(round(value / factor))
    bits = 8 * size
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind == "s" else (0, (1 << bits) - 1)
    if not lo <= raw <= hi:
        return None
    return (raw & ((1 << bits) - 1)).to_bytes(size, "little")


# Service data (after the UUID) for ``values``: a dict of name -> value (a list for
# repeated objects). With ``key`` (16 bytes) and ``mac`` the advert is AES-CCM encrypted.
def encode(values, packet_id=None, trigger=False, key=None, mac=None, counter=0):
    objects = []
    if packet_id is not None:
        objects.append((0, 0, bytes((0, packet_id & 0xFF))))
    for name, value in values.items():
        rows = objects_named(name)
        if not rows or name == "packet_id":
            raise BTHomeError("no BTHome object is named %r" % name)
        for item in value if isinstance(value, list) else [value]:
            for row in rows:
                raw = _encode_value(row, item)
                if raw is not None:
                    objects.append((row[0], len(objects), bytes((row[0],)) + raw))
                    break
            else:
                raise BTHomeError("%s value %r fits no BTHome object" % (name, item))
    objects.sort(key=lambda o: (o[0], o[1]))
    payload = b"".join(o[2] for o in objects)
    info = INFO_V2 | (INFO_TRIGGER if trigger else 0)
    if key is None:
        return bytes((info,)) + payload
    from . import ccm

    info |= INFO_ENCRYPTED
    count = counter.to_bytes(4, "little")
    sealed = ccm.encrypt(_key(key), _nonce(mac, info, count), payload, 4)
    return bytes((info,)) + sealed[:-4] + count + sealed[-4:]


def _key(key):
    if isinstance(key, str):
        key = bytes.fromhex(key)
    if len(key) != 16:
        raise BTHomeError("bind key must be 16 bytes (32 hex digits), got %d" % len(key))
    return bytes(key)


def _nonce(mac, info, count):
    if isinstance(mac, str):
        mac = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if mac is None or len(mac) != 6:
        raise BTHomeError("encryption needs the 6-byte MAC, got %r" % (mac,))
    return bytes(mac) + _UUID_LE + bytes((info,)) + count


# (plain service data, counter) of an encrypted advert; DecryptionError on a bad tag.
def decrypt(data, key, mac):
    from . import ccm

    data = bytes(data)
    if len(data) < 9:
        raise BTHomeError("encrypted advert too short: %d bytes" % len(data))
    info = data[0]
    count = data[-8:-4]
    plain = ccm.decrypt(_key(key), _nonce(mac, info, count), data[1:-8] + data[-4:], 4)
    return bytes((info & ~INFO_ENCRYPTED,)) + plain, int.from_bytes(count, "little")


# Values of one advert's service data, keyed by name (a list when a name repeats).
def decode(data, key=None, mac=None):
    data = bytes(data)
    if not data:
        raise BTHomeError("empty BTHome service data")
    info = data[0]
    if info >> 5 != 2:
        raise BTHomeError(
            "BTHome version %d (info 0x%02x); only 2 is supported" % (info >> 5, info)
        )
    if info & INFO_ENCRYPTED:
        if key is None:
            raise BTHomeError("advert is encrypted; its bind key is needed")
        data = decrypt(data, key, mac)[0]
    values = {}
    pos = 1
    end = len(data)
    while pos < end:
        obj_id = data[pos]
        row = object_by_id(obj_id)
        if row is None:
            raise BTHomeError("unknown object id 0x%02x at offset %d" % (obj_id, pos))
        _, name, kind, size, factor, unit = row
        pos += 1
        if kind in "tr":
            if pos >= end:
                raise BTHomeError("%s object truncated at offset %d" % (name, pos))
            size = data[pos]
            pos += 1
        if pos + size > end:
            raise BTHomeError(
                "%s needs %d bytes at offset %d, %d left" % (name, size, pos, end - pos)
            )
        raw = data[pos : pos + size]
        pos += size
        if kind == "t":
            try:
                value = raw.decode("utf-8")
            except UnicodeError:
                raise BTHomeError("text object is not UTF-8") from None
        elif kind == "r":
            value = raw
        elif kind == "v":
            value = ".".join(str(b) for b in reversed(raw))
        else:
            n = int.from_bytes(raw, "little")
            if kind == "b":
                value = n != 0
            elif kind == "e":
                value = (
                    "hold_press"
                    if n == _HOLD_PRESS
                    else (BUTTON_EVENTS[n] if n < len(BUTTON_EVENTS) else n)
                )
            else:
                if kind == "s" and n >= 1 << (8 * size - 1):
                    n -= 1 << (8 * size)
                value = n if factor == 1 else round(n * factor, 9)
        if name in values:
            prev = values[name]
            values[name] = prev + [value] if isinstance(prev, list) else [prev, value]
        else:
            values[name] = value
    return values


# A legacy advertising payload: flags, the BTHome service data and an optional name.
def advert(service_data, name=None):
    sd = _UUID_LE + bytes(service_data)
    out = b"\x02\x01\x06" + bytes((len(sd) + 1, 0x16)) + sd
    if name:
        raw = name.encode()
        out += bytes((len(raw) + 1, 0x09)) + raw
    if len(out) > 31:
        raise BTHomeError("advert of %d bytes exceeds the 31-byte legacy limit" % len(out))
    return out
