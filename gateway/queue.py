"""The durable queue: every outgoing message is on disk before it counts as read.

SQLite in WAL mode with ``synchronous=FULL``: a committed message survives ``kill -9`` and
power loss. Producers append through one writer thread, which commits whatever has
gathered since the last commit in one transaction (group commit): many devices cost one
fsync, not one each, and nothing blocks the event loop. The uplink peeks the oldest
messages in order and deletes them only after the broker acknowledged them (PUBACK).
When the queue passes its size cap, the oldest messages are dropped, counted and kept
counted across restarts.

The cap is on disk, WAL included: the database file may not grow past ``max_bytes`` (or
what the file system has free, whichever is less) minus room kept for the WAL, which is
checkpointed and truncated (``journal_size_limit``) before it passes its share. A full
disk (SQLITE_FULL, from the file system or from that cap) is not an error for the
producers: the oldest messages are dropped to make room, counted in ``dropped`` and
logged once per episode with the free space, and the batch is stored. Only when nothing
is left to drop does a batch fail (QueueWriteError). A delete the disk refuses after a
PUBACK is retried with the next one; the message is not sent again meanwhile.

Each device's pack sequence number is assigned in the same transaction that stores the
pack, so ``seq`` has no gaps and no repeats across restarts.

No producer ever waits on a future nobody resolves: a payload that cannot be built fails
only its own ``append`` (the rest of its batch commits), a failed batch fails each of its
producers with ``QueueWriteError``, and the writer goes on serving later appends.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    Owns its connection and writer thread: call ``close()`` (or use ``async with``).
    ``append`` and the other coroutines must be awaited from one event loop.
    ``max_bytes`` bounds the files on disk (database, WAL and index together).
    """

    def __init__(
        self,
        path: Path | str,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        _private_file(self.path)
        self.max_bytes = max_bytes
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-writer")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db_lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        self._seq = dict(self._db.execute("SELECT device, seq FROM device_seq"))
        self.dropped = self._counter("dropped")
        self._bytes, self._depth = self._db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM message"
        ).fetchone()
        self._pending: list[_Pending] = []
        self._flushing = False
        self._flush_task: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None
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
        self._refused_write = False  # a batch failed: logged once until one is stored
        self._unacked: set[int] = set()  # acknowledged, but the delete was refused
        self._plan_space()

    async def __aenter__(self) -> DurableQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def depth(self) -> int:
        """Messages waiting to be published."""
        return self._depth

    @property
    def size_bytes(self) -> int:
        """Payload and topic bytes waiting to be published."""
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
        # SQLITE_FULL before the file grows past it) and its WAL (checkpointed and truncated
        # before it passes its share). Called with the connection idle.
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

    async def append(self, topic: str, payload: Payload, device: str | None = None) -> int:
        """Store one message and return once it is on disk; returns the device's sequence
        number given to it (0 for messages without a device).

        ``payload`` is the encoded message, or ``make_payload(seq)`` building it for the
        device's next number (called in the writer thread). Encode what can fail before
        calling: an exception from ``make_payload`` fails this append alone (raised here,
        no number used); QueueWriteError when the database refused the whole batch (a
        full disk with nothing left to drop, a broken file)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        self._pending.append((device, topic, payload, done))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        # Serves until nothing is pending. Every future of every batch taken is resolved,
        # whatever happens to the batch: a producer never waits on a batch that is gone.
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._write, batch)
                except Exception as exc:  # the database refused the transaction
                    if not self._refused_write:
                        log.error("queue: %d message(s) not stored: %s", len(batch), exc)
                    self._refused_write = True
                    failed = QueueWriteError(f"the queue could not store the message: {exc}")
                    outcomes = [failed] * len(batch)
                except BaseException:  # cancelled (the loop is closing): no one may hang
                    for *_, fut in batch + self._pending:
                        fut.cancel()
                    self._pending = []
                    raise
                else:
                    self._refused_write = False
                for (*_, fut), outcome in zip(batch, outcomes, strict=True):
                    if fut.done():  # its producer was cancelled meanwhile
                        continue
                    if isinstance(outcome, Exception):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
                self.changed().set()
                if not self._pending:  # producers are answered: now is the time to tidy
                    await loop.run_in_executor(self._executor, self._tidy)
        finally:
            self._flushing = False

    def _tidy(self) -> None:
        # off the producers' path: keep the WAL within its share, look at the disk again
        with self._db_lock:
            if self.disk_bound or self.full:
                if self.clock() - self._checked_at >= RECHECK_S:
                    self._plan_space()
                    if self.full and self.budget_bytes > self._full_budget * 1.1:
                        self._end_full("the disk has room again")
            self._trim_wal()

    def _trim_wal(self) -> None:
        try:
            if os.stat(f"{self.path}-wal").st_size > self.wal_limit_bytes:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except FileNotFoundError:
            pass
        except sqlite3.Error as exc:  # a checkpoint the disk refuses: the next one may not
            log.debug("queue: checkpoint failed: %s", exc)

    def _write(self, batch: list[_Pending]) -> list[int | Exception]:
        with self._db_lock:
            try:
                return self._write_batch(batch)
            except sqlite3.OperationalError as exc:
                if not _is_full(exc) or not self._depth:
                    raise
                self._on_full()
                return self._write_batch(batch)  # a second refusal fails the batch

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
                self._depth,
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

    def _write_batch(self, batch: list[_Pending]) -> list[int | Exception]:
        # one transaction; a payload that cannot be built is left out (its outcome is its
        # exception) and uses no sequence number. The payloads are built first, so the
        # oldest messages can make room before the new ones go in (their pages are reused).
        outcomes: list[int | Exception] = []
        rows: list[tuple[str, bytes, str | None, int | None, int]] = []
        new_seq = dict(self._seq)
        for device, topic, payload, _ in batch:
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
            dropped, freed, dropped_count = self._trim(self._bytes + added)
            db.executemany(
                "INSERT INTO message (topic, payload, device, seq, size) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT OR REPLACE INTO device_seq VALUES (?, ?)",
                [(d, new_seq[d]) for d in {row[2] for row in rows if row[2] is not None}],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT may have rolled back already
                db.execute("ROLLBACK")
            raise
        self._seq = new_seq
        self._bytes += added - freed
        self._depth += len(rows) - dropped_count
        if self.full:
            self._full_dropped += dropped_count
        self.dropped = dropped
        return outcomes

    def _trim(self, total: int) -> tuple[int, int, int]:
        # called inside the write transaction: oldest first until under the cap
        cap = min(self.max_bytes, self._cap)
        if total <= cap or not self._depth:
            return self.dropped, 0, 0
        freed = count = 0
        last = None
        for msg_id, size in self._db.execute("SELECT id, size FROM message ORDER BY id"):
            if total - freed <= cap:
                break
            freed += size
            count += 1
            last = msg_id
        if last is None:
            return self.dropped, 0, 0
        self._db.execute("DELETE FROM message WHERE id <= ?", (last,))
        self._unacked = {i for i in self._unacked if i > last}
        dropped = self.dropped + count
        self._db.execute("INSERT OR REPLACE INTO counter VALUES ('dropped', ?)", (dropped,))
        return dropped, freed, count

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counter WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    async def peek(self, limit: int = 100) -> list[Message]:
        """The oldest ``limit`` messages, oldest first; they stay queued until ``ack``."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._peek, limit)

    def _peek(self, limit: int) -> list[Message]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, device, seq FROM message ORDER BY id LIMIT ?",
                (limit + len(self._unacked),),
            ).fetchall()
        return [Message(*row) for row in rows if row[0] not in self._unacked][:limit]

    async def ack(self, ids: list[int]) -> None:
        """Delete messages the broker acknowledged. A delete the disk refuses is kept in
        memory (the message is not handed out again) and retried with the next ack."""
        if ids:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._ack, ids)

    def _ack(self, ids: list[int]) -> None:
        with self._db_lock:
            ids = sorted(set(ids) | self._unacked)
            marks = ",".join("?" * len(ids))
            try:
                self._db.execute("BEGIN IMMEDIATE")
                size, count = self._db.execute(
                    f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM message WHERE id IN ({marks})",
                    ids,
                ).fetchone()
                self._db.execute(f"DELETE FROM message WHERE id IN ({marks})", ids)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if not self._unacked:
                    log.warning("queue: cannot delete sent messages yet: %s; retrying", exc)
                self._unacked = set(ids)
                return
            self._unacked = set()
            self._bytes -= size
            self._depth -= count
            if self.full and self._bytes <= self._cap // 2:
                self._end_full("the backlog has drained")
            self._trim_wal()

    def close(self) -> None:
        """Finish pending writes and close the file."""
        self._executor.shutdown(wait=True)
        with self._db_lock:
            self._db.close()
