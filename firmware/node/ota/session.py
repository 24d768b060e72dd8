# One update on the node, whatever link brings it (Modbus window, BLE GATT, HTTP).
#
# begin(manifest, sig) checks the signed manifest before a single file byte is taken; the
# files are then staged straight into the inactive slot (record.py), each appended at the
# next byte the node expects, and hashed as they arrive (a file whose SHA-256 differs is
# refused the moment its last byte lands). Staging survives a reset or a power cut: the
# staging record (/ota/stage.json) names the manifest (its SHA-256) and the slot, the
# files on flash are the bytes already taken (appended and closed chunk by chunk, so a cut
# loses at most the chunk being written), and begin() with the same manifest resumes where
# need() says. Files the running slot already has with the same hash are copied on the
# flash instead of sent again. commit() hashes every staged file again from the flash,
# marks the new slot on trial in the boot record and resets into it.
#
# Long work (signature check, hashing, copying) is in asyncio steps that yield every
# READ_BYTES: the link's other work (Modbus polls) goes on, and the emulated board's VM,
# which collects garbage only between steps, stays in the ESP32's heap budget.
import hashlib
import json
import os

from protocols import ota

from . import record
from .verify import FILE_HASH, KEY, TOO_LARGE, OtaRefusedError, pause, read_key

STAGE = "/ota/stage.json"
READ_BYTES = 512  # a flash read per step: small, so every step is short and makes no garbage
LIB_DIRS = ("lib/node", "lib/protocols", "lib/umqtt")  # what a slot holds at least


# An update step that cannot be taken now (the node is checking, verifying or on trial).
class OtaBusyError(RuntimeError):
    pass


# A chunk that does not follow what the node has (a gap, another file, past the end).
class OtaOutOfOrderError(ValueError):
    pass


def _version(text):
    return tuple(int(p) for p in text.split("."))


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _makedirs(path):
    # the folders above a file's path
    at = 0
    while True:
        at = path.find("/", at + 1)
        if at < 0:
            return
        try:
            os.mkdir(path[:at])
        except OSError:
            pass  # it exists


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass  # already gone


async def _remove_tree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for entry in entries:
        child = path + "/" + entry[0]
        if entry[1] == 0x4000:
            await _remove_tree(child)
        else:
            os.remove(child)
        await pause()
    os.rmdir(path)


# One update: staging, checks, install into the inactive slot.
# ``board`` (the board map's name) and ``running`` ("MAJOR.MINOR") are what the manifest
# is checked against; ``reset`` is called after commit() marked the new slot (the node
# passes one that flushes its state first); ``on_heap`` is called with gc.mem_free() at
# every step.
class OtaSession:
    # ``down``: the names of the node's sensors not working now (a callable, or None): the
    # new version's trial self-test does not fail on them (trial.py)
    def __init__(self, board, running, reset=None, key_path=KEY, on_heap=None, down=None):
        self.board = board
        self.down = down
        self.running = running
        self.reset = reset
        self.key_path = key_path
        self.on_heap = on_heap
        rec = record.load()
        self.boot = rec
        self.state = ota.IDLE
        if rec.get("state") == "trial":
            self.state = ota.TRIAL
        elif rec.get("state") == "rolled_back":
            self.state = ota.ROLLED_BACK
        self.error = 0
        self.version = None  # of the manifest being staged
        self.paths = []
        self.sizes = []
        self.hashes = b""
        self.have = []  # bytes staged per file
        self.slot = record.other(rec.get("slot", "a"))
        self.root = record.ROOTS[self.slot]
        self._h = None  # the running hash of the file being received
        self._h_index = -1
        self._buf = None

    # ---- what the link asks -------------------------------------------------------

    # (file index, offset) of the first byte not staged; None when all are.
    def need(self):
        for i, size in enumerate(self.sizes):
            if self.have[i] < size:
                return i, self.have[i]
        return None

    # The session as the status block and the register map show it.
    def status(self):
        need = self.need() if self.state == ota.RECEIVING else None
        rec = self.boot
        prev = rec.get("previous")
        return {
            "state": ota.STATES[self.state],
            "state_code": self.state,
            "error": self.error,
            "file": need[0] if need else None,
            "offset": need[1] if need else 0,
            "need": need,
            "files": len(self.sizes),
            "staged": sum(self.have),
            "total": sum(self.sizes),
            "running": self.running,
            "running_code": ota.version_code(self.running),
            "previous": prev,
            "previous_code": ota.version_code(prev) if prev else 0,
            "rollback": rec.get("rollback", 0),
            "version": self.version,
        }

    # ---- the update -----------------------------------------------------------------

    # Check the signed manifest (OtaRefusedError with the reason, before any file byte is
    # taken), then start staging into the inactive slot, or resume the staging of the
    # same manifest. Raises OtaBusyError while a version is on trial or work is under way.
    # ``info``: the manifest's map when the caller checked it already (verify.check): the
    # Modbus window does, before this module is loaded, to leave the heap to the signature
    # ``ident``: the manifest's SHA-256 (hex) when ``manifest`` is not given (with ``info``).
    async def begin(self, manifest, sig, info=None, ident=None):
        if self.state in (ota.CHECKING, ota.VERIFYING, ota.INSTALLING, ota.TRIAL):
            raise OtaBusyError("the node is %s; try again later" % ota.STATES[self.state])
        self.state = ota.CHECKING
        self.error = 0
        self.paths, self.sizes, self.have, self.hashes = [], [], [], b""
        self._h, self._h_index = None, -1
        try:
            if info is None:
                from .verify import check

                key = read_key(self.key_path)
                info = await check(manifest, sig, key, self.board, self.running)
            # one pass over the files' table, in steps (verify.read_table yields it line by
            # line: a list of 70 dicts held ~13 KB, more than a node has to spare during an
            # update, and in one synchronous go the emulated board's VM crawled past its
            # watchdog)
            paths, sizes, hashes = [], [], []
            for f in info["files"]:
                paths.append(f["path"])
                sizes.append(f["size"])
                hashes.append(f["sha256"])
                if len(paths) % 8 == 0:  # each line's garbage collected as it goes
                    await pause(1, True)
            need_bytes = sum(sizes)
            st = os.statvfs("/")
            if need_bytes > st[0] * st[4]:
                raise OtaRefusedError(
                    TOO_LARGE,
                    "the files take %d bytes; the flash has %d free" % (need_bytes, st[0] * st[4]),
                )
        except OtaRefusedError as exc:
            self.state = ota.REFUSED
            self.error = exc.code
            raise
        except Exception:
            self.state = ota.IDLE
            raise
        self.version = info["version"]
        self.paths, self.sizes = paths, sizes
        self.hashes = b"".join(hashes)
        self.have = [0] * len(paths)
        del info, paths, sizes, hashes
        ident = ident or hashlib.sha256(manifest).digest().hex()
        try:
            stage = _load_stage()
            if stage and stage.get("id") == ident and stage.get("slot") == self.slot:
                await self._scan()  # resume: what is on the flash is what was taken
            else:
                _remove(STAGE)
                await self._clear()
                _save_stage({"id": ident, "slot": self.slot})
            await self._reuse()  # a resume too: a copy cut short is made again
            await self._rehash()
        except Exception:
            # a MemoryError, a flash error: idle, so that the master's next BEGIN goes on
            # from the staging record (it used to stay "checking": a master waited 10 min)
            self.state = ota.IDLE
            raise
        self.state = ota.RECEIVING

    # Take ``data`` for file ``file_index`` at ``offset``: appended when it starts at
    # (or overlaps) the next byte expected; a chunk already staged is taken again without
    # a write. Returns the offset expected next in that file. OtaOutOfOrderError for a gap,
    # another file than need()'s or data past the file's size; OtaRefusedError(FILE_HASH)
    # when the file's last byte lands and its hash differs (the file is dropped).
    def write(self, file_index, offset, data):
        if self.state != ota.RECEIVING:
            raise OtaBusyError("not receiving (the node is %s)" % ota.STATES[self.state])
        if not 0 <= file_index < len(self.sizes):
            raise OtaOutOfOrderError(
                "no file %d: the manifest has %d" % (file_index, len(self.sizes))
            )
        size = self.sizes[file_index]
        have = self.have[file_index]
        end = offset + len(data)
        if end > size + 1 or (end > size and (size - offset) & 1 == 0):
            raise OtaOutOfOrderError("data past the end of file %d (%d bytes)" % (file_index, size))
        if end > size:
            end = size  # the pad byte of a file with an odd size
        if end <= have:
            return have  # a repeat: its answer was lost
        need = self.need()
        if need is None or need[0] != file_index or offset > have:
            raise OtaOutOfOrderError(
                "file %d at %d: the node needs %s"
                % (file_index, offset, need and "%d at %d" % need)
            )
        chunk = memoryview(data)[have - offset : end - offset]
        path = self.root + "/" + self.paths[file_index]
        if have == 0:
            _makedirs(path)
        with open(path, "ab" if have else "wb") as f:
            f.write(chunk)
        h = self._h
        if h is None or self._h_index != file_index:
            h = self._h = hashlib.sha256()
            self._h_index = file_index
        h.update(chunk)
        self.have[file_index] = end
        if end == size:
            digest = h.digest()
            self._h, self._h_index = None, -1
            if digest != self.hashes[32 * file_index : 32 * file_index + 32]:
                self._drop(file_index)
                raise OtaRefusedError(
                    FILE_HASH,
                    "%s: its SHA-256 differs from the manifest's" % self.paths[file_index],
                )
        self._heap()
        return end

    # Hash every staged file from the flash, mark the new slot on trial in the boot
    # record, then reset into it. OtaRefusedError(FILE_HASH) for a file that differs (it is
    # dropped: need() points at it again); ValueError when files are still missing.
    async def commit(self):
        if self.state != ota.RECEIVING:
            raise OtaBusyError("nothing to commit (the node is %s)" % ota.STATES[self.state])
        if self.need() is not None:
            raise ValueError("file %d is not complete (from byte %d)" % self.need())
        self.state = ota.VERIFYING
        for i in range(len(self.paths)):
            digest = (await self._hash_file(self.root + "/" + self.paths[i])).digest()
            if digest != self.hashes[32 * i : 32 * i + 32]:
                self._drop(i)
                raise OtaRefusedError(
                    FILE_HASH, "%s: its SHA-256 differs from the manifest's" % self.paths[i]
                )
        self.state = ota.INSTALLING
        rec = self.boot
        record.save(
            {
                "slot": self.slot,
                "state": "trial",
                "version": self.version,
                "previous": self.running,
                "prev_slot": rec.get("slot", "a"),
                "boots": 0,
                "rollback": 0,
                "known_down": list(self.down()) if self.down else [],
            }
        )
        _remove(STAGE)
        _remove_header()
        if self.reset:
            from asyncio import sleep_ms

            await sleep_ms(50)  # the answer to the last poll leaves the UART first
            self.reset()

    # Drop the staging; the files in the inactive slot are cleared at the next begin().
    def abort(self):
        if self.state in (ota.CHECKING, ota.VERIFYING, ota.INSTALLING):
            raise OtaBusyError("the node is %s; abort when it is done" % ota.STATES[self.state])
        _remove(STAGE)
        _remove_header()
        self.paths, self.sizes, self.have, self.hashes = [], [], [], b""
        self._h, self._h_index = None, -1
        if self.state != ota.TRIAL:
            self.state = ota.IDLE
        self.error = 0

    # ---- on the flash ---------------------------------------------------------------

    def _drop(self, i):
        _remove(self.root + "/" + self.paths[i])
        self.have[i] = 0
        self._h, self._h_index = None, -1
        self.state = ota.REFUSED
        self.error = FILE_HASH

    # A step per file: each stat of a missing file raises, and 64 of them in one go make
    # more garbage than the emulated board's VM holds between collections (it collects
    # only between steps); it stalled there past the watchdog (5 s) at every resume. In
    # steps the scan takes ~0.1 s.
    async def _scan(self):
        for i, path in enumerate(self.paths):
            await pause()
            n = _size(self.root + "/" + path)
            if n > self.sizes[i]:
                _remove(self.root + "/" + path)  # not from this manifest
                n = 0
            self.have[i] = max(0, n)

    async def _clear(self):
        if self.root:
            await _remove_tree(self.root)
            return
        dirs = list(LIB_DIRS)
        for p in self.paths:
            d = p[: p.find("/", 4)]
            if d not in dirs:
                dirs.append(d)
        for d in dirs:
            await _remove_tree("/" + d)

    async def _hash_file(self, path, limit=-1):
        if self._buf is None:
            self._buf = bytearray(READ_BYTES)
        buf = self._buf
        mv = memoryview(buf)
        h = hashlib.sha256()
        left = limit
        with open(path, "rb") as f:
            while left:
                n = f.readinto(buf)
                if not n:
                    break
                if 0 < left < n:
                    n = left
                h.update(mv[:n])
                left -= n
                self._heap()
                await pause()
        return h

    async def _rehash(self):
        # the running hash of a file staged in part before a reset
        need = self.need()
        if need and need[1]:
            self._h = await self._hash_file(self.root + "/" + self.paths[need[0]], need[1])
            self._h_index = need[0]

    async def _reuse(self):
        # files the running slot has with the same hash are copied on the flash
        here = record.ROOTS[record.other(self.slot)]
        for i, path in enumerate(self.paths):
            await pause()  # a step per file, as _scan
            src = here + "/" + path
            if self.have[i] == self.sizes[i] or _size(src) != self.sizes[i]:
                continue
            h = await self._hash_file(src)
            if h.digest() != self.hashes[32 * i : 32 * i + 32]:
                continue
            dst = self.root + "/" + path
            _makedirs(dst)
            buf = self._buf or bytearray(READ_BYTES)
            with open(src, "rb") as fi, open(dst, "wb") as fo:
                while True:
                    n = fi.readinto(buf)
                    if not n:
                        break
                    fo.write(memoryview(buf)[:n])
                    await pause()
            self.have[i] = self.sizes[i]

    def _heap(self):
        if self.on_heap:
            import gc

            self.on_heap(gc.mem_free())


# the header and its check boot's verdict: an update installed or dropped is never begun again
def _remove_header():
    from .verify import HEADER, PENDING, VERIFIED

    for path in (HEADER, PENDING, VERIFIED):
        _remove(path)


def _load_stage():
    try:
        with open(STAGE) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _save_stage(data):
    _makedirs(STAGE)
    with open(STAGE + ".new", "w") as f:
        json.dump(data, f)
    os.rename(STAGE + ".new", STAGE)
