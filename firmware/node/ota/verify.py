# The signed manifest's check on the node: the Ed25519 signature, then board, versions and
# files (protocols/manifest.py), in a heap the rest of the node leaves about 55 KB of.
#
# protocols.ed25519 (with its SHA-512) is imported for the signature alone and unloaded
# after, then protocols.manifest (with its CBOR) for the rest: each step of the signature
# makes up to ~18 KB of garbage, which the emulated board's VM (and a chip's heap, nearly
# as tight) only has room for without them all loaded at once. The Modbus window runs this
# before it loads the session (session.py) for the same reason.
import os

KEY = "/ota.pub"
HEADER = "/ota/header.bin"  # the signature (64 bytes), then manifest.cbor, as received
PENDING = "/ota/check"  # a header waits for the boot that checks its signature
VERIFIED = "/ota/verified.json"  # {"id": manifest's sha256 hex, "code": 0/refusal, "version"}
TABLE = "/ota/files.txt"  # the checked manifest's files: "size sha256-hex path" a line
SIG_BYTES = 64
# protocols/manifest.py's refusal codes (tests/test_ota_node.py checks they agree)
BAD_SIGNATURE = 1
TOO_LARGE = 5
MALFORMED = 6
NO_KEY = 7
FILE_HASH = 8


# An update refused: ``code`` says why (the codes above, ManifestError's), before anything
# of it runs.
class OtaRefusedError(ValueError):
    def __init__(self, code, text):
        super().__init__("[code:%d] %s" % (code, text))
        self.code = code


# The update key (/ota.pub, 32 raw bytes, installed by `polekit deploy --key`).
def read_key(path=KEY):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        raise OtaRefusedError(
            NO_KEY, "no update key installed (/ota.pub): deploy with --key"
        ) from None


# One step of long work ends here; ``collect`` after a step that made garbage. The sleep is
# 1 ms or more, not 0: a task that sleeps 0 runs again before the scheduler returns to its
# caller, and on the emulated board (MicroPython's WebAssembly port, whose scheduler is
# JavaScript's setTimeout) garbage is only collected there, and only when asked for
# (gc.collect() marks a collection due; on the chip it collects at once, in ~1 ms).
async def pause(ms=1, collect=False):
    from asyncio import sleep_ms

    if WDT is not None:
        WDT.feed()
    if collect:
        import gc

        gc.collect()
    await sleep_ms(ms)


# The check boot's watchdog (node.start.check_boot arms it), fed at each pause; a chip's
# watchdog cannot be stopped, and the check boot ends in a reset that stops it.
WDT = None
CHECK_WDT_MS = 30000


# a signature step makes up to ~18 KB of garbage (protocols/ed25519.py): a collection after
# each (the check boot runs alone: 1 ms is enough for the scheduler to return and collect)
VERIFY_PAUSE_MS = 1


# Bytes on the flash read as a sequence: ``len()`` and slices (what the signature check
# and the parser take from a manifest), ``size`` bytes of ``path`` from ``start``.
class FileBytes:
    def __init__(self, path, start, size):
        self.path = path
        self.start = start
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, part):
        lo = part.start or 0
        hi = self.size if part.stop is None else min(part.stop, self.size)
        with open(self.path, "rb") as f:
            f.seek(self.start + lo)
            return f.read(max(0, hi - lo))


# A manifest path a slot may hold: lib/<package>/..., no "..", nothing at the root.
def _path_ok(path):
    if not isinstance(path, str) or not path.startswith("lib/") or path.endswith("/"):
        return False
    parts = path.split("/")  # lib/ntptime.mpy (a vendored module) as well as lib/node/app.mpy
    return len(parts) >= 2 and all(p and p != "." and p != ".." for p in parts)


# protocols modules imported since ``before`` (a set of sys.modules names) are dropped, so
# that the next collection frees their heap.
def _unload(before):
    import sys

    import protocols

    for name in list(sys.modules):
        if name not in before and name.startswith("protocols."):
            sys.modules.pop(name, None)
            try:
                delattr(protocols, name[10:])
            except AttributeError:
                pass  # not bound there


# The Ed25519 signature of ``manifest``, one step of protocols.ed25519.verify_steps at a
# time between pauses, with that module (and its SHA-512) loaded for it alone.
async def _verify(key, manifest, sig):
    import sys

    before = set(sys.modules)
    await pause(VERIFY_PAUSE_MS, True)  # the import in a heap just collected
    try:
        from protocols.ed25519 import verify_steps

        for result in verify_steps(key, manifest, sig):
            if result is not None:
                return result
            await pause(VERIFY_PAUSE_MS, True)
        return False
    finally:
        _unload(before)


# Check a signed manifest as protocols.manifest.check_manifest does: the signature first,
# then (protocols.manifest loaded for it alone) board, versions and the files' table; every
# path must be in a slot's lib/<package>/. The manifest's map, or OtaRefusedError.
# ``manifest`` may be bytes or a FileBytes (the header the Modbus window keeps on flash: the
# signature is checked reading it 128 bytes at a time; parse() gets it whole after).
# ``signed``: the signature was checked already (a check boot's verdict, VERIFIED).
# Returns {"version", "files": {path, size, sha256} one by one (read_table)}; the table is
# in TABLE.
async def check(manifest, sig, key, board, running, signed=False):
    import sys

    if len(key) != 32:
        raise OtaRefusedError(NO_KEY, "the update key /ota.pub is %d bytes, not 32" % len(key))
    if not signed and (len(sig) != 64 or not await _verify(key, manifest, sig)):
        raise OtaRefusedError(BAD_SIGNATURE, "the manifest's signature is not the update key's")
    await pause(VERIFY_PAUSE_MS, True)
    top = scan_manifest(manifest[0 : len(manifest)])
    await pause(VERIFY_PAUSE_MS, True)
    before = set(sys.modules)
    try:
        from protocols.manifest import check_parsed

        check_parsed(top, board, running)
    except ValueError as exc:  # ManifestError, with its code
        code = getattr(exc, "code", MALFORMED)
        raise OtaRefusedError(code, getattr(exc, "text", str(exc))) from None
    finally:
        _unload(before)
    return {"version": top["version"], "files": read_table()}


def _bad(what):
    return OtaRefusedError(MALFORMED, "malformed manifest: %s" % what)


# A reader of the manifest's CBOR (RFC 8949) that makes almost no garbage: definite
# lengths only (the manifest is deterministic CBOR), the item kinds a manifest holds.
# protocols.cbor.loads makes ~50 KB of garbage on a 4 KB manifest, more than the node
# has between two collections.
class _Reader:
    def __init__(self, data):
        self.data = memoryview(data)
        self.at = 0

    def take(self, n):
        at = self.at
        if at + n > len(self.data):
            raise _bad("truncated")
        self.at = at + n
        return self.data[at : at + n]

    def head(self):
        b = self.take(1)[0]
        info = b & 31
        if info < 24:
            return b >> 5, info
        if info > 27:
            raise _bad("indefinite length or reserved value")
        return b >> 5, int.from_bytes(self.take(1 << (info - 24)), "big")

    def item(self, limit=256):
        major, value = self.head()
        if major == 0:
            return value
        if major in (2, 3):
            if value > limit:
                raise _bad("a string of %d bytes" % value)
            raw = self.take(value)
            return bytes(raw) if major == 2 else str(raw, "utf-8")
        if major == 7 and value == 21:
            return True
        raise _bad("an item of kind %d" % major)


# The manifest map's fields but "files", which go to TABLE as they are read ("size
# sha256-hex path" a line); the shape is checked as protocols.manifest.parse does (not its
# canonical re-encoding: that makes ~45 KB of garbage in one go, and the signature binds
# these very bytes). Every path must be in lib/<package>/.
def scan_manifest(data):
    r = _Reader(data)
    major, n = r.head()
    if major != 5 or n > 8:
        raise _bad("not a map")
    top = {}
    for _ in range(n):
        key = r.item()
        if key != "files":
            top[key] = r.item()
            continue
        major, count = r.head()
        if major != 4 or not 0 < count <= 256:
            raise _bad("files must be a list of 1..256")
        seen = set()
        try:
            os.mkdir("/ota")
        except OSError:
            pass  # it exists
        with open(TABLE, "w") as out:
            for _ in range(count):
                major, fields = r.head()
                if major != 5 or fields != 3:
                    raise _bad("a file entry must be {path, size, sha256}")
                e = {}
                for _ in range(3):
                    k = r.item()
                    e[k] = r.item()
                path, size, digest = e.get("path"), e.get("size"), e.get("sha256")
                if not _path_ok(path) or path in seen:
                    raise _bad("file path %r is not under lib/ (or repeated)" % (path,))
                seen.add(path)
                if not isinstance(size, int) or isinstance(size, bool):
                    raise _bad("file %s: size must be a count of bytes" % path)
                if not isinstance(digest, bytes) or len(digest) != 32:
                    raise _bad("file %s: sha256 must be 32 bytes" % path)
                out.write("%d %s %s\n" % (size, digest.hex(), path))
        top["files"] = count
    if r.at != len(r.data):
        raise _bad("bytes after the map")
    for key in ("board", "version", "min_version", "files"):
        if key not in top:
            raise _bad("no %r" % key)
    if "downgrade" in top and top["downgrade"] is not True:
        raise _bad("downgrade must be true when given")
    return top


# The SHA-256 (hex) of the manifest in HEADER, ``size`` bytes of header in all.
def header_id(size):
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(256)
    with open(HEADER, "rb") as f:
        f.seek(SIG_BYTES)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
    return h.digest().hex()


# The check boot: the header's signature (and manifest) checked before the node starts,
# with the heap a running node would otherwise hold (a pole node leaves ~45 KB, less than
# the Ed25519 code and one of its steps take); the verdict goes to VERIFIED, which BEGIN
# then takes without checking again. Called by node.start.main when PENDING exists; a
# reset follows (the node starts in a heap the check never touched).
async def boot_check(board, running):
    import json
    import os

    # the mark goes first: a check boot runs once per BEGIN, so a check that fails in a way
    # of its own (MemoryError, a flash error) leaves a node that starts and answers, never
    # one that stops at the same error on every boot (off the bus until a visit by cable)
    os.remove(PENDING)
    code = 0
    version = None
    try:
        size = os.stat(HEADER)[6]
        with open(HEADER, "rb") as f:
            sig = f.read(SIG_BYTES)
        info = await check(
            FileBytes(HEADER, SIG_BYTES, size - SIG_BYTES), sig, read_key(), board, running
        )
        version = info["version"]
        del info
    except OtaRefusedError as exc:
        code = exc.code
        print("polekit: update refused: %s" % exc)
    except Exception as exc:  # noqa: BLE001 - no verdict: the master's next BEGIN checks again
        import sys

        print("polekit: update: the check failed; the node restarts without a verdict:")
        sys.print_exception(exc)
        return
    with open(VERIFIED, "w") as f:
        json.dump({"id": header_id(size), "code": code, "version": version}, f)
    if not code:
        print("polekit: update: signature and manifest good")


# The check boot's verdict on the header on the flash (``size`` bytes in all), as every
# link takes it before OtaSession.begin: (the checked manifest's {"version", "files"}, the
# manifest's id), "files" read from TABLE as begin() takes them (read_table); (None, id)
# when no check boot gave a verdict on this header yet (the link marks it PENDING and
# resets). OtaRefusedError when the check refused it.
def verdict(size):
    import json

    ident = header_id(size)
    try:
        with open(VERIFIED) as f:
            said = json.load(f)
    except (OSError, ValueError):
        said = {}
    if said.get("id") != ident:
        return None, ident
    code = said.get("code")
    if code:
        from protocols.ota import error_text

        raise OtaRefusedError(code, error_text(code))
    return {"version": said["version"], "files": read_table()}, ident


# The files' table a check boot wrote (TABLE): {"path", "size", "sha256"} a file, as a
# manifest's, yielded line by line (OtaSession.begin takes them in one pass; a list of all
# of them held ~13 KB).
def read_table():
    from binascii import unhexlify

    with open(TABLE) as f:
        for line in f:
            size, digest, path = line.split()
            yield {"path": path, "size": int(size), "sha256": unhexlify(digest)}
