# SenML (RFC 8428) packs in JSON and CBOR, with base-value resolution and validation.
#
# A record is a dict keyed by the RFC's JSON labels ("bn", "n", "v", "u", "t", ...); a
# pack is a list of records. "vd" (data value) holds bytes in a record; it travels as
# base64url in JSON and as a byte string in CBOR. Keys are written in one fixed order so
# the board and the gateway produce the same bytes for the same pack.
#
# (Comments, not a docstring: MicroPython keeps docstrings on the heap.)

from . import cbor
from .errors import CBORDecodeError, SenMLError, shown
from .model import convert, primary_unit, quantity

VERSION = 10  # RFC 8428's version; the default when "bver" is absent
VERSION_SECONDARY_UNITS = 26  # RFC 9100: version 10 plus feature bit 4 (secondary units)
RELATIVE_TIME_LIMIT = 268435456  # 2**28: times below it are relative to "now"
# SenML numbers are IEEE 754 doubles in JSON and CBOR alike: a larger integer is refused (or
# resolving it, int + float, would raise OverflowError), and so are NaN and the infinities,
# which JSON cannot carry
DOUBLE_MAX = 1.7976931348623157e308

# JSON label, CBOR label, type: s = text, n = number, i = integer, b = boolean, d = bytes
_FIELDS = (
    ("bver", -1, "i"),
    ("bn", -2, "s"),
    ("bt", -3, "n"),
    ("bu", -4, "s"),
    ("bv", -5, "n"),
    ("bs", -6, "n"),
    ("n", 0, "s"),
    ("u", 1, "s"),
    ("v", 2, "n"),
    ("vs", 3, "s"),
    ("vb", 4, "b"),
    ("vd", 8, "d"),
    ("s", 5, "n"),
    ("t", 6, "n"),
    ("ut", 7, "n"),
)
_BY_NAME = {f[0]: f for f in _FIELDS}
_BY_CBOR = {f[1]: f for f in _FIELDS}
_VALUE_FIELDS = ("v", "vs", "vb", "vd")
_BASE_FIELDS = ("bn", "bt", "bu", "bv", "bs", "bver")


# The base name of a polekit device's packs: ``urn:dev:pk:{device_code}:``.
def base_name(device_code):
    return "urn:dev:pk:" + device_code + ":"


_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:./_"


def _name_ok(name):
    # a letter or digit (the set's first 62), then only the set: strip() leaves nothing
    return name != "" and 0 <= _NAME_CHARS.find(name[0]) < 62 and not name.strip(_NAME_CHARS)


_TYPES = {"s": (str,), "n": (int, float), "i": (int,), "d": (bytes, bytearray), "b": ()}


# Check a pack against RFC 8428; raises SenMLError naming the record and the field.
def validate(records):
    # types, unknown mandatory fields ("..._"), one value per record, and the names that
    # result from base-name concatenation
    if not isinstance(records, list):
        raise SenMLError("a SenML pack is a list of records, got %s" % type(records).__name__)
    bn = ""
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise SenMLError("record %d: expected a map, got %s" % (i, type(rec).__name__))
        for key, value in rec.items():
            field = _BY_NAME.get(key)
            if field is None:
                if isinstance(key, str) and key.endswith("_"):
                    raise SenMLError("record %d: unknown mandatory field %s" % (i, shown(key)))
                continue
            kind = field[2]
            if value is True or value is False:
                ok = kind == "b"
            elif kind == "n":
                ok = isinstance(value, (int, float))
                if ok and not -DOUBLE_MAX <= value <= DOUBLE_MAX:
                    raise SenMLError(
                        "record %d: %r is not a finite number in a double's range" % (i, key)
                    )
            else:
                ok = isinstance(value, _TYPES[kind])
            if not ok:
                raise SenMLError(
                    "record %d: %r has the wrong type (%s); see RFC 8428 table 1"
                    % (i, key, shown(value))
                )
        if ("v" in rec) + ("vs" in rec) + ("vb" in rec) + ("vd" in rec) > 1:
            raise SenMLError("record %d: more than one value field (v, vs, vb, vd)" % i)
        if "bver" in rec and rec["bver"] < 0:
            raise SenMLError(
                "record %d: bver must not be negative, got %s" % (i, shown(rec["bver"]))
            )
        if "bn" in rec:
            bn = rec["bn"]
        name = bn + rec.get("n", "")
        if not _name_ok(name):
            raise SenMLError(
                "record %d: name %s must start with a letter or digit and use only "
                "A-Z a-z 0-9 - : . / _" % (i, shown(name))
            )


def _ordered(rec):
    # fixed label order, then extension labels in sorted order: same bytes on every interpreter
    keys = [f[0] for f in _FIELDS if f[0] in rec]
    extra = [k for k in rec if k not in _BY_NAME]
    extra.sort(key=str)
    return keys + extra


def _b64url(raw):
    from binascii import b2a_base64

    text = b2a_base64(bytes(raw)).decode().strip().rstrip("=")
    return text.replace("+", "-").replace("/", "_")


def _unb64url(text, i):
    from binascii import a2b_base64

    text = text.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return a2b_base64((text + "=" * (-len(text) % 4)).encode())
    except ValueError:
        raise SenMLError("record %d: vd is not base64url: %s" % (i, shown(text))) from None


# Encode a pack as compact JSON text (application/senml+json).
def encode_json(records):
    import json

    validate(records)
    out = []
    for rec in records:
        parts = []
        for key in _ordered(rec):
            value = rec[key]
            if key == "vd":
                value = _b64url(value)
            parts.append(json.dumps(key) + ":" + json.dumps(value, separators=(",", ":")))
        out.append("{" + ",".join(parts) + "}")
    return "[" + ",".join(out) + "]"


# Decode and validate a JSON pack; "vd" values come back as bytes.
def decode_json(text):
    import json

    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeError:
            raise SenMLError("SenML JSON is not valid UTF-8") from None
    try:
        records = json.loads(text)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: CPython's RecursionError
        raise SenMLError("not valid JSON: %s" % exc) from None
    if isinstance(records, list):
        for i, rec in enumerate(records):
            if isinstance(rec, dict) and isinstance(rec.get("vd"), str):
                rec["vd"] = _unb64url(rec["vd"], i)
    validate(records)
    return records


# Encode a pack as CBOR (application/senml+cbor) with the RFC's integer labels. ``checked``:
# the caller has validated a pack of this shape (validate() is half the cost of a small pack).
def encode_cbor(records, checked=False):
    if not checked:
        validate(records)
    # map heads written here, not dicts: keeps the label order on MicroPython too. The
    # labels (-6..8) are one byte each: n for n >= 0, 0x20 | (-1 - n) = 31 - n below.
    out = bytearray()
    put = cbor.encode_into
    cbor.head(out, 4, len(records))
    for rec in records:
        size = len(rec)
        cbor.head(out, 5, size)
        known = 0
        for name, label, _ in _FIELDS:
            if name in rec:
                out.append(label if label >= 0 else 31 - label)
                put(rec[name], out)
                known += 1
                if known == size:
                    break
        if known < size:
            for key in _ordered(rec)[known:]:
                put(key, out)
                put(rec[key], out)
    return bytes(out)


# Decode and validate a CBOR pack; integer labels become the JSON labels.
def decode_cbor(data):
    try:
        pack = cbor.loads(data)
    except CBORDecodeError as exc:
        raise SenMLError("not valid CBOR: %s" % exc) from None
    if not isinstance(pack, list):
        raise SenMLError("a SenML pack is a CBOR array, got %s" % type(pack).__name__)
    records = []
    for i, m in enumerate(pack):
        if not isinstance(m, dict):
            raise SenMLError("record %d: expected a map, got %s" % (i, type(m).__name__))
        rec = {}
        for key, value in m.items():
            # RFC 8428: labels are the table's integers or text; a key not understood is
            # ignored (type(): CBOR true is not label 1)
            if type(key) is int:
                field = _BY_CBOR.get(key)
                if field:
                    rec[field[0]] = value
            elif isinstance(key, str):
                rec[key] = value
        records.append(rec)
    validate(records)
    return records


# Resolve a pack per RFC 8428 section 4.6 (``now``: Unix seconds for relative times).
def resolve(records, now=None):
    # Every record gets its full name (bn + n), its unit (u, else bu), its absolute time
    # (bt + t; times below 2**28 are relative to ``now``, which defaults to the host clock)
    # and its value (bv + v, bs + s), and loses the base fields. "bver" stays in every
    # record only when it is not 10. Records come back in chronological order, stable for
    # equal times.
    validate(records)
    bn, bt, bu, bv, bs, bver = "", 0, None, None, None, VERSION
    resolved = []
    for i, rec in enumerate(records):
        bn = rec.get("bn", bn)
        bt = rec.get("bt", bt)
        bu = rec.get("bu", bu)
        bv = rec.get("bv", bv)
        bs = rec.get("bs", bs)
        bver = rec.get("bver", bver)
        out = {}
        for key, value in rec.items():
            if key not in _BASE_FIELDS:
                out[key] = value
        out["n"] = bn + rec.get("n", "")
        unit = rec.get("u", bu)
        if unit is not None:
            out["u"] = unit
        t = bt + rec.get("t", 0)
        if t < RELATIVE_TIME_LIMIT:
            if now is None:
                import time

                now = time.time()
            t = now + t
        out["t"] = t
        has_value = False
        for key in _VALUE_FIELDS:
            if key in rec:
                has_value = True
        if "v" in rec and bv is not None:
            out["v"] = bv + rec["v"]
        elif not has_value and "s" not in rec and bv is not None:
            out["v"] = bv
            has_value = True
        if "s" in rec and bs is not None:
            out["s"] = bs + rec["s"]
        elif not has_value and "s" not in rec and bs is not None:
            out["s"] = bs
        if not has_value and "s" not in out:
            raise SenMLError("record %d (%s) has no value and no sum" % (i, out["n"]))
        if bver != VERSION:
            out["bver"] = bver
        resolved.append((t, i, out))
    resolved.sort(
        key=lambda e: (e[0], e[1])
    )  # MicroPython's sort is not stable: sort on (t, index)
    return [e[2] for e in resolved]


# The unit a reading of ``name`` in ``unit`` is sent in (see pack_readings).
def _target(name, unit, secondary):
    q = quantity(name)
    if q is not None and q[1] is not None:
        target = q[2] if secondary and q[2] else q[1]
        if unit is None:
            raise SenMLError(
                "reading %r has no unit; expected one convertible to %s" % (name, target)
            )
        return target
    if unit is not None and not secondary:
        return primary_unit(unit)  # names outside the model: primary units too
    return unit


# ``readings`` is a list of ``(name, value, unit)`` or ``(name, value, unit, t)`` with
# ``t`` relative to ``base_time``; ``unit`` is the unit the value is in (None for booleans
# and counters). Quantities of the reference model are converted to their primary unit, or
# to their secondary unit when ``secondary`` is set (the pack then declares bver 26); other
# names keep the unit they came with. ``targets``, a dict the caller keeps for one
# ``secondary`` setting, remembers the unit each (name, unit) is sent in: the model's
# tables are searched once a point, not once a poll.
# Build the SenML pack for one poll of one device (see the comment above).
def pack_readings(device_code, readings, base_time=None, secondary=False, targets=None):
    records = []
    for entry in readings:
        name, value, unit = entry[0], entry[1], entry[2]
        rec = {"n": name}
        if value is True or value is False:
            rec["vb"] = value
        elif isinstance(value, str):
            rec["vs"] = value
        elif isinstance(value, (bytes, bytearray)):
            rec["vd"] = bytes(value)
        else:
            key = (name, unit)
            if targets is not None and key in targets:
                target = targets[key]
            else:
                target = _target(name, unit, secondary)
                if targets is not None:
                    targets[key] = target
            if target != unit:
                value = convert(value, unit, target)
                unit = target
            if unit is not None:
                rec["u"] = unit
            rec["v"] = value
        if len(entry) > 3 and entry[3]:
            rec["t"] = entry[3]
        records.append(rec)
    if records:
        first = records[0]
        first["bn"] = base_name(device_code)
        if base_time is not None:
            first["bt"] = base_time
        if secondary:
            first["bver"] = VERSION_SECONDARY_UNITS
    return records
