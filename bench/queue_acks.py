"""What an acknowledgement costs the durable queue: four ways to forget a published message.

The uplink acknowledges messages after the broker's PUBACK. Each way below is timed on the
queue's own schema, in WAL mode, on the folder given (default: a temporary folder; pass
the gateway's data_dir to measure its disk), with acknowledgements of 1 and of 20
messages at a time, and with an append (a poll, fsync'ed) committed between acks:

- delete, FULL: ``DELETE`` in its own transaction, ``synchronous=FULL`` (before issue 19);
- delete, NORMAL: the same with ``synchronous=NORMAL`` (written to the WAL, not forced);
- mark, FULL / NORMAL: a persisted high-water mark (one ``UPDATE`` of a counter row; the
  rows themselves deleted later in bulk), forced or not.

It prints microseconds per acknowledgement transaction and what the appends' commits took
meanwhile (the poller's disk). A short run: ``.venv/bin/python bench/queue_acks.py``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE message (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
    payload BLOB NOT NULL, device TEXT, seq INTEGER, size INTEGER NOT NULL);
CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
PAYLOAD = bytes(300)  # a 10-value pack is 250-350 bytes in CBOR


def _db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def _append(db: sqlite3.Connection, n: int) -> list[int]:
    db.execute("BEGIN IMMEDIATE")
    ids = [
        db.execute(
            "INSERT INTO message (topic, payload, device, seq, size) VALUES (?, ?, ?, ?, ?)",
            ("polekit/v1/gw/data/x", PAYLOAD, "x", 1, 320),
        ).lastrowid
        for _ in range(n)
    ]
    db.execute("COMMIT")
    return [i for i in ids if i is not None]


def run_case(folder: Path, way: str, sync: str, per_ack: int, acks: int) -> tuple[float, float]:
    """(median us per ack transaction, median ms per fsync'ed append commit)."""
    path = folder / f"{way}-{sync}-{per_ack}.sqlite3"
    db = _db(path)
    ack_us: list[float] = []
    append_ms: list[float] = []
    ids = _append(db, per_ack * acks)
    for k in range(acks):
        batch = ids[k * per_ack : (k + 1) * per_ack]
        t0 = time.perf_counter()
        db.execute(f"PRAGMA synchronous={sync}")
        db.execute("BEGIN IMMEDIATE")
        if way == "delete":
            marks = ",".join("?" * len(batch))
            db.execute(f"DELETE FROM message WHERE id IN ({marks})", batch)
        else:
            db.execute("INSERT OR REPLACE INTO counter VALUES ('acked', ?)", (batch[-1],))
        db.execute("COMMIT")
        db.execute("PRAGMA synchronous=FULL")
        ack_us.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        _append(db, 1)  # a poll between acknowledgements: what the disk costs it now
        append_ms.append((time.perf_counter() - t0) * 1e3)
    db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return statistics.median(ack_us), statistics.median(append_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="folder on the disk to measure")
    parser.add_argument("--acks", type=int, default=300, help="acknowledgements per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as t:
        print(f"{'way':16} {'msgs/ack':>8} {'us/ack':>9} {'append ms':>10}")
        for per_ack in (1, 20):
            for way, sync in (
                ("delete", "FULL"),
                ("delete", "NORMAL"),
                ("mark", "FULL"),
                ("mark", "NORMAL"),
            ):
                us, ms = run_case(Path(t), way, sync, per_ack, args.acks)
                print(f"{way + ', ' + sync:16} {per_ack:8} {us:9.0f} {ms:10.2f}")


if __name__ == "__main__":
    main()
