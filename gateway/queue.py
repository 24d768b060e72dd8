"""The durable queue: every outgoing message is on disk before it counts as read.

SQLite in WAL mode with ``synchronous=FULL``: a committed message survives ``kill -9`` and
power loss. Producers append through one writer thread, which commits whatever has
gathered since the last commit in one transaction (group commit): many devices cost one
fsync, not one each, and nothing blocks the event loop. The uplink peeks the oldest
messages in order and deletes them only after the broker acknowledged them (PUBACK).
When the queue passes its size cap, the oldest messages are dropped, counted and kept
counted across restarts.

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
import sqlite3
import threading
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
    """

    def __init__(self, path: Path | str, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.path = Path(path)
        _private_file(self.path)
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-writer")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db_lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._seq = dict(self._db.execute("SELECT device, seq FROM device_seq"))
        self.dropped = self._counter("dropped")
        self._bytes, self._depth = self._db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM message"
        ).fetchone()
        self._pending: list[_Pending] = []
        self._flushing = False
        self._flush_task: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None

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
        no number used); QueueWriteError when the database refused the whole batch."""
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
                    log.error("queue: %d message(s) not stored: %s", len(batch), exc)
                    failed = QueueWriteError(f"the queue could not store the message: {exc}")
                    outcomes = [failed] * len(batch)
                except BaseException:  # cancelled (the loop is closing): no one may hang
                    for *_, fut in batch + self._pending:
                        fut.cancel()
                    self._pending = []
                    raise
                for (*_, fut), outcome in zip(batch, outcomes, strict=True):
                    if fut.done():  # its producer was cancelled meanwhile
                        continue
                    if isinstance(outcome, Exception):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
                self.changed().set()
        finally:
            self._flushing = False

    def _write(self, batch: list[_Pending]) -> list[int | Exception]:
        # one transaction; a payload that cannot be built is left out (its outcome is its
        # exception) and uses no sequence number
        outcomes: list[int | Exception] = []
        new_seq = dict(self._seq)
        stored = 0
        with self._db_lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                added = 0
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
                        db.execute("INSERT OR REPLACE INTO device_seq VALUES (?, ?)", (device, seq))
                    size = len(data) + len(topic)
                    db.execute(
                        "INSERT INTO message (topic, payload, device, seq, size)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (topic, data, device, seq or None, size),
                    )
                    added += size
                    stored += 1
                    outcomes.append(seq)
                dropped, freed, dropped_count = self._trim(self._bytes + added)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # a failed COMMIT may have rolled back already
                    db.execute("ROLLBACK")
                raise
        self._seq = new_seq
        self._bytes += added - freed
        self._depth += stored - dropped_count
        self.dropped = dropped
        return outcomes

    def _trim(self, total: int) -> tuple[int, int, int]:
        # called inside the write transaction: oldest first until under the cap
        if total <= self.max_bytes:
            return self.dropped, 0, 0
        freed = count = 0
        for msg_id, size in self._db.execute("SELECT id, size FROM message ORDER BY id"):
            if total - freed <= self.max_bytes:
                break
            freed += size
            count += 1
            last = msg_id
        self._db.execute("DELETE FROM message WHERE id <= ?", (last,))
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
                "SELECT id, topic, payload, device, seq FROM message ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [Message(*row) for row in rows]

    async def ack(self, ids: list[int]) -> None:
        """Delete messages the broker acknowledged."""
        if ids:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._ack, ids)

    def _ack(self, ids: list[int]) -> None:
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            marks = ",".join("?" * len(ids))
            size, count = self._db.execute(
                f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM message WHERE id IN ({marks})", ids
            ).fetchone()
            self._db.execute(f"DELETE FROM message WHERE id IN ({marks})", ids)
            self._db.execute("COMMIT")
        self._bytes -= size
        self._depth -= count

    def close(self) -> None:
        """Finish pending writes and close the file."""
        self._executor.shutdown(wait=True)
        with self._db_lock:
            self._db.close()
