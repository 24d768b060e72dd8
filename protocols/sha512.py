# SHA-512 (FIPS 180-4) in pure code, for Ed25519 on the node: the ESP32 port's hashlib has
# sha256 only. Words are 64-bit, which MicroPython holds as big integers; slow (tens of ms a
# block on the chip) but only the OTA manifest is hashed with it, once per update.
# Imported only while an update is checked: not part of the node's resident heap.

_M = 0xFFFFFFFFFFFFFFFF

_K = (
    0x428A2F98D728AE22, 0x7137449123EF65CD, 0xB5C0FBCFEC4D3B2F, 0xE9B5DBA58189DBBC,
    0x3956C25BF348B538, 0x59F111F1B605D019, 0x923F82A4AF194F9B, 0xAB1C5ED5DA6D8118,
    0xD807AA98A3030242, 0x12835B0145706FBE, 0x243185BE4EE4B28C, 0x550C7DC3D5FFB4E2,
    0x72BE5D74F27B896F, 0x80DEB1FE3B1696B1, 0x9BDC06A725C71235, 0xC19BF174CF692694,
    0xE49B69C19EF14AD2, 0xEFBE4786384F25E3, 0x0FC19DC68B8CD5B5, 0x240CA1CC77AC9C65,
    0x2DE92C6F592B0275, 0x4A7484AA6EA6E483, 0x5CB0A9DCBD41FBD4, 0x76F988DA831153B5,
    0x983E5152EE66DFAB, 0xA831C66D2DB43210, 0xB00327C898FB213F, 0xBF597FC7BEEF0EE4,
    0xC6E00BF33DA88FC2, 0xD5A79147930AA725, 0x06CA6351E003826F, 0x142929670A0E6E70,
    0x27B70A8546D22FFC, 0x2E1B21385C26C926, 0x4D2C6DFC5AC42AED, 0x53380D139D95B3DF,
    0x650A73548BAF63DE, 0x766A0ABB3C77B2A8, 0x81C2C92E47EDAEE6, 0x92722C851482353B,
    0xA2BFE8A14CF10364, 0xA81A664BBC423001, 0xC24B8B70D0F89791, 0xC76C51A30654BE30,
    0xD192E819D6EF5218, 0xD69906245565A910, 0xF40E35855771202A, 0x106AA07032BBD1B8,
    0x19A4C116B8D2D0C8, 0x1E376C085141AB53, 0x2748774CDF8EEB99, 0x34B0BCB5E19B48A8,
    0x391C0CB3C5C95A63, 0x4ED8AA4AE3418ACB, 0x5B9CCA4F7763E373, 0x682E6FF3D6B2B8A3,
    0x748F82EE5DEFB2FC, 0x78A5636F43172F60, 0x84C87814A1F0AB72, 0x8CC702081A6439EC,
    0x90BEFFFA23631E28, 0xA4506CEBDE82BDE9, 0xBEF9A3F7B2C67915, 0xC67178F2E372532B,
    0xCA273ECEEA26619C, 0xD186B8C721C0C207, 0xEADA7DD6CDE0EB1E, 0xF57D4F7FEE6ED178,
    0x06F067AA72176FBA, 0x0A637DC5A2C898A6, 0x113F9804BEF90DAE, 0x1B710B35131C471B,
    0x28DB77F523047D84, 0x32CAAB7B40C72493, 0x3C9EBE0A15C9BEBC, 0x431D67C49C100D4C,
    0x4CC5D4BECB3E42B6, 0x597F299CFC657E2A, 0x5FCB6FAB3AD6FAEC, 0x6C44198C4A475817,
)  # fmt: skip

_H0 = (
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
)  # fmt: skip


def _rotr(x, n):
    return (x >> n | x << (64 - n)) & _M


# One block's compression as steps: yields None every few rounds (each 64-bit word is a big
# integer on MicroPython: a whole block makes ~180 KB of garbage, more than the emulated
# ESP32 can hold between two collections), then writes the new state into ``h``.
def _compress(h, block):
    w = [int.from_bytes(block[i : i + 8], "big") for i in range(0, 128, 8)]
    for t in range(16, 80):
        a = w[t - 15]
        b = w[t - 2]
        s0 = _rotr(a, 1) ^ _rotr(a, 8) ^ a >> 7
        s1 = _rotr(b, 19) ^ _rotr(b, 61) ^ b >> 6
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M)
        if t & 7 == 7:
            yield None
    a, b, c, d, e, f, g, hh = h
    for t in range(80):
        t1 = (
            hh
            + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41))
            + (e & f ^ (e ^ _M) & g)
            + _K[t]
            + w[t]
        )
        t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + (a & b ^ a & c ^ b & c)
        hh = g
        g = f
        f = e
        e = (d + t1) & _M
        d = c
        c = b
        b = a
        a = (t1 + t2) & _M
        if t & 7 == 7:
            yield None
    new = (a, b, c, d, e, f, g, hh)
    for i in range(8):
        h[i] = (h[i] + new[i]) & _M


# hashlib-style: update() with bytes as often as needed, then digest() (64 bytes).
# update_steps() and finish_steps() are the same work as generators of steps, for a caller
# that yields to its event loop between them (protocols/ed25519.py).
class SHA512:
    block_size = 128
    digest_size = 64

    def __init__(self, data=b""):
        self._h = list(_H0)
        self._buf = b""
        self._n = 0
        self._done = None
        if data:
            self.update(data)

    def update_steps(self, data):
        self._done = None
        data = self._buf + bytes(data)
        self._n += len(data) - len(self._buf)
        end = len(data) - len(data) % 128
        self._buf = data[end:]
        for i in range(0, end, 128):
            yield from _compress(self._h, data[i : i + 128])

    def finish_steps(self):
        pad = b"\x80" + bytes((111 - self._n) % 128) + (self._n * 8).to_bytes(16, "big")
        data = self._buf + pad
        h = list(self._h)
        for i in range(0, len(data), 128):
            yield from _compress(h, data[i : i + 128])
        self._done = b"".join(x.to_bytes(8, "big") for x in h)

    def update(self, data):
        for _ in self.update_steps(data):
            pass

    def digest(self):
        if self._done is None:
            for _ in self.finish_steps():
                pass
        return self._done


def sha512(data=b""):
    return SHA512(data)
