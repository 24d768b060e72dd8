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
# windows: a table of [1..15]B (constants below) and one of [1..15](-A) per call.
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


# [1..15]Q as cached points into ``out`` (index 0 unused), in steps of a few additions
def _table(q, out):
    one = _cached(q)
    out += [None, one]
    acc = q
    for i in range(14):
        acc = _add(acc, one)
        out.append(_cached(acc))
        if i & 3 == 3:
            yield None


# [1..15]B as affine cached points (Y+X, Y-X, 2dT, 2Z with Z = 1: an addition of one costs
# a multiplication less). Literals, not computed at import: computing them makes ~45 KB of
# garbage, too much at once on the emulated board (tests/test_ed25519.py checks them).
_BASE = (
    None,
    (
        0x07CF9D3A33D4BA65270B4898643D42C2CF932DC6FB8C0E192FBC93C6F58C3B85,
        0x44FD2F9298F81267A5C18434688F8A09FD399F05D140BEB39D103905D740913E,
        0x6F117B689F0C65A85A1B7DCBDD43598C26D9E823CCAAC49EABC91205877AAA68,
        2,
    ),
    (
        0x590C063FA87D2E2E5AA69A65E1D607029F469D967A0FF5B59224E7FC933C71D7,
        0x6BB595A669C92555E09E236BB16E37AA8F2B810C4E60ACF68A99A56042B4D5A8,
        0x701AF5B13EA50B73500FA0840B3D6A3136C16BDD5D9ACF7843FAA8B3A59B7A5F,
        2,
    ),
    (
        0x7A164E1B9A80F8F4C11B50029F016732025A8430E8864B8AAF25B0A84CEE9730,
        0x2AB91587555BDA628131F31A214BD6BD3BD353FDE5C1BA7D56611FE8A4FCD265,
        0x5A2826AF12B9B4C6D170E5458CF2DB4C589423221C35DA6214AE933F0DD0D889,
        2,
    ),
    (
        0x680E910321E58727CA348D3DFB0A92656765C6F47DFD2538287351B98EFC099F,
        0x27933F4C7445A49AC3E8E3CD06A05073327E89715660FAA995FE050A056818BF,
        0x7F9D0CBF63553E2B5DDBDCF9102B44946E9E39457B5CC1725A13FBE9C476FF09,
        2,
    ),
    (
        0x2945CCF146E206EBDD1BEB0C5ABFEC448D5048C3C75EED02A212BC4408A5BB33,
        0x154A7E73EB1B55F3E33CF11CB864A087D50014D14B2729B77F9182C3A447D6BA,
        0x43AABE696B3BB69AB41B670B1BBDA72D270E0807D0BDD1FCBCBBDBF1812A8285,
        2,
    ),
    (
        0x51E57BB6A2CC38BD8065B668DA59A7369B27158900C8AF883A0CEEEB77157131,
        0x38B64C41AE417884BB085CE7204553B9575BE28427D22739499806B67B7D8CA4,
        0x10B8E91A9F0D61E353E4A24B083BC144BE70E00341A1BB0185AC326702EA4B71,
        2,
    ),
    (
        0x461BEA69283C927E71B2528228542E497470353AB39DC0D26B1A5CD0944EA3BF,
        0x1D6EDD5D2E5317E09DEA764F92192C3A6CA021533BBA23A7BA6F2C9AAA3221B1,
        0x7A9FBB1C6A0F90A7529C41BA5877ADF3B3035F47053EA49AF1836DC801B8B3A2,
        2,
    ),
    (
        0x0915E76061BCE52FB1339C665ED9C3236CB30377E288702C59B7596604DD3E8F,
        0x3A9024A1320E01C32C2741AC6E3C23FB963D7680E1B558F9E2A75DEDF39234D9,
        0x26907C5C2ECC4E95636412190EB62A32B8A371788BCCA7D7E7C1F5D9C9A2911A,
        2,
    ),
    (
        0x34B9ED338ADD7F59CEB233C9C686F5B5A6509E6F51BC46C59B2E678AA6A8632F,
        0x49C05A51FADC9C8F96CBC608E75EB04498A081B6F520419BF36E217E039D8064,
        0x73C172021B008B06AAF6FC2993D4CF16E2FF83E8A719D22F06B4E8BF9045AF1B,
        2,
    ),
    (
        0x43AC7628AAE591ED0D5503639B55464645F534D41617E057FF1D93D2B360748E,
        0x0353832C4950B70284739745F5DC395804F8183665A9F02F75F3558E227081DD,
        0x0EC62AF470BF4CE7FF169F0F6731B5091D0C1CCBD3F06340D03D2AE403D0F8D8,
        2,
    ),
    (
        0x4275AAE2546D8FAF113E847117703406E5D9FECF02302E272FBF00848A802ADE,
        0x18AB598029D5C77FA3A075556A8DEB953ED6B36977088381315F5B0249864348,
        0x3DC65522B53DF94844311199B51A8622031EB4A13282E4A4D82B2CC5FD6089E9,
        2,
    ),
    (
        0x078AAFDE8D3CDD5845ECDD2E701A6F9388DE3DD7D834D1A9E2358042A71E7539,
        0x7956ECE28A6022ED884DFB6E56D5DBDD23B2BF90CCB25B24856F8375B53D54B9,
        0x37C6A5151C83D0C6FFCB589AF4976461F66CDA23A24E180BEEA594D87F944553,
        2,
    ),
    (
        0x234FD7EEC346F241537A0E12FB07BA07BF84B39AB5BCDEDBBF70C222A2007F6D,
        0x0267882D176024A79D12B232AAAD5968AEFCEBC99B776F6B506F013B327FBF93,
        0x497BA6FDAA097863A2EF37F891A7E5332437E6B1DF8DD4715360A119732EA378,
        2,
    ),
    (
        0x6EAF60B2464D16301A474C042881BDD580277FC057EFA98726F870EC3F213DF2,
        0x2DF0EA2C5B3C80D2112E56F16EEC47A9CE69B20FDB7CA331DFDB8A44D4171280,
        0x24BF7E3CD8BA9C939C1FDF703ECB1BAAF02397EDA2A9BF5496A1C5877A1E1B82,
        2,
    ),
    (
        0x61E22917F12DE72B2DBDBDFAC1F2D4D08648C28D189C246D24CECC0313CFEAA0,
        0x43B5CD4218D05EBF7508300807B25192D3829BA42A9910D6040BCD86468CCF0B,
        0x511D61210AE4D842032E5A7D93D64270EB38AF4E373FDEEE5D9A762F9BD0B516,
        2,
    ),
)


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
    h = SHA512()
    yield from h.update_steps(r + bytes(public_key))
    for i in range(0, len(message), 128):
        yield from h.update_steps(message[i : i + 128])
    yield from h.finish_steps()
    k = int.from_bytes(h.digest(), "little") % L
    yield None
    neg = []
    yield from _table((P - a[0], a[1], 1, (P - a[0]) * a[1] % P), neg)
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
