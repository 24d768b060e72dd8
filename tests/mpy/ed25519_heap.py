# Copied to the emulated board as /lib/ed25519_heap.py (tests/test_ed25519.py and
# bench/ed25519.py; the case in /ed25519_case/pk, msg, sig): one verification as the node runs it, async, yielding between steps,
# with the heap sampled at every step (just before the yield, where the most garbage is
# held where the VM collects at the yield). RESULT: (ok, ms, steps, peak bytes above the
# start, the most bytes one step allocated).
import asyncio
import gc
import time

RESULT = None


# the key, message and signature from the board's flash (too big for a REPL line)
def load(folder="/ed25519_case"):
    out = []
    for name in ("pk", "msg", "sig"):
        with open(folder + "/" + name, "rb") as f:
            out.append(f.read())
    return out


async def main():
    global RESULT
    from protocols import ed25519

    pk, msg, sig = load()
    gc.collect()
    base = gc.mem_alloc()
    peak = 0
    step_bytes = 0  # the most one step allocated: what must fit between two collections
    last = base
    steps = 0
    ok = None
    t = time.ticks_ms()
    for ok in ed25519.verify_steps(pk, msg, sig):
        now = gc.mem_alloc()
        peak = max(peak, now - base)
        step_bytes = max(step_bytes, now - last)
        steps += 1
        if ok is not None:
            break
        await asyncio.sleep_ms(0)
        last = gc.mem_alloc()  # after the yield: what the collection there left
    RESULT = (ok, time.ticks_diff(time.ticks_ms(), t), steps, peak, step_bytes)


def sync():
    from protocols import ed25519

    pk, msg, sig = load()
    gc.collect()
    t = time.ticks_ms()
    try:
        ok = ed25519.verify(pk, msg, sig)
    except MemoryError:
        ok = "MemoryError"
    return ok, time.ticks_diff(time.ticks_ms(), t)
