"""Rollouts and each device's progress, kept in the gateway's SQLite file so that a
gateway restarted mid-rollout carries on where it stopped, and ``polekit ota status``
reads them whether the gateway runs or not.

Two tables in the queue's database file (one file to back up and protect, as the BLE
counters, gateway/ble_counters.py): ``ota_rollout`` (one row per rollout: the bundle's
folder under ``data_dir/ota``, version, batch size, state) and ``ota_device`` (one row per
device of a rollout: its stage, state, bytes, versions before and after, times, result).
The gateway writes through this module's own connection and writer thread (never on the
event loop); ``polekit ota push`` adds a rollout through a connection of its own, as
``pending``, and the gateway takes it up. WAL lets them share the file.

States. Rollout: pending -> running -> done | stopped. Device: waiting -> sending ->
installing -> finished (``result`` says how: updated, already, rolled_back, refused,
failed, skipped).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_S = 5.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ota_rollout (
        id INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        bundle_dir TEXT NOT NULL,
        source TEXT NOT NULL,
        board TEXT NOT NULL,
        version TEXT NOT NULL,
        bundle_bytes INTEGER NOT NULL,
        batch_size INTEGER NOT NULL,
        origin TEXT NOT NULL,
        created REAL NOT NULL,
        finished REAL,
        reason TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS ota_device (
        rollout INTEGER NOT NULL,
        device TEXT NOT NULL,
        position INTEGER NOT NULL,
        stage INTEGER NOT NULL,
        state TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        total INTEGER NOT NULL,
        sent INTEGER NOT NULL,
        version_before TEXT,
        version_after TEXT,
        started REAL,
        finished REAL,
        result TEXT,
        reason TEXT,
        PRIMARY KEY (rollout, device)
    )""",
)

ACTIVE = ("pending", "running")
SUCCESS = ("updated", "already")  # results that let a rollout go on


@dataclass
class DeviceRow:
    """One device of a rollout. ``bytes``: of the bundle's files the node holds (after
    the last progress saved); ``sent``: file bytes the node took from this gateway in all
    (a transfer resumed after a restart adds only the rest; resends of a lost answer are
    not counted); ``started``/``finished``: wall clock."""

    rollout: int
    device: str
    position: int
    stage: int
    state: str = "waiting"
    bytes: int = 0
    total: int = 0
    sent: int = 0
    version_before: str | None = None
    version_after: str | None = None
    started: float | None = None
    finished: float | None = None
    result: str | None = None
    reason: str | None = None

    def report(self) -> dict[str, Any]:
        """The per-device report the platform and the field tool get."""
        duration = (
            round(self.finished - self.started, 1)
            if self.finished is not None and self.started is not None
            else None
        )
        return {
            "device": self.device,
            "stage": self.stage,
            "result": self.result,
            "version_before": self.version_before,
            "version_after": self.version_after,
            "duration_s": duration,
            "bytes": self.sent,
            "reason": self.reason,
        }


@dataclass
class RolloutRow:
    """One rollout: the verified bundle's copy in ``bundle_dir``, where it came from
    (``source``: a folder or URL), who asked (``origin``: cli, or the platform's command
    id), its state and, once it stopped, why."""

    id: int
    state: str
    bundle_dir: str
    source: str
    board: str
    version: str
    bundle_bytes: int
    batch_size: int
    origin: str
    created: float
    finished: float | None = None
    reason: str | None = None
    devices: list[DeviceRow] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The rollout as /health, events and the field tool show it."""
        return {
            "rollout": self.id,
            "state": self.state,
            "version": self.version,
            "board": self.board,
            "source": self.source,
            "batch_size": self.batch_size,
            "stages": 1 + max((d.stage for d in self.devices), default=0),
            "reason": self.reason,
            "devices": [
                {**d.report(), "state": d.state, "have": d.bytes, "total": d.total}
                for d in self.devices
            ],
        }


def plan_stages(devices: list[str], batch_size: int) -> list[list[str]]:
    """One canary (the first device), then batches of ``batch_size`` in the given order."""
    if not devices:
        return []
    rest = devices[1:]
    return [[devices[0]]] + [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]


_ROLLOUT_COLS = [f.name for f in fields(RolloutRow) if f.name != "devices"]
_DEVICE_COLS = [f.name for f in fields(DeviceRow)]


def _open(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        return db
    db = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            db.execute(statement)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _load(db: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[RolloutRow]:
    try:
        rows = db.execute(
            f"SELECT {', '.join(_ROLLOUT_COLS)} FROM ota_rollout {where}", args
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # a gateway that never had a rollout
        raise
    out = []
    for row in rows:
        rollout = RolloutRow(*row)
        rollout.devices = [
            DeviceRow(*d)
            for d in db.execute(
                f"SELECT {', '.join(_DEVICE_COLS)} FROM ota_device WHERE rollout = ? "
                "ORDER BY position",
                (rollout.id,),
            )
        ]
        out.append(rollout)
    return out


def insert_rollout(db: sqlite3.Connection, rollout: RolloutRow, devices: list[str]) -> RolloutRow:
    """Add ``rollout`` (its id is given by the database) and its devices, staged; in one
    transaction, refused (ValueError) while another rollout is pending or running."""
    db.execute("BEGIN IMMEDIATE")
    try:
        busy = db.execute(
            "SELECT id, state FROM ota_rollout WHERE state IN (?, ?)", ACTIVE
        ).fetchone()
        if busy is not None:
            raise ValueError(
                f"rollout {busy[0]} is {busy[1]}: one rollout at a time; wait for it "
                "(polekit ota status) or let it stop"
            )
        cols = [c for c in _ROLLOUT_COLS if c != "id"]
        cur = db.execute(
            f"INSERT INTO ota_rollout ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [getattr(rollout, c) for c in cols],
        )
        rollout = replace(rollout, id=int(cur.lastrowid or 0), devices=[])
        for stage, batch in enumerate(plan_stages(devices, rollout.batch_size)):
            for device in batch:
                row = DeviceRow(rollout.id, device, len(rollout.devices), stage)
                rollout.devices.append(row)
                db.execute(
                    f"INSERT INTO ota_device ({', '.join(_DEVICE_COLS)}) "
                    f"VALUES ({', '.join('?' * len(_DEVICE_COLS))})",
                    [getattr(row, c) for c in _DEVICE_COLS],
                )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return rollout


class RolloutStore:
    """The gateway's side: its own connection to ``path`` (the queue's file) and one
    writer thread. Raises sqlite3.Error or OSError when the file cannot be opened; call
    ``close()``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = _open(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ota-store")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def active(self) -> RolloutRow | None:
        """The rollout running (or else the oldest pending one), with its devices."""
        found = await self._run(
            _load,
            self._db,
            "WHERE state IN (?, ?) ORDER BY state = 'pending', id LIMIT 1",
            ACTIVE,
        )
        return found[0] if found else None

    async def add(self, rollout: RolloutRow, devices: list[str]) -> RolloutRow:
        """Insert a new rollout (see ``insert_rollout``)."""
        result: RolloutRow = await self._run(insert_rollout, self._db, rollout, devices)
        return result

    async def save_rollout(self, rollout: RolloutRow) -> None:
        """Write the rollout's state, end time and reason."""
        await self._run(
            self._exec,
            "UPDATE ota_rollout SET state = ?, finished = ?, reason = ? WHERE id = ?",
            (rollout.state, rollout.finished, rollout.reason, rollout.id),
        )

    async def save_device(self, row: DeviceRow) -> None:
        """Write one device's row as it is now."""
        cols = [c for c in _DEVICE_COLS if c not in ("rollout", "device")]
        await self._run(
            self._exec,
            f"UPDATE ota_device SET {', '.join(f'{c} = ?' for c in cols)} "
            "WHERE rollout = ? AND device = ?",
            (*[getattr(row, c) for c in cols], row.rollout, row.device),
        )

    def _exec(self, sql: str, args: tuple[Any, ...]) -> None:
        self._db.execute(sql, args)

    def close(self) -> None:
        """Finish the write under way and close the connection."""
        self._executor.shutdown(wait=True)
        self._db.close()


def read_rollouts(path: Path, limit: int = 5) -> list[RolloutRow]:
    """The newest ``limit`` rollouts in the database at ``path``, newest first, read-only
    (the field tool, with or without the gateway running). Raises sqlite3.Error."""
    db = _open(path, readonly=True)
    try:
        return _load(db, "ORDER BY id DESC LIMIT ?", (limit,))
    finally:
        db.close()


def read_rollout(path: Path, rollout_id: int) -> RolloutRow | None:
    """One rollout by its id, read-only; None when there is no such rollout."""
    db = _open(path, readonly=True)
    try:
        found = _load(db, "WHERE id = ?", (rollout_id,))
        return found[0] if found else None
    finally:
        db.close()


def submit_rollout(path: Path, rollout: RolloutRow, devices: list[str]) -> RolloutRow:
    """Add a pending rollout from another process (``polekit ota push``): the gateway
    takes it up within a second. Raises ValueError while one is active, sqlite3.Error."""
    db = _open(path)
    try:
        return insert_rollout(db, rollout, devices)
    finally:
        db.close()
