"""``cryptolib`` for the emulated board: AES-128 in ECB mode, as the ESP32 port offers it.

The official WebAssembly port of MicroPython has no ``cryptolib``; the ESP32 port has one
(hardware AES). The emulated board puts this module in the VM's /lib so firmware code runs
unchanged. Only what polekit uses is here: ``aes(key, 1)`` (ECB) and ``encrypt``; the
inverse cipher is not implemented (CCM only ever runs AES forwards).
"""

# FIPS-197 S-box
_SBOX = bytes.fromhex(
    "637c777bf26b6fc53001672bfed7ab76ca82c97dfa5947f0add4a2af9ca472c0"
    "b7fd9326363ff7cc34a5e5f171d8311504c723c31896059a071280e2eb27b275"
    "09832c1a1b6e5aa0523bd6b329e32f8453d100ed20fcb15b6acbbe394a4c58cf"
    "d0efaafb434d338545f9027f503c9fa851a3408f929d38f5bcb6da2110fff3d2"
    "cd0c13ec5f974417c4a77e3d645d197360814fdc222a908846eeb814de5e0bdb"
    "e0323a0a4906245cc2d3ac629195e479e7c8376d8dd54ea96c56f4ea657aae08"
    "ba78252e1ca6b4c6e8dd741f4bbd8b8a703eb5664803f60e613557b986c11d9e"
    "e1f8981169d98e949b1e87e9ce5528df8ca1890dbfe6426841992d0fb054bb16"
)
_RCON = b"\x01\x02\x04\x08\x10\x20\x40\x80\x1b\x36"


def _xtime(b):
    b <<= 1
    return (b ^ 0x1B) & 0xFF if b & 0x100 else b


def _expand_key(key):
    # the 11 round keys of AES-128, 176 bytes
    if len(key) != 16:
        raise ValueError("AES-128 needs a 16-byte key, got %d bytes" % len(key))
    w = bytearray(key)
    s = _SBOX
    for i in range(4, 44):
        t = w[4 * i - 4 : 4 * i]
        if i % 4 == 0:
            t = bytearray((s[t[1]] ^ _RCON[i // 4 - 1], s[t[2]], s[t[3]], s[t[0]]))
        for j in range(4):
            w.append(w[4 * i - 16 + j] ^ t[j])
    return bytes(w)


def _encrypt_block(round_keys, block):
    # one 16-byte block, state in column-major order as FIPS-197 lays it out
    s = _SBOX
    st = bytearray(block[i] ^ round_keys[i] for i in range(16))
    for rnd in range(1, 11):
        # SubBytes + ShiftRows
        st = bytearray(s[st[(i + 4 * (i % 4)) % 16]] for i in range(16))
        if rnd != 10:  # MixColumns
            for c in range(0, 16, 4):
                a0, a1, a2, a3 = st[c], st[c + 1], st[c + 2], st[c + 3]
                x = a0 ^ a1 ^ a2 ^ a3
                st[c] = a0 ^ x ^ _xtime(a0 ^ a1)
                st[c + 1] = a1 ^ x ^ _xtime(a1 ^ a2)
                st[c + 2] = a2 ^ x ^ _xtime(a2 ^ a3)
                st[c + 3] = a3 ^ x ^ _xtime(a3 ^ a0)
        k = 16 * rnd
        for i in range(16):
            st[i] ^= round_keys[k + i]
    return bytes(st)


# A function that encrypts one 16-byte block with ``key`` (native AES when the port has it).
class aes:  # noqa: N801 - the name MicroPython's cryptolib uses
    """AES cipher object: ``aes(key, 1)`` is AES-128-ECB; ``encrypt`` takes whole blocks."""

    def __init__(self, _key, _mode, _IV=None):  # noqa: N803 - the chip's name
        if _mode != 1:
            raise ValueError("the emulated cryptolib supports mode 1 (ECB) only, got %r" % (_mode,))
        self._round_keys = _expand_key(bytes(_key))

    def encrypt(self, _in_buf):
        """Encrypt ``_in_buf`` (a multiple of 16 bytes) block by block."""
        data = _in_buf
        if len(data) % 16:
            raise ValueError("ECB input must be a multiple of 16 bytes, got %d" % len(data))
        return b"".join(
            _encrypt_block(self._round_keys, data[i : i + 16]) for i in range(0, len(data), 16)
        )
