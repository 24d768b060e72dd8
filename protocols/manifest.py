# The signed manifest of an over-the-air update, and the one check the node and the
# gateway both run before they take a byte of the update (docs/protocols.md).
#
# manifest.cbor is deterministic CBOR (cbor.dumps(m, canonical=True)) of
#   {"board": str, "version": "MAJOR.MINOR", "min_version": "MAJOR.MINOR",
#    "files": [{"path": str, "size": int, "sha256": bytes(32)}, ...], "downgrade": true?}
# and manifest.sig the 64-byte Ed25519 signature of those bytes. "version" is what the
# update reports once it runs; "min_version" the oldest running version it may replace.
# The signature is checked first, on the bytes; nothing of the manifest is trusted before.
# The bytes must be the canonical encoding of what they hold, so one manifest has one
# signed form. Imported only while an update is checked.

from . import cbor
from .errors import ProtocolError

# Why an update is refused: the node reports the code (register / GATT status), the
# gateway's report the code and its text. 1-4, 6, 7 come from check_manifest; the node
# raises 5 and 8 while it stages and checks the files.
BAD_SIGNATURE = 1
OTHER_BOARD = 2
DOWNGRADE = 3
TOO_OLD = 4
TOO_LARGE = 5
MALFORMED = 6
NO_KEY = 7
FILE_HASH = 8

REASONS = {
    BAD_SIGNATURE: "bad signature",
    OTHER_BOARD: "for another board",
    DOWNGRADE: "a downgrade",
    TOO_OLD: "running version older than the update's min_version",
    TOO_LARGE: "too large for the flash",
    MALFORMED: "malformed manifest",
    NO_KEY: "no update key installed",
    FILE_HASH: "a file's sha256 differs from the manifest",
}

MAX_FILES = 256
MAX_PATH = 96
# files an update never replaces: they belong to the node (boot selector, settings, key)
NODE_OWNED = ("main.py", "config.json", "board.json", "ota.pub")


# An update refused: ``code`` one of the constants above, the text says what and why.
class ManifestError(ProtocolError):
    def __init__(self, code, text):
        super().__init__("[code:%d] %s" % (code, text))
        self.code = code
        self.text = text


# (major, minor) of "MAJOR.MINOR" or of a (major, minor) tuple; ManifestError 6 if neither
def parse_version(v):
    if isinstance(v, (tuple, list)) and len(v) == 2:
        major, minor = v
    elif isinstance(v, str) and v.count(".") == 1:
        major, minor = v.split(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ManifestError(MALFORMED, "version %r is not MAJOR.MINOR" % v)
        major = int(major)
        minor = int(minor)
    else:
        raise ManifestError(MALFORMED, "version %r is not MAJOR.MINOR" % (v,))
    if not (isinstance(major, int) and isinstance(minor, int) and 0 <= major < 256):
        raise ManifestError(MALFORMED, "version %r is not MAJOR.MINOR (0..255 each)" % (v,))
    if not 0 <= minor < 256:
        raise ManifestError(MALFORMED, "version %r is not MAJOR.MINOR (0..255 each)" % (v,))
    return (major, minor)


def _path_ok(path):
    if not isinstance(path, str) or not 0 < len(path) <= MAX_PATH or path in NODE_OWNED:
        return False
    if path[0] == "/" or "\\" in path:
        return False
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return False
    return True


# The manifest's map from its bytes (not the signature); ManifestError 6 on anything off
def parse(manifest_bytes):
    try:
        m = cbor.loads(manifest_bytes)
    except ProtocolError as exc:
        raise ManifestError(MALFORMED, "manifest is not CBOR: %s" % exc) from None
    if not isinstance(m, dict):
        raise ManifestError(MALFORMED, "manifest is not a map")
    for key in ("board", "version", "min_version", "files"):
        if key not in m:
            raise ManifestError(MALFORMED, "manifest has no %r" % key)
    if not isinstance(m["board"], str):
        raise ManifestError(MALFORMED, "manifest board is not text")
    parse_version(m["version"])
    parse_version(m["min_version"])
    if m.get("downgrade", False) is not True and "downgrade" in m:
        raise ManifestError(MALFORMED, "manifest downgrade must be true when given")
    files = m["files"]
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ManifestError(MALFORMED, "manifest files must be a list of 1..%d" % MAX_FILES)
    seen = set()
    for f in files:
        if not isinstance(f, dict) or sorted(f) != ["path", "sha256", "size"]:
            raise ManifestError(MALFORMED, "a file entry must be {path, size, sha256}")
        path = f["path"]
        if not _path_ok(path) or path in seen:
            raise ManifestError(MALFORMED, "file path %r is not allowed (or repeated)" % path)
        seen.add(path)
        size = f["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(MALFORMED, "file %s: size must be a count of bytes" % path)
        if not isinstance(f["sha256"], bytes) or len(f["sha256"]) != 32:
            raise ManifestError(MALFORMED, "file %s: sha256 must be 32 bytes" % path)
    if cbor.dumps(m, True) != bytes(manifest_bytes):
        raise ManifestError(MALFORMED, "manifest is not deterministic CBOR (RFC 8949 4.2.1)")
    return m


# The checks after the signature: the board, no downgrade, the running version not older
# than min_version. Returns the manifest map.
def check_parsed(m, board, running_version):
    if m["board"] != board:
        raise ManifestError(
            OTHER_BOARD, "the update is for board %s, this is %s" % (m["board"], board)
        )
    running = parse_version(running_version)
    version = parse_version(m["version"])
    if version < running and m.get("downgrade") is not True:
        raise ManifestError(
            DOWNGRADE,
            "the update is version %d.%d, older than the running %d.%d (not marked downgrade)"
            % (version + running),
        )
    oldest = parse_version(m["min_version"])
    if running < oldest:
        raise ManifestError(
            TOO_OLD,
            "the running version %d.%d is older than %d.%d, the oldest this update replaces"
            % (running + oldest),
        )
    return m


def _key_and_sig(sig, public_key):
    if not public_key:
        raise ManifestError(NO_KEY, "no update key installed (/ota.pub): deploy with --key")
    if len(public_key) != 32:
        raise ManifestError(NO_KEY, "the update key is %d bytes, not 32" % len(public_key))
    if len(sig) != 64:
        raise ManifestError(BAD_SIGNATURE, "signature of %d bytes, not 64" % len(sig))


# Check an update before taking it: the signature of ``manifest_bytes`` under
# ``public_key`` (32 raw bytes), then the manifest (board, versions). Returns the manifest
# map; raises ManifestError. ``verify`` is verify(key, message, sig) -> bool: the pure
# protocols.ed25519.verify by default, `cryptography`'s on the host.
def check_manifest(manifest_bytes, sig, public_key, board, running_version, verify=None):
    _key_and_sig(sig, public_key)
    if verify is None:
        from .ed25519 import verify
    if not verify(bytes(public_key), bytes(manifest_bytes), bytes(sig)):
        raise ManifestError(BAD_SIGNATURE, "the manifest's signature is not the update key's")
    return check_parsed(parse(manifest_bytes), board, running_version)


# check_manifest() as a coroutine that yields between the steps of the signature check
# (the node's way: see protocols/ed25519.py on garbage and the event loop).
async def check_manifest_async(manifest_bytes, sig, public_key, board, running_version):
    from .ed25519 import verify_async

    _key_and_sig(sig, public_key)
    if not await verify_async(bytes(public_key), bytes(manifest_bytes), bytes(sig)):
        raise ManifestError(BAD_SIGNATURE, "the manifest's signature is not the update key's")
    return check_parsed(parse(manifest_bytes), board, running_version)
