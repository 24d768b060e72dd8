# Device codes: one coding scheme for every sensing terminal.
#
# A code is 15 characters, ``RRRRRRTTSSSSSSC``: the 6-digit administrative division code
# of the region (GB/T 2260, e.g. 371600), a 2-letter device type from ``DEVICE_TYPES``, a
# 6-digit serial, and a check character computed over the first 14 with ISO/IEC 7064
# MOD 37-36 (alphabet 0-9A-Z), which catches every single-character error and every
# transposition of two adjacent characters. Example: ``make("371600", "PL", 1)``.
#
# (Comments, not a docstring: MicroPython keeps docstrings on the heap.)

from .errors import IdentityError, shown

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LENGTH = 15
SERIAL_MAX = 999999

# code description; one string, not a dict: it costs the node a few hundred bytes only
DEVICE_TYPES = """
PL smart pole node (environment, tilt, lamp)
EN environment sensor
LM lamp controller
TL tilt sensor
WL water level / flood sensor
EM energy meter
EV EV charger
CM camera
SO SOS emergency button
SM smoke alarm
WA water leak alarm
AQ air quality sensor
TH room climate sensor
DR door contact
GW gateway
"""


# The device type letters, for messages: "PL, EN, LM, ..."
def type_list():
    return ", ".join(line[:2] for line in DEVICE_TYPES.split("\n") if line)


# The ISO/IEC 7064 MOD 37-36 check character of ``body`` (digits and capitals).
def check_char(body):
    p = 36
    for c in body:
        v = _ALPHABET.find(c)
        if v < 0:
            raise IdentityError("character %r is not in 0-9A-Z" % c)
        s = (p + v) % 36 or 36
        p = (s * 2) % 37
    return _ALPHABET[(37 - p) % 36]


# True if ``text`` is ``n`` ASCII digits: str.isdigit() also passes "²" and "٣", which
# int() then refuses or reads
def _digits(text, n):
    return isinstance(text, str) and len(text) == n and text.isdigit() and len(text.encode()) == n


def _check_parts(region, dtype, serial):
    if not _digits(region, 6):
        raise IdentityError("region must be 6 digits like 371600, got %s" % shown(region))
    if not 11 <= int(region[:2]) <= 82:
        raise IdentityError("region %r: the first two digits (province) must be 11..82" % region)
    if not (isinstance(dtype, str) and len(dtype) == 2 and ("\n" + dtype + " ") in DEVICE_TYPES):
        raise IdentityError(
            "device type %s is unknown; known types: %s" % (shown(dtype), type_list())
        )
    if not (isinstance(serial, int) and 1 <= serial <= SERIAL_MAX):
        raise IdentityError("serial must be an integer 1..%d, got %s" % (SERIAL_MAX, shown(serial)))


# The device code for a region, a device type and a serial, with its check character.
def make(region, dtype, serial):
    _check_parts(region, dtype, serial)
    body = "%s%s%06d" % (region, dtype, serial)
    return body + check_char(body)


# Split and verify a device code: (region, dtype, serial); IdentityError says what is wrong.
def parse(code):
    if not isinstance(code, str):
        raise IdentityError("a device code is a string, got %s" % type(code).__name__)
    if len(code) != LENGTH:
        raise IdentityError(
            "device code %s has %d characters, not %d" % (shown(code), len(code), LENGTH)
        )
    region, dtype, serial = code[:6], code[6:8], code[8:14]
    if not _digits(serial, 6):
        raise IdentityError("device code %r: characters 9-14 must be the 6-digit serial" % code)
    _check_parts(region, dtype, int(serial))
    expected = check_char(code[:14])
    if code[14] != expected:
        raise IdentityError(
            "device code %r: check character is %r, expected %r (mistyped?)"
            % (code, code[14], expected)
        )
    return region, dtype, int(serial)


# True if ``code`` is a well-formed device code with the right check character.
def validate(code):
    try:
        parse(code)
    except IdentityError:
        return False
    return True
