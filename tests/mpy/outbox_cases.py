# The outbox's cases (firmware/node/outbox.py), written once and run twice: by CPython
# (tests/test_node_outbox.py imports this file) and inside the MicroPython VM (the same
# file, with a line that runs every case). Each case takes the module under test and an
# empty folder, and raises AssertionError saying what broke.
#
# The power-cut cases do not trust the outbox's word for what it wrote: its `open` and
# `os` are wrapped so that every write, rename and remove it makes is journaled; then each
# cut point of an operation (before any step, and at every byte of every write) is rebuilt
# on a copy of the folder, and a fresh Outbox must recover with nothing lost that was put
# before the operation began.
import os


def _files(folder):
    out = {}
    for name in os.listdir(folder):
        with open(folder + "/" + name, "rb") as f:
            out[name] = f.read()
    return out


def _restore(folder, files):
    for name in os.listdir(folder):
        os.remove(folder + "/" + name)
    for name, data in files.items():
        with open(folder + "/" + name, "wb") as f:
            f.write(data)


def _held(box):
    # what a fresh reader would send, oldest first (reads without popping: a copy)
    out = []
    n, pos = box.head, box.offset
    while True:
        rec = box._read(n, pos)
        if rec is None:
            if n >= box.tail:
                return out
            n, pos = n + 1, 0
            continue
        out.append(rec[:3])
        pos = rec[3]


def _drain(box):
    out = []
    while True:
        item = box.peek()
        if item is None:
            break
        out.append(item)
        box.pop()
    assert len(box) == 0, "drained but len() says %d" % len(box)
    return out


class _Journal:
    # wraps the module's open and os: every change to the folder, in order
    def __init__(self, mod):
        self.mod = mod
        self.steps = []
        self.real_open = open
        self.real_os = mod.os
        journal = self

        class File:
            def __init__(self, name, mode):
                self.name = name
                self.f = journal.real_open(name, mode)
                if "a" not in mode:
                    journal.steps.append(("truncate", name, b""))

            def write(self, data):
                journal.steps.append(("append", self.name, bytes(data)))
                return self.f.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        class Os:
            def stat(self, name):
                return journal.real_os.stat(name)

            def listdir(self, name):
                return journal.real_os.listdir(name)

            def remove(self, name):
                journal.steps.append(("remove", name, b""))
                journal.real_os.remove(name)

            def rename(self, a, b):
                journal.steps.append(("rename", a, b))
                journal.real_os.rename(a, b)

        def wrapped_open(name, mode="r"):
            if "w" in mode or "a" in mode:
                return File(name, mode)
            return journal.real_open(name, mode)

        self.open = wrapped_open
        self.os = Os()

    def __enter__(self):
        self.mod.open = self.open
        self.mod.os = self.os
        return self

    def __exit__(self, *exc):
        del self.mod.open
        self.mod.os = self.real_os


def _apply(step, upto=None, garbage=False):
    kind, name, data = step
    if kind == "truncate":
        open(name, "wb").close()
    elif kind == "append":
        part = data if upto is None else data[:upto]
        if garbage and upto is not None:
            # the length reached the flash, the content did not (erased flash reads 0xFF)
            part = part + b"\xff" * (len(data) - upto)
        with open(name, "ab") as f:
            f.write(part)
    elif kind == "remove":
        os.remove(name)
    else:
        os.rename(name, data)


def _cuts(steps):
    # (whole steps, partial step, bytes of it, garbage) for every cut point
    for i in range(len(steps) + 1):
        yield i, None, None, False
        if i < len(steps) and steps[i][0] == "append":
            for k in range(1, len(steps[i][2])):
                yield i, steps[i], k, False
                yield i, steps[i], k, True


def _cut_test(mod, folder, capacity, setup, operation, allowed):
    # run `operation` once journaled; then rebuild each of its cut points and check that a
    # fresh Outbox holds one of the `allowed(before, new)` lists and carries on working
    path = folder + "/outbox.bin"
    box = mod.Outbox(path, capacity)
    setup(box)
    before = _held(box)
    dropped_before = box.dropped
    start = _files(folder)
    with _Journal(mod) as journal:
        new = operation(box)
    steps = journal.steps
    assert steps, "the operation wrote nothing"
    outcomes = allowed(before, new)
    cuts = 0
    for whole, partial, k, garbage in _cuts(steps):
        _restore(folder, start)
        for step in steps[:whole]:
            _apply(step)
        if partial is not None:
            _apply(partial, k, garbage)
        box = mod.Outbox(path, capacity)
        held = _held(box)
        assert held in outcomes, "cut after %d steps + %r bytes (garbage %r): holds %r" % (
            whole,
            k,
            garbage,
            held,
        )
        assert len(box) == len(held), "len() %d, holds %d" % (len(box), len(held))
        assert box.dropped >= dropped_before, "dropped went back"
        # the ring goes on: a put after the recovery comes out last, everything in order
        # (less what that put dropped, when the ring was full)
        dropped = box.dropped
        box.put("data", "AFTER", b"!")
        expected = (held + [("data", "AFTER", b"!")])[box.dropped - dropped :]
        assert _drain(box) == expected, "cut at %d/%r" % (whole, k)
        cuts += 1
    return cuts, len(steps)


def _fill(n, start=0):
    def setup(box):
        for i in range(start, start + n):
            box.put("data", "D%d" % i, b"pack %d" % i)

    return setup


def case_fifo_across_reopen(mod, folder):
    path = folder + "/outbox.bin"
    box = mod.Outbox(path, 4096)
    assert len(box) == 0 and box.peek() is None and box.dropped == 0
    box.pop()  # popping an empty outbox does nothing
    packs = [("data", "CODE%d" % i, bytes(range(i % 200))) for i in range(40)]
    packs.append(("event", "X", b""))
    packs.append(("cmd-result", "Y", b'{"id":1,"ok":true}'))
    for kind, code, payload in packs:
        box.put(kind, code, payload)
    assert len(box) == len(packs)
    assert box.peek() == packs[0] and box.peek() == packs[0], "peek must not remove"
    box.pop()
    box.pop()
    box = mod.Outbox(path, 4096)  # a reset: everything not popped is there, in order
    assert len(box) == len(packs) - 2, len(box)
    assert _drain(box) == packs[2:]
    box = mod.Outbox(path, 4096)
    assert len(box) == 0 and box.peek() is None
    box.put("data", "Z", b"after")
    assert mod.Outbox(path, 4096).peek() == ("data", "Z", b"after")


def case_a_pack_larger_than_a_segment_is_refused(mod, folder):
    box = mod.Outbox(folder + "/outbox.bin", 1024)
    try:
        box.put("data", "BIG", b"x" * 200)
    except ValueError as exc:
        assert "does not fit" in str(exc), str(exc)
    else:
        raise AssertionError("a 200-byte pack fitted a 128-byte segment")
    assert len(box) == 0


def case_full_ring_drops_the_oldest_and_counts_them(mod, folder):
    path = folder + "/outbox.bin"
    capacity = 2048
    box = mod.Outbox(path, capacity)
    total = 500
    for i in range(total):
        box.put("data", "D", b"pack %03d" % i)
        size = 0
        for name in os.listdir(folder):
            if name.startswith("outbox.bin."):
                size += os.stat(folder + "/" + name)[6]
        assert size <= capacity, "ring of %d bytes over its capacity %d" % (size, capacity)
    held = len(box)
    assert box.dropped == total - held, (box.dropped, held)
    assert box.dropped > 0 and held > 0
    # the count survives a reset, and what is held is the newest, in order, none missing
    box = mod.Outbox(path, capacity)
    assert box.dropped == total - held and len(box) == held
    payloads = [p for _, _, p in _drain(box)]
    assert payloads == [b"pack %03d" % i for i in range(total - held, total)], payloads[:3]
    assert mod.Outbox(path, capacity).dropped == total - held


def case_pop_at_the_peeked_pack_never_forgets_an_unsent_one(mod, folder):
    # a pack is being sent when a put fills the ring and drops the head segment (a command
    # result put while the PUBACK is awaited): popping "the head" after the PUBACK would
    # forget the oldest pack still held, which was never sent; pop(at) pops only the pack
    # that was peeked, and that one is gone already
    box = mod.Outbox(folder + "/outbox.bin", 1024)  # 128-byte segments
    for i in range(4):
        box.put("data", "D", b"pack %d" % i)
    assert box.peek() == ("data", "D", b"pack 0")
    sent = box.peeked
    i = 4
    while box.dropped == 0:
        box.put("data", "D", b"pack %d" % i)
        i += 1
    oldest = box.peek()
    box.pop(sent)  # its PUBACK came; the ring no longer holds it
    assert box.peek() == oldest, (box.peek(), oldest)
    held = len(box)
    box.pop(box.peeked)
    assert len(box) == held - 1 and box.peek() != oldest


def case_a_pack_is_checked_before_anything_is_spent_on_it(mod, folder):
    box = mod.Outbox(folder + "/outbox.bin", 1024)
    assert box.check("data", "D", b"x" * 100) == 5 + 4 + 1 + 100 + 4
    try:
        box.check("data", "D", b"x" * 200)
    except ValueError as exc:
        assert "does not fit" in str(exc), str(exc)
    else:
        raise AssertionError("check() passed a pack over a segment")


def case_cut_during_a_put(mod, folder):
    return _cut_test(
        mod,
        folder,
        4096,
        _fill(5),
        lambda box: box.put("event", "NEW", b"new pack"),
        lambda before, new: [before, before + [("event", "NEW", b"new pack")]],
    )


NEW = ("data", "NEW", b"new pack")  # a record of 24 bytes


def _put_new(box):
    box.put(*NEW)


def case_cut_during_a_put_that_starts_a_segment(mod, folder):
    # capacity 1024: 128-byte segments; 5 packs of 21 bytes leave no room for 24 more
    def put(box):
        assert box.tail_bytes + 24 > box.segment_bytes, box.tail_bytes
        tail = box.tail
        box.put(*NEW)
        assert box.tail == tail + 1

    return _cut_test(mod, folder, 1024, _fill(5), put, lambda before, new: [before, before + [NEW]])


def case_cut_during_a_put_that_drops_the_oldest(mod, folder):
    # the ring full: the put drops the oldest segment before it appends
    lost = []

    def setup(box):
        i = 0
        while not (box.tail - box.head == mod.SEGMENTS - 1 and box.tail_bytes + 24 > 128):
            box.put("data", "D%d" % i, b"pack %d" % i)
            i += 1
        assert box.dropped == 0
        lost.append(box._live(box.head, box.offset))

    def put(box):
        box.put(*NEW)
        assert box.dropped == lost[0], (box.dropped, lost)

    return _cut_test(
        mod,
        folder,
        1024,
        setup,
        put,
        lambda before, new: [before, before[lost[0] :], before[lost[0] :] + [NEW]],
    )


def case_cut_during_a_pop(mod, folder):
    return _cut_test(
        mod, folder, 4096, _fill(5), lambda box: box.pop(), lambda before, new: [before, before[1:]]
    )


def case_cut_during_a_pop_that_ends_a_segment(mod, folder):
    def setup(box):
        _fill(8)(box)
        while box._live(box.head, box.offset) > 1:
            box.pop()
        assert box.head < box.tail

    def pop(box):
        head = box.head
        box.pop()
        assert box.head == head + 1, "the pop should have moved to the next segment"

    return _cut_test(mod, folder, 1024, setup, pop, lambda before, new: [before, before[1:]])


def case_cut_after_a_torn_put_then_more_puts(mod, folder):
    # a torn record in the middle of the ring's life: later puts and a reset keep order
    path = folder + "/outbox.bin"
    box = mod.Outbox(path, 4096)
    _fill(3)(box)
    with open(box._segment(box.tail), "ab") as f:
        f.write(b"\xa5\x04\x01\x00\x20data")  # a put that the power cut stopped
    box = mod.Outbox(path, 4096)
    assert len(box) == 3
    _fill(3, 3)(box)
    box = mod.Outbox(path, 4096)
    assert [c for _, c, _ in _drain(box)] == ["D%d" % i for i in range(6)]


def case_lost_position_file_loses_nothing(mod, folder):
    # {path} and {path}.new both gone: reading starts at the oldest segment on flash
    path = folder + "/outbox.bin"
    box = mod.Outbox(path, 1024)
    _fill(20)(box)
    box.pop()
    os.remove(path)
    box = mod.Outbox(path, 1024)
    got = [c for _, c, _ in _drain(box)]
    assert got[-19:] == ["D%d" % i for i in range(1, 20)], got


class _Reads:
    # wraps the module's open: the largest single read it makes, in bytes
    def __init__(self, mod):
        self.mod = mod
        self.largest = 0
        reads = self

        class File:
            def __init__(self, name, mode):
                self.f = open(name, mode)

            def read(self, n=-1):
                data = self.f.read(n)
                reads.largest = max(reads.largest, len(data) if n < 0 else n)
                return data

            def readinto(self, buf):
                reads.largest = max(reads.largest, len(buf))
                return self.f.readinto(buf)

            def seek(self, pos):
                return self.f.seek(pos)

            def write(self, data):
                return self.f.write(data)

            def close(self):
                self.f.close()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        self.open = File

    def __enter__(self):
        self.mod.open = self.open
        return self

    def __exit__(self, *exc):
        del self.mod.open


def case_the_ring_is_read_a_record_at_a_time(mod, folder):
    # a full 64 KiB ring is reopened and drained with no read larger than one pack: the
    # ring is never loaded whole (the board's heap is ~110 KiB in all)
    path = folder + "/outbox.bin"
    capacity = 64 * 1024
    box = mod.Outbox(path, capacity)
    chunk = b"y" * 900
    n = 0
    while box.dropped == 0:
        box.put("data", "D%d" % n, chunk)
        n += 1
    with _Reads(mod) as reads:
        box = mod.Outbox(path, capacity)
        held = len(box)
        assert held * 900 > capacity * 3 // 4, held
        first = int(box.peek()[1][1:])
        count = 0
        while box.peek() is not None:
            kind, code, payload = box.peek()
            assert code == "D%d" % (first + count) and payload == chunk
            box.pop()
            count += 1
    assert count == held and first + held == n, (count, held, first, n)
    assert 0 < reads.largest <= 920, "a read of %d bytes" % reads.largest  # one 918-byte record


CASES = [name for name in sorted(globals()) if name.startswith("case_")]


def run_all(mod, folder):
    # the VM's entry: each case in its own empty folder, one line each
    for name in CASES:
        sub = folder + "/" + name
        os.mkdir(sub)
        try:
            extra = globals()[name](mod, sub)
            print("PASS", name, extra if extra else "")
        except AssertionError as exc:
            print("FAIL", name, exc)
