# AES-CCM (RFC 3610 / NIST SP 800-38C) built from the AES block cipher: CBC-MAC + CTR.
#
# MicroPython's ``cryptolib`` offers AES-ECB but no CCM, and BTHome encryption is CCM with a
# 4-byte tag; this module composes it so the same code runs on the board and the host. The
# block cipher comes from ``cryptolib`` on MicroPython (hardware AES on the ESP32; the
# emulated board supplies a pure one) and from the ``cryptography`` package on CPython.

from .errors import DecryptionError


# A function that AES-encrypts one 16-byte block with ``key``.
def ecb_encryptor(key):
    key = bytes(key)
    try:
        from cryptolib import aes
    except ImportError:  # CPython
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update
    return aes(key, 1).encrypt


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def _check(nonce, tag_len):
    if not 7 <= len(nonce) <= 13:
        raise ValueError("CCM nonce must be 7..13 bytes, got %d" % len(nonce))
    if tag_len not in (4, 6, 8, 10, 12, 14, 16):
        raise ValueError("CCM tag length must be even and 4..16, got %d" % tag_len)
    return 15 - len(nonce)


def _mac(enc, nonce, lsize, data, aad, tag_len):
    flags = (0x40 if aad else 0) | ((tag_len - 2) // 2) << 3 | (lsize - 1)
    x = enc(bytes((flags,)) + nonce + len(data).to_bytes(lsize, "big"))
    blocks = b""
    if aad:
        blocks = len(aad).to_bytes(2, "big") + aad
        blocks += bytes(-len(blocks) % 16)
    blocks += data + bytes(-len(data) % 16)
    for i in range(0, len(blocks), 16):
        x = enc(_xor(x, blocks[i : i + 16]))
    return x[:tag_len]


# CTR mode from counter block ``first``: block 0 masks the tag, blocks 1.. the message.
def _ctr(enc, nonce, lsize, data, first):
    out = bytearray()
    for i in range(0, len(data), 16):
        s = enc(bytes((lsize - 1,)) + nonce + (i // 16 + first).to_bytes(lsize, "big"))
        out += _xor(data[i : i + 16], s)
    return bytes(out)


# Ciphertext followed by its ``tag_len``-byte authentication tag.
def encrypt(key, nonce, plaintext, tag_len=4, aad=b""):
    lsize = _check(nonce, tag_len)
    enc = ecb_encryptor(key)
    tag = _mac(enc, nonce, lsize, plaintext, aad, tag_len)
    return _ctr(enc, nonce, lsize, plaintext, 1) + _ctr(enc, nonce, lsize, tag, 0)


# Plaintext of ``data`` (ciphertext + tag); DecryptionError if the tag does not match.
def decrypt(key, nonce, data, tag_len=4, aad=b""):
    lsize = _check(nonce, tag_len)
    if len(data) < tag_len:
        raise DecryptionError(
            "CCM input of %d bytes is shorter than its %d-byte tag" % (len(data), tag_len)
        )
    enc = ecb_encryptor(key)
    plaintext = _ctr(enc, nonce, lsize, data[:-tag_len], 1)
    expected = _ctr(enc, nonce, lsize, _mac(enc, nonce, lsize, plaintext, aad, tag_len), 0)
    diff = 0
    for x, y in zip(expected, data[-tag_len:]):
        diff |= x ^ y
    if diff:
        raise DecryptionError("integrity check failed: wrong key or tampered data")
    return plaintext
