# Ed25519 signature verification (RFC 8032 section 5.1.7) in pure code on big integers, so
# the node can check an update's signature: MicroPython on the ESP32 has no Ed25519 and no
# secure boot. The host signs and verifies with `cryptography`; this code is tested against
# it, on CPython and inside the MicroPython VM (tests/test_ed25519.py).
#
# Verification is "cofactorless", as OpenSSL's (and so `cryptography`'s): R' = [S]B - [k]A
# is encoded and compared with R's bytes. Refused before any arithmetic: S >= L (a
# malleable signature), a public key whose y is not below p, that is not on the curve, or
# that has small order (such a key verifies forged signatures); section 5.1.3 and 8.4.
#
# Speed: points in extended coordinates (Hisil et al. 2008, the formulas of RFC 8032
# section 5.1.4), one pass of 64 doublings-by-16 for both scalars (Straus), fixed 4-bit
# windows: a table of [1..15]B, built once at import, and one of [1..15](-A) per call.
# Memory: every step makes garbage (big integers); the work is a generator of steps so
# that verify_async() can yield to the event loop between them (on the emulated board the
# garbage is only collected there). Imported only while an update is checked.

from .sha512 import SHA512

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 2 * D % P
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202


# P1 + Q with Q cached as (Y+X, Y-X, 2dT, 2Z): 8 multiplications
def _add(p1, q):
    x1, y1, z1, t1 = p1
    a = (y1 - x1) * q[1] % P
    b = (y1 + x1) * q[0] % P
    c = t1 * q[2] % P
    d = z1 * q[3] % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p1):
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    s = x1 + y1
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _cached(p1):
    x, y, z, t = p1
    return ((y + x) % P, (y - x) % P, t * _D2 % P, 2 * z % P)


# [1..15]Q as cached points (index 0 unused)
def _table(q):
    one = _cached(q)
    out = [None, one]
    acc = q
    for _ in range(14):
        acc = _add(acc, one)
        out.append(_cached(acc))
    return out


def _base_table():
    t = _table((_BX, _BY, 1, _BX * _BY % P))
    # affine: Z = 1 (2Z = 2) saves one multiplication per addition of a base multiple
    out = [None]
    for yp, ym, t2, z2 in t[1:]:
        zi = pow(z2 * _inv2 % P, P - 2, P)
        out.append((yp * zi % P, ym * zi % P, t2 * zi % P, 2))
    return tuple(out)


_inv2 = (P + 1) // 2
_BASE = _base_table()


# The point of a 32-byte encoding (RFC 8032 section 5.1.3), None if there is none
def _decode(s):
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    yy = y * y % P
    u = (yy - 1) % P
    v = (D * yy + 1) % P
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, (P - 5) // 8, P) % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != P - u:
            return None
        x = x * _SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _encode(p1):
    x, y, z, _ = p1
    zi = pow(z, P - 2, P)
    x = x * zi % P
    y = y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


# The steps of one verification: yields None between steps, then True or False (last).
def verify_steps(public_key, message, signature):
    if len(public_key) != 32 or len(signature) != 64:
        yield False
        return
    r = bytes(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    a = _decode(public_key) if s < L else None
    if a is not None:
        small = _double(_double(_double(a)))  # [8]A is the identity for a small-order A
        if small[0] == 0 and small[1] == small[2]:
            a = None
    if a is None:
        yield False
        return
    h = SHA512(r + bytes(public_key))
    for i in range(0, len(message), 128):
        h.update(message[i : i + 128])
        yield None
    k = int.from_bytes(h.digest(), "little") % L
    yield None
    neg = _table((P - a[0], a[1], 1, (P - a[0]) * a[1] % P))
    sb = s.to_bytes(32, "little")
    kb = k.to_bytes(32, "little")
    base = _BASE
    q = (0, 1, 1, 0)
    started = False
    for i in range(63, -1, -1):
        shift = (i & 1) << 2
        ds = sb[i >> 1] >> shift & 15
        dk = kb[i >> 1] >> shift & 15
        if started:
            q = _double(_double(_double(_double(q))))
        if ds:
            q = _add(q, base[ds])
            started = True
        if dk:
            q = _add(q, neg[dk])
            started = True
        yield None
    yield _encode(q) == r


# True if ``signature`` (64 bytes) is ``public_key``'s (32 bytes) Ed25519 signature of
# ``message``; False for anything else, malformed inputs included.
def verify(public_key, message, signature):
    for result in verify_steps(public_key, message, signature):
        if result is not None:
            return result
    return False


# verify() as a coroutine that yields to the event loop between steps (a few ms each on
# the chip): the node keeps answering its bus and feeding its watchdog meanwhile.
async def verify_async(public_key, message, signature):
    import asyncio

    pause = getattr(asyncio, "sleep_ms", asyncio.sleep)
    for result in verify_steps(public_key, message, signature):
        if result is not None:
            return result
        await pause(0)
    return False
