# The node's outbox: packs waiting for their PUBACK, kept on flash in a bounded ring so that
# a reset or a power cut at any point loses nothing put before it (a pack is popped only
# after the broker acknowledged it; a cut between the PUBACK and the pop sends it twice,
# which is allowed: duplicates, never losses).
#
# The ring is a ring of segment files, not one file written in a circle: littlefs (the
# ESP32 port's file system) keeps a file as an append-only chain of blocks, so a write in
# the middle of a file copies every block after it, and a ring written in place would
# rewrite half of itself on every put and pop. Here every write is an append, or a small
# file replaced whole:
#   {path}.{n}  segment n: records appended until the next one would pass capacity/SEGMENTS
#   {path}      where reading resumes, "head-segment offset dropped", written to {path}.new
#               and renamed over (state.py does the same; FAT's gap is covered the same way)
# Live segments are numbered head..tail, contiguous. When a put needs a new segment and
# SEGMENTS are live, the oldest segment is dropped whole, oldest packs first, and its
# packs are added to `dropped` (kept in {path}): the ring never holds over `capacity` bytes.
#
# A record: 0xA5, kind length, code length, payload length (2 bytes, big-endian), kind,
# code, payload, CRC-32 of all of that (4 bytes, big-endian). A record cut short by a power
# cut fails its length or CRC check and ends its segment; the next put then starts a new
# segment, so a torn record is never followed by a good one in the same file.
#
# Pure file I/O: the same code runs on CPython (host tests) and on the board. The ring is
# never read whole: a check streams a record through a 64-byte buffer, a peek reads one.
import os
from binascii import crc32

SEGMENTS = 8
_MAGIC = 0xA5
_HEAD = 5  # magic, kind length, code length, payload length (2)


class Outbox:
    def __init__(self, path="/outbox.bin", capacity=32768):
        self.path = path
        self.segment_bytes = capacity // SEGMENTS
        self._buf = bytearray(64)
        self.count = 0
        self.peeked = None  # (segment, offset) of the pack peek() returned last
        position = self._load()
        if position is None:
            head, offset, self.dropped = self._lowest(), 0, 0
        else:
            head, offset, self.dropped = position
        self.head = head
        self.offset = offset
        # a segment below the head: a cut came between saving the position and removing it
        n = head - 1
        while n >= 0 and self._size(n) >= 0:
            os.remove(self._segment(n))
            n -= 1
        if self._size(head) < 0:
            self.offset = offset = 0
        self.tail = head
        self.tail_bytes = offset
        self.sealed = False  # the tail segment ends in a torn record: append to a new one
        n = head
        while True:
            size = self._size(n)
            if size < 0:
                break
            pos = offset if n == head else 0
            with open(self._segment(n), "rb") as f:
                while pos < size:
                    end = self._check(f, pos)
                    if end < 0:
                        break
                    self.count += 1
                    pos = end
            self.tail, self.tail_bytes, self.sealed = n, pos, pos < size
            n += 1
        if position is None:
            self._save()

    def __len__(self):
        return self.count

    # keep a pack until it is popped; kind "data", "event" or "cmd-result", code the device
    # code, payload bytes. On flash when this returns. ValueError if it can never fit.
    def put(self, kind, code, payload):
        k = kind.encode()
        c = code.encode()
        size = self.check(kind, code, payload)
        record = bytearray(size)
        record[0] = _MAGIC
        record[1] = len(k)
        record[2] = len(c)
        record[3] = len(payload) >> 8
        record[4] = len(payload) & 0xFF
        at = _HEAD
        for part in (k, c, payload):
            record[at : at + len(part)] = part
            at += len(part)
        record[at:] = (crc32(memoryview(record)[:at]) & 0xFFFFFFFF).to_bytes(4, "big")
        if self.sealed or self.tail_bytes + size > self.segment_bytes:
            self.tail += 1
            self.tail_bytes = 0
            self.sealed = False
            while self.tail - self.head >= SEGMENTS:
                self._drop_head()
        try:
            with open(self._segment(self.tail), "ab") as f:
                f.write(record)
        except OSError:
            self.sealed = True  # part of it may be there: the next put starts a new segment
            raise
        self.tail_bytes += size
        self.count += 1

    # the record size of a pack, or ValueError if it can never fit (so that a caller can
    # ask before it spends anything on the pack, a seq for one)
    def check(self, kind, code, payload):
        k = len(kind.encode())
        c = len(code.encode())
        size = _HEAD + k + c + len(payload) + 4
        if k > 255 or c > 255 or size > self.segment_bytes:
            raise ValueError(
                "outbox: a %s pack of %d bytes for %s does not fit a segment of %d bytes"
                % (kind, len(payload), code[:40], self.segment_bytes)
            )
        return size

    # (kind, code, payload) of the oldest pack, or None when there is none; `peeked` is
    # then its position, for pop()
    def peek(self):
        while True:
            rec = self._read(self.head, self.offset)
            if rec is not None:
                self.peeked = (self.head, self.offset)
                return rec[:3]
            if self.head >= self.tail:
                return None
            self._next_segment()

    # forget the oldest pack (call it after the broker acknowledged it). With `at` (the
    # `peeked` position of the pack that was sent) only that pack: if a full ring dropped
    # it meanwhile (a put while it was being sent), the pack now at the head was never
    # sent and stays.
    def pop(self, at=None):
        if at is not None and at != (self.head, self.offset):
            return
        while True:
            rec = self._read(self.head, self.offset)
            if rec is not None:
                break
            if self.head >= self.tail:
                return
            self._next_segment()
        self.offset = rec[3]
        self.count -= 1
        if self.head < self.tail and not self._intact(self.head, self.offset):
            self._next_segment()
        else:
            self._save()

    def _segment(self, n):
        return "%s.%d" % (self.path, n)

    def _size(self, n):
        # bytes in segment n, -1 when it does not exist
        try:
            return os.stat(self._segment(n))[6]
        except OSError:
            return -1

    def _check(self, f, pos):
        # the offset after the whole, intact record at `pos`, or -1; streams it through
        # the 64-byte buffer (the CRC is computed piece by piece)
        buf = self._buf
        mv = memoryview(buf)
        f.seek(pos)
        if f.readinto(mv[:_HEAD]) != _HEAD or buf[0] != _MAGIC:
            return -1
        body = buf[1] + buf[2] + (buf[3] << 8 | buf[4])
        crc = crc32(mv[:_HEAD])
        left = body
        while left:
            n = f.readinto(mv[: min(left, 64)])
            if not n:
                return -1
            crc = crc32(mv[:n], crc)
            left -= n
        if f.readinto(mv[:4]) != 4 or int.from_bytes(buf[:4], "big") != crc & 0xFFFFFFFF:
            return -1
        return pos + _HEAD + body + 4

    def _read(self, n, pos):
        # (kind, code, payload, next offset) of the intact record at `pos` of segment n
        try:
            f = open(self._segment(n), "rb")
        except OSError:
            return None
        with f:
            f.seek(pos)
            head = f.read(_HEAD)
            if len(head) != _HEAD or head[0] != _MAGIC:
                return None
            plen = head[3] << 8 | head[4]
            body = f.read(head[1] + head[2] + plen)
            tail = f.read(4)
        if len(body) != head[1] + head[2] + plen or len(tail) != 4:
            return None
        if int.from_bytes(tail, "big") != crc32(body, crc32(head)) & 0xFFFFFFFF:
            return None
        k = head[1]
        c = k + head[2]
        return body[:k].decode(), body[k:c].decode(), body[c:], pos + len(head) + len(body) + 4

    def _intact(self, n, pos):
        try:
            with open(self._segment(n), "rb") as f:
                return self._check(f, pos) >= 0
        except OSError:
            return False

    def _live(self, n, pos):
        # intact records in segment n from `pos` on
        count = 0
        size = self._size(n)
        if size < 0:
            return 0
        with open(self._segment(n), "rb") as f:
            while pos < size:
                pos = self._check(f, pos)
                if pos < 0:
                    break
                count += 1
        return count

    def _next_segment(self):
        # the head segment is read to its end: move on, then remove it
        old = self.head
        self.head += 1
        self.offset = 0
        self._save()
        try:
            os.remove(self._segment(old))
        except OSError:
            pass  # never created: the ring was empty when the tail moved on

    def _drop_head(self):
        # the ring is full: the oldest segment goes, and its packs are counted
        lost = self._live(self.head, self.offset)
        self.dropped += lost
        self.count -= lost
        self._next_segment()

    def _save(self):
        new = self.path + ".new"
        with open(new, "wb") as f:
            f.write(("%d %d %d" % (self.head, self.offset, self.dropped)).encode())
        os.rename(new, self.path)

    def _load(self):
        # (head, offset, dropped) from {path}, else from {path}.new (a cut in FAT's rename)
        for name in (self.path, self.path + ".new"):
            try:
                with open(name, "rb") as f:
                    parts = f.read().decode().split()
                if len(parts) == 3:
                    head, offset, dropped = int(parts[0]), int(parts[1]), int(parts[2])
                    if head >= 0 and offset >= 0 and dropped >= 0:
                        return head, offset, dropped
            except (OSError, ValueError):
                continue
        return None

    def _lowest(self):
        # the lowest segment on flash when the position is lost (0 when there is none)
        cut = self.path.rfind("/")
        folder = self.path[:cut] if cut > 0 else ("/" if cut == 0 else ".")
        prefix = self.path[cut + 1 :] + "."
        lowest = -1
        for name in os.listdir(folder):
            number = name[len(prefix) :]
            if name.startswith(prefix) and number.isdigit():
                if lowest < 0 or int(number) < lowest:
                    lowest = int(number)
        return max(lowest, 0)
