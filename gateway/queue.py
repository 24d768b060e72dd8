"""The durable queue: every outgoing message is on disk before it can be published.

SQLite in WAL mode with ``synchronous=FULL``: a committed message survives ``kill -9`` and
power loss. Producers hand messages to one writer, which commits whatever has gathered
since its last commit in one transaction (group commit: one fsync for many devices).
A poller does not wait for that commit: ``submit`` returns as soon as the message is
handed over (with a future for its outcome); it waits only when ``max_uncommitted``
messages are already waiting for the disk, so a bus that outruns the disk slows down to
the disk's pace and memory stays bounded (backpressure). ``append`` is ``submit`` plus
waiting for the commit, for producers that need the outcome (command results).

A group is bounded by count (``GROUP_MAX`` messages) and by time: the writer never holds
a message back to gather more; a group is what arrived while the previous one was being
committed, so a message waits at most one commit before its own starts.

The uplink peeks the oldest messages in order and acknowledges them after the broker's
PUBACK. An acknowledgement is recorded in memory at once (the message is not handed out
again) and its delete rides in the writer's next transaction: with the next group of
appends (whose fsync it shares), or alone with ``synchronous=NORMAL`` (written to the
WAL, not forced to the disk). A delete lost in a power cut only makes that message come
again after the restart (at-least-once): a duplicate, never a loss.

When the queue passes its size cap, the oldest messages are dropped, counted and kept
counted across restarts. The cap is on disk, WAL included: the database file may not grow
past ``max_bytes`` (or what the file system has free, whichever is less) minus room kept
for the WAL, which is checkpointed and cut back to its share (``journal_size_limit``)
when it passes it. A full disk (SQLITE_FULL, from the file system or from that cap) is not an
error for the producers: the oldest messages are dropped to make room, counted in
``dropped`` and logged once per episode with the free space, and the group is stored.
Only when nothing is left to drop does a group fail (QueueWriteError). A delete the disk
refuses is retried with the next transaction; the message is not sent again meanwhile.

Each device's pack sequence number is assigned in the same transaction that stores the
pack, so ``seq`` has no gaps and no repeats across restarts.

No producer ever waits on a future nobody resolves: a payload that cannot be built fails
only its own message (the rest of its group commits), a failed group fails each of its
messages with ``QueueWriteError``, and the writer goes on serving later ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("polekit.gateway.queue")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    device TEXT,
    seq INTEGER,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_seq (device TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Message:
    """One stored message, oldest first by ``id``."""

    id: int
    topic: str
    payload: bytes
    device: str | None
    seq: int | None


class QueueWriteError(Exception):
    """A batch of appends could not be stored (the database refused the transaction);
    the message it was raised for is not in the queue."""


WAL_MIN_BYTES = 64 * 1024
WAL_MAX_BYTES = 4 * 1024 * 1024
SHM_AND_SLACK_BYTES = 64 * 1024  # the -shm index (32 KiB) and rounding
MIN_PAGES = 16  # the schema itself
RECHECK_S = 2.0  # how often free space is looked at again while the disk bounds the queue
FULL_DROP_FRACTION = 0.1  # of the queued bytes, dropped at each SQLITE_FULL
# messages handed to the writer and not yet committed, at most: what a bus may run ahead
# of the disk (and what a power cut can take beyond the commit in progress)
MAX_UNCOMMITTED = 256
GROUP_MAX = 512  # messages in one commit
# a delete with no append to ride with waits this long for one (or for more PUBACKs)
DELETE_DELAY_S = 0.005
# deletes in one transaction, oldest first: a large one would need as much WAL as the rows
# it frees, which a small disk may not have
DELETE_MAX = 256
# committed messages also kept in memory, the newest this many: while they are the whole
# backlog (the usual case: the uplink keeps up), ``peek`` answers from memory, without a
# trip to the writer thread and a SELECT; a larger backlog is read from the file
RECENT_MAX = 4096


def _is_full(exc: BaseException) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _kib(n: int) -> str:
    return f"{n // 1024} KiB"


# a payload, or make_payload(seq) for a message that carries the device's next number
Payload = bytes | Callable[[int], bytes]
# (device, topic, payload, future); device None = a message with no sequence
_Pending = tuple[str | None, str, Payload, asyncio.Future]


def _private_file(path: Path) -> None:
    """Make ``path`` (and its folder, when missing) readable by this user alone: the queue
    holds every reading and command result. SQLite gives its -wal and -shm files the mode
    of the database file, so making that one 0600 before SQLite opens it covers all three;
    a file an older version left 0644 is tightened."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            f = path.with_name(path.name + suffix)
            if f.stat().st_mode & 0o077:
                f.chmod(0o600)


class DurableQueue:
    """A size-capped, crash-safe FIFO of MQTT messages in one SQLite file.

    Owns its connection and writer thread: call ``close()`` (or use ``async with``), after
    ``drain()`` when messages may still be on their way to the disk. ``submit``, ``append``
    and the other coroutines must be awaited from one event loop. ``max_bytes`` bounds the
    files on disk (database, WAL and index together); ``max_uncommitted`` bounds the
    messages handed over and not yet on disk (backpressure). ``sync_delay_s`` adds that
    long to every fsync'ed commit: a slow disk for tests and benchmarks, 0 in service.
    """

    def __init__(
        self,
        path: Path | str,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        max_uncommitted: int = MAX_UNCOMMITTED,
        sync_delay_s: float = 0.0,
    ) -> None:
        if max_uncommitted < 1:
            raise ValueError(f"max_uncommitted must be at least 1, not {max_uncommitted}")
        self.path = Path(path)
        _private_file(self.path)
        self.max_bytes = max_bytes
        self.max_uncommitted = max_uncommitted
        self.sync_delay_s = sync_delay_s
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-writer")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db_lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._synchronous = "FULL"
        self._db.executescript(_SCHEMA)
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        self._seq = dict(self._db.execute("SELECT device, seq FROM device_seq"))
        self.dropped = self._counter("dropped")
        self._bytes, self._rows = self._db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM message"
        ).fetchone()
        self._pending: list[_Pending] = []
        self._uncommitted = 0  # handed over (pending or in the writer), not yet answered
        self._room: asyncio.Event | None = None  # set when a commit made room
        self._loop: asyncio.AbstractEventLoop | None = None  # the producers' loop
        self._busy = False  # a transaction (or a tidy) is in the writer thread
        self._closed = False
        self._start_soon = False  # a start is scheduled for the end of this loop turn
        self._idle: asyncio.Event | None = None
        self._delete_timer: asyncio.TimerHandle | None = None  # deletes wait for a group
        self._changed: asyncio.Event | None = None
        # acknowledged by the broker, delete not committed yet: never handed out again.
        # Shared with the writer thread, under _acked_lock (held for microseconds).
        self._acked: set[int] = set()
        self._acked_lock = threading.Lock()
        # the newest committed messages not deleted yet, by id in id order, under
        # _acked_lock: always a subset of the rows, so when it holds _rows messages it
        # holds them all (see peek)
        self._recent: dict[int, Message] = {}
        self._ack_gen = 0  # acknowledgements recorded so far
        self._deleted_gen = 0  # ... of which the writer has tried to delete
        self._deleted: asyncio.Event | None = None
        self._handed = 0  # messages handed to the writer, ever (drain() waits by these)
        self._done = 0  # of them, those whose transaction is over (committed or refused)
        self._deletes_left = False  # more acknowledged than the last transaction took
        # the disk: what the files may use, and whether the file system (not max_bytes)
        # is what bounds them
        self.budget_bytes = max_bytes
        self.wal_limit_bytes = WAL_MIN_BYTES
        self.disk_bound = False
        self._checked_at = 0.0
        self.full = False  # in a disk-full episode: dropping the oldest to keep the newest
        self._full_dropped = 0  # dropped in this episode
        self._full_budget = 0
        self._cap = max_bytes  # payload bytes kept; lowered while the disk is full
        self._refused_write = False  # a group failed: logged once until one is stored
        self._refused_delete = False  # a delete failed: logged once until one is done
        self.commits = 0  # transactions committed (groups and delete-only ones)
        self.group_peak = 0  # the largest group committed
        self._plan_space()

    async def __aenter__(self) -> DurableQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drain()
        self.close()

    @property
    def depth(self) -> int:
        """Messages waiting to be published (committed, not acknowledged)."""
        with self._acked_lock:  # an id acknowledged after it was dropped counts until
            return max(self._rows - len(self._acked), 0)  # the next transaction

    @property
    def uncommitted(self) -> int:
        """Messages handed over and not yet committed (at most ``max_uncommitted``)."""
        return self._uncommitted

    @property
    def size_bytes(self) -> int:
        """Payload and topic bytes in the queue (acknowledged ones until their delete)."""
        return self._bytes

    def disk_bytes(self) -> int:
        """Bytes the queue's files take on disk now: database, WAL and index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total

    def free_bytes(self) -> int:
        """Bytes free for this user on the queue's file system."""
        return shutil.disk_usage(self.path.parent).free

    def _plan_space(self) -> None:
        # Split what the queue may use between the database (a page cap SQLite enforces:
        # SQLITE_FULL before the file grows past it) and its WAL (checkpointed and cut back
        # to its share when it passes it). Called with the connection idle.
        self._checked_at = self.clock()
        own, free = self.disk_bytes(), self.free_bytes()
        self.disk_bound = own + free < self.max_bytes
        budget = min(self.max_bytes, own + free)
        wal = min(max(budget // 16, WAL_MIN_BYTES), WAL_MAX_BYTES)
        pages = max((budget - 2 * wal - SHM_AND_SLACK_BYTES) // self._page_size, MIN_PAGES)
        self.budget_bytes, self.wal_limit_bytes = budget, wal
        self._db.execute(f"PRAGMA max_page_count = {pages}")  # never below the file's size
        self._db.execute(f"PRAGMA journal_size_limit = {wal}")
        self._db.execute(f"PRAGMA wal_autocheckpoint = {max(wal // self._page_size // 2, 8)}")

    def last_seq(self, device: str) -> int:
        """The last sequence number given to ``device`` (0 before its first pack)."""
        return self._seq.get(device, 0)

    def changed(self) -> asyncio.Event:
        """An event set whenever messages are added (the uplink waits on it when idle)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def submit(
        self, topic: str, payload: Payload, device: str | None = None
    ) -> asyncio.Future[int]:
        """Hand one message to the writer and return without waiting for the disk: the
        future it returns is resolved at the commit, with the device's sequence number
        given to the message (0 for messages without a device), or fails with the
        exception that kept it out (see ``append``). Waits only while ``max_uncommitted``
        messages are already waiting for the disk (backpressure).

        Whoever takes the future owns its outcome: retrieve it (a done-callback that
        calls ``exception()``), or asyncio logs a failed one as never retrieved."""
        while self._uncommitted >= self.max_uncommitted:
            room = self._room_event()
            room.clear()
            await room.wait()
        if self._closed:
            raise QueueWriteError("the queue is closed (the gateway is stopping); not stored")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((device, topic, payload, done))
        self._uncommitted += 1
        self._handed += 1
        self._kick()
        return done

    async def append(self, topic: str, payload: Payload, device: str | None = None) -> int:
        """Store one message and return once it is on disk; returns the device's sequence
        number given to it (0 for messages without a device).

        ``payload`` is the encoded message, or ``make_payload(seq)`` building it for the
        device's next number (called in the writer thread). Encode what can fail before
        calling: an exception from ``make_payload`` fails this message alone (raised here,
        no number used); QueueWriteError when the database refused the whole group (a
        full disk with nothing left to drop, a broken file)."""
        return await (await self.submit(topic, payload, device))

    async def drain(self) -> None:
        """Return once every message handed over before the call is committed (or failed)
        and every acknowledgement recorded before it has been written. What comes after is
        not waited for: an uplink still acknowledging a backlog does not hold up a stop."""
        handed, acks = self._handed, self._ack_gen
        if self._deleted is None:
            self._deleted = asyncio.Event()
        while not self._closed and (self._done < handed or self._deleted_gen < acks):
            self._deleted.clear()
            self._kick()
            await self._deleted.wait()

    def _idle_event(self) -> asyncio.Event:
        # set while the writer has nothing to do: no transaction in the thread, nothing
        # pending, no delete waiting for its turn
        if self._idle is None:
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    def _room_event(self) -> asyncio.Event:
        if self._room is None:
            self._room = asyncio.Event()
        return self._room

    # ---- the writer ------------------------------------------------------------------
    # Driven by callbacks on the event loop, not by a task: a transaction is handed to the
    # writer thread, which hands its outcome back with call_soon_threadsafe. A task that
    # awaited run_in_executor cost a task, a wrapped future and their chaining per commit
    # (a bare hand-off measured 30 us of CPU that way, 21 us this way). Every future of
    # every group taken is resolved, whatever happens to the group: a producer never
    # waits on a group that is gone.

    def _kick(self) -> None:
        # start a transaction when the writer is free and something is waiting for one
        if self._busy or self._closed:
            return
        if self._pending:
            # at the end of this turn of the loop: what else is handed over in it (the
            # answers of other lanes and buses read in the same turn) joins the group
            self._idle_event().clear()
            if not self._start_soon:
                self._start_soon = True
                self._loop_now().call_soon(self._start_if_free)
        elif self._ack_gen > self._deleted_gen or self._deletes_left:
            # deletes alone: wait a little for a group to ride with (submit starts one
            # at once), never longer than DELETE_DELAY_S
            self._idle_event().clear()
            if self._delete_timer is None:
                self._delete_timer = self._loop_now().call_later(DELETE_DELAY_S, self._deletes_due)
        else:
            self._idle_event().set()

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _start_if_free(self) -> None:
        self._start_soon = False
        if self._busy or self._closed:
            return  # _written kicks again
        if self._pending:
            self._start()
        else:
            self._kick()

    def _deletes_due(self) -> None:
        self._delete_timer = None
        if not self._busy and not self._closed:
            self._start()

    def _start(self) -> None:
        loop = self._loop_now()
        if self._delete_timer is not None:
            self._delete_timer.cancel()
            self._delete_timer = None
        group = self._pending[:GROUP_MAX]
        del self._pending[:GROUP_MAX]
        self._busy = True
        self._idle_event().clear()
        self._executor.submit(self._write_in_thread, loop, group, self._ack_gen)

    def _write_in_thread(
        self, loop: asyncio.AbstractEventLoop, group: list[_Pending], ack_gen: int
    ) -> None:
        try:
            outcomes: list[int | Exception] | Exception = self._write(group)
        except Exception as exc:  # noqa: BLE001 - the database refused the transaction
            outcomes = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits now
            loop.call_soon_threadsafe(self._written, group, ack_gen, outcomes)

    def _written(
        self,
        group: list[_Pending],
        ack_gen: int,
        outcomes: list[int | Exception] | Exception,
    ) -> None:
        # on the loop: the transaction of ``group`` is done (committed, or refused)
        if isinstance(outcomes, Exception):
            if group and not self._refused_write:
                log.error("queue: %d message(s) not stored: %s", len(group), outcomes)
            self._refused_write = self._refused_write or bool(group)
            failed = QueueWriteError(f"the queue could not store the message: {outcomes}")
            outcomes = [failed] * len(group)
        elif group:
            self._refused_write = False
        self._deleted_gen = ack_gen  # tried: a refused delete waits for the next
        if self._deleted is not None:
            self._deleted.set()
        self._uncommitted -= len(group)
        self._done += len(group)
        self._room_event().set()
        for (*_, fut), outcome in zip(group, outcomes, strict=True):
            if fut.done():  # its producer was cancelled meanwhile
                continue
            if isinstance(outcome, Exception):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
        if group:
            self.changed().set()
        if not self._pending and self._recheck_due():  # producers are answered
            self._executor.submit(self._tidy_in_thread, self._loop_now())
            return  # still busy: _tidied frees the writer
        self._busy = False
        self._kick()

    def _tidy_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._tidy()
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._tidied)

    def _tidied(self) -> None:
        self._busy = False
        self._kick()

    def _recheck_due(self) -> bool:
        # the disk bounds the queue: its free space is looked at again every RECHECK_S
        return (self.disk_bound or self.full) and self.clock() - self._checked_at >= RECHECK_S

    def _tidy(self) -> None:
        # off the producers' path (no one waits for it): look at the disk again
        with self._db_lock:
            if self._recheck_due():
                self._plan_space()
                if self.full and self.budget_bytes > self._full_budget * 1.1:
                    self._end_full("the disk has room again")
            self._trim_wal()

    def _trim_wal(self) -> None:
        # RESTART, not TRUNCATE: the next commit writes the WAL from its start and SQLite
        # cuts the file to journal_size_limit, so the WAL keeps its share of the disk and
        # a commit still finds room when another program has taken every free byte
        try:
            if os.stat(f"{self.path}-wal").st_size > self.wal_limit_bytes:
                self._db.execute("PRAGMA wal_checkpoint(RESTART)")
        except FileNotFoundError:
            pass
        except sqlite3.Error as exc:  # a checkpoint the disk refuses: the next one may not
            log.debug("queue: checkpoint failed: %s", exc)

    def _write(self, group: list[_Pending]) -> list[int | Exception]:
        # one transaction: the group's inserts and the oldest deletes acknowledged so far
        with self._db_lock:
            with self._acked_lock:
                deletes = sorted(self._acked)[:DELETE_MAX]
                more = len(self._acked) > DELETE_MAX
            self._deletes_left = False
            if not group:
                self._deletes_left = self._delete_only(deletes) and more
                return []
            try:
                outcomes = self._write_group(group, deletes)
                self._trim_wal()  # a stat; a checkpoint when the WAL passed its share
            except sqlite3.OperationalError as exc:
                if not _is_full(exc) or not self._rows:
                    raise
                self._on_full()
                # the new messages first (a second refusal fails them); the deletes are
                # tried again with the next transaction
                return self._write_group(group, [])
            self._deletes_left = more
            return outcomes

    def _set_synchronous(self, level: str) -> None:
        if self._synchronous != level:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    def _commit(self) -> None:
        self._db.execute("COMMIT")
        self.commits += 1
        if self.sync_delay_s and self._synchronous == "FULL":
            time.sleep(self.sync_delay_s)  # the slow disk asked for (tests, benchmarks)

    def _delete_only(self, ids: list[int]) -> bool:
        # acknowledged messages alone: written to the WAL, not forced to the disk. A power
        # cut may lose this transaction, never corrupt the file (WAL keeps commit order:
        # the next fsync'ed group carries it to the disk); the cost is a duplicate
        if not ids:
            return True
        db = self._db
        self._set_synchronous("NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            size, count = self._delete(ids)
            self._commit()
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if not self._refused_delete:
                log.warning("queue: cannot delete sent messages yet: %s; retrying", exc)
            self._refused_delete = True
            return False
        finally:
            self._set_synchronous("FULL")
        self._deleted_committed(ids, size, count)
        if self.full and self._bytes <= self._cap // 2:
            self._end_full("the backlog has drained")
        self._trim_wal()
        return True

    def _delete(self, ids: list[int]) -> tuple[int, int]:
        # inside a transaction: (bytes, rows) deleted
        size = count = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for (row_size,) in self._db.execute(
                f"DELETE FROM message WHERE id IN ({marks}) RETURNING size", chunk
            ):
                size += row_size
                count += 1
        return size, count

    def _deleted_committed(self, ids: list[int], size: int, count: int) -> None:
        with self._acked_lock:
            self._acked.difference_update(ids)
            self._bytes -= size
            self._rows -= count
            recent = self._recent
            for i in ids:
                recent.pop(i, None)
        self._refused_delete = False

    def _on_full(self) -> None:
        # SQLITE_FULL: the file system or the page cap. Give the WAL back, look at the disk
        # again and keep less: the oldest messages make room for the newest.
        self._trim_wal()
        self._plan_space()
        if not self.full:
            self.full, self._full_dropped, self._full_budget = True, 0, self.budget_bytes
            log.warning(
                "queue: the disk is full (%s free on %s, the queue takes %s in %d messages); "
                "dropping the oldest messages to keep polling, counted in `dropped`",
                _kib(self.free_bytes()),
                self.path.parent,
                _kib(self.disk_bytes()),
                self._rows,
            )
        self._cap = int(self._bytes * (1 - FULL_DROP_FRACTION))

    def _end_full(self, why: str) -> None:
        log.warning(
            "queue: %s (%s free); %d oldest messages were dropped while it was full",
            why,
            _kib(self.free_bytes()),
            self._full_dropped,
        )
        self.full, self._cap = False, self.max_bytes

    def _write_group(self, group: list[_Pending], deletes: list[int]) -> list[int | Exception]:
        # one transaction; a payload that cannot be built is left out (its outcome is its
        # exception) and uses no sequence number. The payloads are built first, so the
        # oldest messages can make room before the new ones go in (their pages are reused).
        outcomes: list[int | Exception] = []
        rows: list[tuple[str, bytes, str | None, int | None, int]] = []
        new_seq = dict(self._seq)
        for device, topic, payload, _ in group:
            seq = new_seq.get(device, 0) + 1 if device is not None else 0
            try:
                data = payload(seq) if callable(payload) else payload
                if not isinstance(data, bytes):
                    raise TypeError(f"a payload must be bytes, not {type(data).__name__}")
            except Exception as exc:  # noqa: BLE001 - handed to this message's producer
                outcomes.append(exc)
                continue
            if device is not None:
                new_seq[device] = seq
            rows.append((topic, data, device, seq or None, len(data) + len(topic)))
            outcomes.append(seq)
        added = sum(row[4] for row in rows)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            del_size, del_count = self._delete(deletes)
            dropped, freed, dropped_count, last_dropped = self._trim(self._bytes - del_size + added)
            db.executemany(
                "INSERT INTO message (topic, payload, device, seq, size) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            # one writer, one transaction: the rows took consecutive ids up to this one
            last_id = db.execute("SELECT last_insert_rowid()").fetchone()[0] if rows else 0
            db.executemany(
                "INSERT OR REPLACE INTO device_seq VALUES (?, ?)",
                [(d, new_seq[d]) for d in {row[2] for row in rows if row[2] is not None}],
            )
            self._commit()
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may have rolled back already
                db.execute("ROLLBACK")
            raise
        self._seq = new_seq
        self._deleted_committed(deletes, del_size, del_count)
        with self._acked_lock:
            self._bytes += added - freed
            self._rows += len(rows) - dropped_count
            recent = self._recent
            if last_dropped is not None:  # dropped before its delete: nothing to delete
                self._acked = {i for i in self._acked if i > last_dropped}
                for i in [i for i in recent if i <= last_dropped]:
                    del recent[i]
            first_id = last_id - len(rows) + 1
            for n, (topic, data, device, seq, _size) in enumerate(rows):
                recent[first_id + n] = Message(first_id + n, topic, data, device, seq)
            for i in list(itertools.islice(recent, max(len(recent) - RECENT_MAX, 0))):
                del recent[i]  # the oldest leave memory; peek reads the file until they go
        if self.full:
            self._full_dropped += dropped_count
            if del_count and self._bytes <= self._cap // 2:
                self._end_full("the backlog has drained")
        self.dropped = dropped
        self.group_peak = max(self.group_peak, len(group))
        return outcomes

    def _trim(self, total: int) -> tuple[int, int, int, int | None]:
        # called inside the write transaction, after the acknowledged rows are deleted:
        # oldest first until under the cap; (dropped in all, bytes freed, messages
        # dropped now, the newest id dropped)
        cap = min(self.max_bytes, self._cap)
        if total <= cap:
            return self.dropped, 0, 0, None
        freed = count = 0
        last = None
        for msg_id, size in self._db.execute("SELECT id, size FROM message ORDER BY id"):
            if total - freed <= cap:
                break
            freed += size
            count += 1
            last = msg_id
        if last is None:
            return self.dropped, 0, 0, None
        self._db.execute("DELETE FROM message WHERE id <= ?", (last,))
        dropped = self.dropped + count
        self._db.execute("INSERT OR REPLACE INTO counter VALUES ('dropped', ?)", (dropped,))
        return dropped, freed, count, last

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counter WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    async def peek(self, limit: int = 100) -> list[Message]:
        """The oldest ``limit`` committed messages not acknowledged yet, oldest first; they
        stay queued until ``ack``. Served from memory while the backlog is the newest
        RECENT_MAX messages or fewer (no thread trip), from the file otherwise."""
        in_memory = self._peek_recent(limit)
        if in_memory is not None:
            return in_memory
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._peek, limit)

    def _peek_recent(self, limit: int) -> list[Message] | None:
        # None when some committed message is not in memory (a backlog past RECENT_MAX,
        # or rows left by an earlier run)
        with self._acked_lock:
            if len(self._recent) != self._rows:
                return None
            acked = self._acked
            out: list[Message] = []
            if limit <= 0:
                return out
            for msg_id, message in self._recent.items():
                if msg_id not in acked:
                    out.append(message)
                    if len(out) == limit:
                        break
            return out

    def _peek(self, limit: int) -> list[Message]:
        # under the database lock: no delete can commit (and leave _acked) between the
        # SELECT and the filter
        with self._db_lock:
            with self._acked_lock:
                skip = set(self._acked)
            rows = self._db.execute(
                "SELECT id, topic, payload, device, seq FROM message ORDER BY id LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
        return [Message(*row) for row in rows if row[0] not in skip][:limit]

    def acked(self, ids: list[int]) -> None:
        """Record that the broker acknowledged these messages: they are never handed out
        again, and their delete rides in the writer's next transaction (no fsync of its
        own). Returns at once; call it from each PUBACK, so none is forgotten when a
        session ends in the middle of a batch."""
        if not ids:
            return
        with self._acked_lock:
            self._acked.update(ids)
        self._ack_gen += 1
        self._kick()

    async def ack(self, ids: list[int]) -> None:
        """``acked(ids)``, then wait until the writer has tried to delete them. A delete
        the disk refuses is kept in memory (the message is not handed out again) and
        retried with the next transaction."""
        if not ids:
            return
        self.acked(ids)
        gen = self._ack_gen
        if self._deleted is None:
            self._deleted = asyncio.Event()
        while self._deleted_gen < gen:
            self._deleted.clear()
            self._kick()
            await self._deleted.wait()

    def close(self) -> None:
        """Close the file after the writes in progress; messages handed over and not yet
        taken by the writer are not stored (``drain()`` first to store them): their
        producers get QueueWriteError, none is left waiting."""
        self._closed = True
        left, self._pending = self._pending, []
        self._uncommitted -= len(left)
        for *_, fut in left:
            if not fut.done():
                fut.set_exception(QueueWriteError("the queue was closed before storing it"))
        if self._delete_timer is not None:
            self._delete_timer.cancel()
            self._delete_timer = None
        self._executor.shutdown(wait=True)
        with self._db_lock:
            self._db.close()
