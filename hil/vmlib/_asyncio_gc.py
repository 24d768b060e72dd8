# Garbage collection for asyncio firmware on the emulated board.
#
# The VM is MicroPython's WebAssembly port, whose heap cannot be scanned for roots while
# Python code runs (WebAssembly locals are invisible to the collector): its gc_collect()
# only marks a collection due (after every 16 KB allocated, when an allocation fails, or on
# gc.collect()), and the collection runs when control returns to JavaScript
# (ports/webassembly/main.c, gc_collect_top_level at external_call_depth 0). The board's
# heap is frozen at the chip's budget, so code that never returns to JavaScript never gets
# its garbage back and runs out of memory where the chip would have collected.
#
# The port's asyncio (ports/webassembly/asyncio/core.py) returns to JavaScript only when
# the next task must wait (dt > 0): a task that yields with `await asyncio.sleep_ms(0)` is
# resumed in the same JavaScript call, so its yields were never collection points. This
# loop is that one with one change: after a task's step, when a collection is due (16 KB
# more allocated since this call began, or gc.collect() asked for one) it returns to
# JavaScript and resumes at once, so the garbage is collected there. On the chip a yield
# costs nothing and the collector runs whenever an allocation needs it; here firmware that
# yields between its steps and inside its long loops gets the same heap (docs/hil.md).
#
# On the chip gc.collect() returns with the heap already collected, so a task that calls
# gc.collect() and then gc.mem_free() reads the heap as the collection left it. Here the
# collection waits for the return to JavaScript, so the task spells it `gc.collect(); await
# asyncio.sleep_ms(0); gc.mem_free()`, and this loop puts that task first in the queue for
# the call after the collection, ahead of any other task due, so nothing allocates between
# the collection and its reading (at the chip's speed other tasks' garbage read as 8 KB less).
import asyncio.core as _core
import gc as _gc  # the port's own (the board's budgeted gc wraps it)
from time import ticks_add, ticks_diff, ticks_ms

DUE_BYTES = 16 * 1024  # the port's gc_alloc_threshold: a collection is due after this
_asked = [False]
_asker = [None]  # the task whose gc.collect() is due
_promoted = [None]  # the task last put first, until another task has run


def collect():
    """gc.collect() as the firmware calls it: due now, run at the next yield."""
    _asked[0] = True
    _asker[0] = _core.cur_task
    _gc.collect()


def _asker_first(t):
    """Move the task that asked for the collection to the head of the queue if its step
    ended in a sleep that is already due (the `await asyncio.sleep_ms(0)` after
    gc.collect()). A task that ended, waits on anything else or sleeps into the future keeps
    its place. It stays in the queue (only its key changes), so a cancel still finds it."""
    queue = _core._task_queue
    if t is None or t is not _asker[0] or not t.state or t.data is not None:
        return
    if _promoted[0] is t:  # never twice in a row: a task that collects in a loop cannot
        return  # starve the others

    if ticks_diff(t.ph_key, ticks_ms()) > 0:
        return
    queue.remove(t)
    head = queue.peek()
    key = t.ph_key
    if head and ticks_diff(head.ph_key, key) <= 0:
        key = ticks_add(head.ph_key, -1)
    queue.push(t, key)
    _promoted[0] = t


def _run_iter():
    core = _core
    excs_all = (core.CancelledError, Exception)
    excs_stop = (core.CancelledError, StopIteration)
    start = _gc.mem_alloc()
    stepped = None
    while True:
        t = core._task_queue.peek()
        if not t:
            core.cur_task = core._top_level_task
            return
        dt = max(0, ticks_diff(t.ph_key, ticks_ms()))
        due = stepped is not None and (_asked[0] or _gc.mem_alloc() - start >= DUE_BYTES)
        if dt > 0 or due:
            if _asked[0]:
                _asker_first(stepped)
                dt = max(0, ticks_diff(core._task_queue.peek().ph_key, ticks_ms()))
            _asked[0] = False
            _asker[0] = None
            core.cur_task = core._top_level_task
            core._schedule_run_iter(dt)  # JavaScript calls back; the collection runs first
            return
        stepped = t
        if t is not _promoted[0]:
            _promoted[0] = None
        t = core._task_queue.pop()
        core.cur_task = t
        try:
            exc = t.data
            if not exc:
                t.coro.send(None)
            else:
                t.data = None
                t.coro.throw(exc)
        except excs_all as er:
            assert t.data is None
            if t.state:
                waiting = False
                if t.state is True:
                    t.state = None
                elif callable(t.state):
                    t.state(t, er)
                    t.state = False
                    waiting = True
                else:
                    while t.state.peek():
                        core._task_queue.push(t.state.pop())
                        waiting = True
                    t.state = False
                if not waiting and not isinstance(er, excs_stop):
                    core._task_queue.push(t)
                t.data = er
            elif t.state is None:
                t.data = exc
                core._exc_context["exception"] = exc
                core._exc_context["future"] = t
                core.Loop.call_exception_handler(core._exc_context)


def install():
    # core._schedule_run_iter looks _run_iter up in core's globals at each call
    _core._run_iter = _run_iter
