# /state.json: what a node keeps across resets (the lamp level a master set, the BLE epoch).
#
# Written atomically: the new content goes to /state.json.new, which is then renamed over
# the old file, so a power cut leaves the old state or the new one, never half of each.
# littlefs (the ESP32 port's default file system) renames over a file in one step; FAT
# removes the target first, so a cut between the two leaves only the .new file, and
# loading falls back to it.
#
# Writes are coalesced to spare the flash: a change is written at once when nothing was
# written in the last `every_ms`, else marked dirty and written by tick() once `every_ms`
# has passed since the last write. A burst of 2,000 settings writes costs a handful of
# file writes; a power cut loses at most the changes of the last `every_ms`. Values that
# must be on flash before they are used (the BLE epoch) call flush().
# Imports nothing CPython lacks, so host tests can run this very code.
import json
import os
import time

WRITE_EVERY_MS = 10000

# CPython has no ticks_ms/ticks_diff; MicroPython's wrap around like this. The chip has no
# time.monotonic (the chip type check says so): the fallback runs on the host only
_ms = getattr(time, "ticks_ms", lambda: int(time.monotonic() * 1000))  # type: ignore[attr-defined]
_diff = getattr(time, "ticks_diff", lambda a, b: a - b)


# a JSON map written atomically (save): the file, or its .new copy a cut-short rename left
def load(path):
    for name in (path, path + ".new"):
        try:
            with open(name) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


# written as path.new, then renamed over path: a reset leaves the old map or the new one
def save(path, data):
    new = path + ".new"
    with open(new, "w") as f:
        json.dump(data, f)
    os.rename(new, path)


class StateFile:
    def __init__(self, path, every_ms=WRITE_EVERY_MS, clock=_ms):
        self.path = path
        self.every_ms = every_ms
        self.clock = clock
        self.data = load(path)
        self.dirty = False
        self.written_at = None  # clock() of the last write
        self.writes = 0

    def get(self, key, default=None):
        return self.data.get(key, default)

    # keep `value`: on flash now (at once when `now`), or by tick() within every_ms
    def set(self, key, value, now=False):
        if key not in self.data or self.data[key] != value:
            self.data[key] = value
            self.dirty = True
        if now and self.dirty:
            self.flush()
        else:
            self.tick()

    # write the pending changes if the last write is old enough; call it often
    def tick(self):
        if self.written_at is not None:
            d = _diff(self.clock(), self.written_at)
            # ticks_ms wraps (ticks_diff is only right within about 6 days on the ESP32): a
            # negative difference is a write long ago, not one in the future
            if d < 0 or d >= self.every_ms:
                self.written_at = None
        if self.dirty and self.written_at is None:
            self.flush()

    # write now, whatever the pace (before a value is used, before a planned reset)
    def flush(self):
        save(self.path, self.data)
        self.dirty = False
        self.written_at = self.clock()
        self.writes += 1
