"""The last accepted BTHome counter of each encrypted BLE device, kept on disk so that a
restarted gateway still refuses adverts it has already accepted (a captured advert played
back, or the node's own repeats of its last advert still on the air).

One small table, ``ble_counter``, in the queue's SQLite file (one file to back up, one
folder to protect), written through this module's own connection and its own writer
thread: the queue's writer is not involved, and WAL lets the two connections share the
file (each waits up to ``BUSY_TIMEOUT_S`` for the other's transaction). The row is keyed
by the device's address and a fingerprint of its bind key, so a device given a new key
starts counting afresh.

Contract: ``save`` returns once the counter is committed with ``synchronous=FULL`` (on
disk, through a power cut). The BLE source awaits it before the advert's reading or event
goes to the queue, so a restart never accepts an advert twice. The window that remains is
the other way round: a kill -9 or power cut after the counter's commit and before the
reading's loses that one advert (its repeats are then refused as replays); it is one small
commit long (about a millisecond on an SSD, tens on an SD card). No batching: one commit
per accepted encrypted advert, which the BLE source makes one at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ble_counter (
    address TEXT NOT NULL,
    key_id TEXT NOT NULL,
    counter INTEGER NOT NULL,
    PRIMARY KEY (address, key_id)
)
"""


def key_id(bindkey: bytes) -> str:
    """A fingerprint of a bind key that does not reveal it (the row's key, not a secret)."""
    return hashlib.sha256(b"polekit ble counter\0" + bindkey).hexdigest()[:16]


class BleCounterStore:
    """The counters in ``path`` (the queue's database file, which the queue created with
    its file mode). Owns its connection and writer thread: call ``close()``. Raises
    sqlite3.Error or OSError when the file cannot be opened."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ble-counters")

    def load(self, address: str, bindkey: bytes) -> int:
        """The last counter accepted from ``address`` under ``bindkey``; -1 if none."""
        row = self._db.execute(
            "SELECT counter FROM ble_counter WHERE address = ? AND key_id = ?",
            (address.upper(), key_id(bindkey)),
        ).fetchone()
        return int(row[0]) if row else -1

    async def save(self, address: str, bindkey: bytes, counter: int) -> None:
        """Commit ``counter`` as the last accepted from ``address``; returns once it is on
        disk. Raises sqlite3.Error (a full disk, a broken file) when it is not."""
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._save, address.upper(), key_id(bindkey), counter
        )

    def _save(self, address: str, kid: str, counter: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO ble_counter (address, key_id, counter) VALUES (?, ?, ?)",
            (address, kid, counter),
        )

    def close(self) -> None:
        """Finish the write under way and close the connection."""
        self._executor.shutdown(wait=True)
        self._db.close()
