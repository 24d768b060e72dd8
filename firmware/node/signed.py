# Settings for a node with a bind key: only a central holding the key can set them, and a
# write captured on the air cannot be played back.
#
# The node shows a fresh 8-byte challenge in its STATUS characteristic (4 bytes from its
# advert counter, which never repeats while /state.json holds its epoch, and 4 random
# ones). A signed write on SETTINGS is
#     msg || salt (4 bytes) || tag (8 bytes)
# msg: a CBOR map {"set": {...settings...}, "after": <counter>} ("after" optional: the last
# advert counter the gateway accepted, see community.py); tag: the AES-CCM tag (RFC 3610,
# 8 bytes, no plaintext, msg as associated data) under the bind key with the 12-byte nonce
# challenge || salt. A 12-byte nonce can never equal an advert's 13-byte one (CCM's first
# block holds the nonce length), the node's challenge makes the tag good for one write
# only, and the sender's salt keeps nonces apart if it signs twice for one challenge.
# The node checks the tag before it parses a byte of msg. docs/gateway.md has the model.
# Imports nothing CPython lacks, so the host's tests and fuzz suite run this very code.
from protocols import cbor, ccm
from protocols.errors import DecryptionError

SALT_BYTES = 4
TAG_BYTES = 8
MAX_BYTES = 512  # the SETTINGS buffer (gatts_set_buffer): a longer write is cut short


# (settings, after) of a signed write; ValueError saying what is wrong
def open_signed(body, key, challenge):
    body = bytes(body)
    if len(body) > MAX_BYTES:
        raise ValueError("settings of %d bytes: at most %d" % (len(body), MAX_BYTES))
    if len(body) <= SALT_BYTES + TAG_BYTES:
        raise ValueError("not signed: this node has a bind key; set it through the gateway")
    msg = body[: -SALT_BYTES - TAG_BYTES]
    nonce = bytes(challenge) + body[-SALT_BYTES - TAG_BYTES : -TAG_BYTES]
    try:
        ccm.decrypt(key, nonce, body[-TAG_BYTES:], TAG_BYTES, msg)
    except DecryptionError:
        raise ValueError(
            "not signed with this node's bind key for its current challenge "
            "(unsigned, a wrong key, or a replay)"
        ) from None
    try:
        m = cbor.loads(msg)
    except ValueError:
        raise ValueError("signed settings are not CBOR") from None
    if not isinstance(m, dict):
        raise ValueError('signed settings must be a map like {"set": {"lamp_level": 40}}')
    changes = m.get("set", {})
    after = m.get("after")
    if not isinstance(changes, dict):
        raise ValueError('"set" must be a map like {"lamp_level": 40}')
    if after is not None and (
        not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= 0xFFFFFFFF
    ):
        raise ValueError('"after" must be a counter 0..4294967295')
    if not changes and after is None:
        raise ValueError("signed settings carry nothing to set")
    return changes, after
