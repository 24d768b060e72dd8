"""The rollout: one verified bundle to a list of nodes, in stages.

Stage 0 is one canary (the first device named); then batches of ``batch_size``. Within a
stage the transfers run one at a time per shared medium (an RS-485 bus: ``line_of``) and
in parallel across media; a node that took its bundle restarts on the new version and has
``trial_wait_s`` to come back and confirm it while the next transfer on its bus goes on.
The next stage starts when every node of this one has finished. A node that fails (no
answer, refused, or back on its old version after a rollback) stops the rollout: no new
transfer starts, the ones under way finish, the nodes not reached are reported
``skipped``.

Every step is written to the database (store.py) before it is acted on, so a gateway
restarted mid-rollout takes it up again: a node cut off mid-transfer is pushed again
(the node resumes from what it staged), one that was installing is waited for.

Events (through every platform adapter, like an alarm): ``ota_progress`` on a device
(state changes and each quarter of its transfer), ``ota_result`` on a device (its report:
versions before and after, duration, bytes, result, reason) and ``ota_rollout`` on the
gateway's own code when a rollout starts and when it ends (with every device's report).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from polekit.gateway.ota.bundle import Bundle, BundleError, load_bundle_async, load_public_key
from polekit.gateway.ota.settings import OtaConfig
from polekit.gateway.ota.store import SUCCESS, DeviceRow, RolloutRow, RolloutStore
from polekit.gateway.ota.transport import (
    NodeRefused,
    Transport,
    UpdateError,
    rollback_text,
)

log = logging.getLogger("polekit.gateway.ota")

STATUS_EVERY_S = 1.0  # how often a node on trial is asked how it is doing
PICKUP_EVERY_S = 1.0  # how often the database is looked at for a rollout the CLI added
SAVE_EVERY_S = 1.0  # a transfer's progress is written at most this often
STATUS_TRIES = 3  # a node's status read before its transfer: tries before it is failed

# device code, event body -> None (the gateway's event path: every platform's queue)
EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]


class RolloutRefused(ValueError):  # noqa: N818 - says what happened
    """A rollout cannot start: an unknown device, no key, a bundle refused, one already
    running. The message is the command's error result and the field tool's line."""


def check_devices(devices: list[str], known: dict[str, Any]) -> list[str]:
    """``devices`` in order, each once; RolloutRefused naming any this gateway lacks."""
    if not devices:
        raise RolloutRefused("name the devices to update")
    unknown = [d for d in devices if d not in known]
    if unknown:
        raise RolloutRefused(
            f"no device {', '.join(unknown)} on this gateway (its config has "
            f"{', '.join(known) or 'none that can be updated'})"
        )
    return list(dict.fromkeys(devices))


def new_rollout(
    bundle: Bundle, source: str, batch_size: int, origin: str, wall: float
) -> RolloutRow:
    """A pending rollout of ``bundle`` (its id comes from the database)."""
    return RolloutRow(
        id=0,
        state="pending",
        bundle_dir=str(bundle.folder),
        source=source,
        board=bundle.board,
        version=bundle.version,
        bundle_bytes=bundle.size,
        batch_size=batch_size,
        origin=origin,
        created=wall,
    )


class RolloutRunner:
    """Runs the rollouts of one gateway, one at a time (``run()`` is its task).

    ``transports``: device code -> the link that reaches it; ``publish``: the gateway's
    event path; ``store_dir``: where verified bundles are kept (``data_dir/ota``).
    ``clock`` (monotonic) and ``wall`` (epoch) are injected for tests."""

    def __init__(
        self,
        settings: OtaConfig,
        store: RolloutStore,
        transports: dict[str, Transport],
        publish: EventSink,
        gateway_code: str,
        store_dir: Path,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.transports = transports
        self.publish = publish
        self.gateway_code = gateway_code
        self.store_dir = store_dir
        self.clock = clock
        self.wall = wall
        self.current: RolloutRow | None = None
        self.last: RolloutRow | None = None  # the last rollout that ended in this run
        self._wake = asyncio.Event()
        self._lines: dict[str, asyncio.Lock] = {}
        self._busy_lines: set[str] = set()
        self._stop_reason: str | None = None
        self._bundle: Bundle | None = None
        self._key: bytes | None = None
        self._saved_at: dict[str, float] = {}
        self._quarters: dict[str, int] = {}
        self._saving: set[asyncio.Task[None]] = set()

    # ---- starting ---------------------------------------------------------------------

    async def start(
        self, source: str, devices: list[str], batch_size: int | None, origin: str
    ) -> RolloutRow:
        """Verify the bundle at ``source`` and queue a rollout of it to ``devices`` (the
        platform's ``ota`` command); RolloutRefused says why it cannot be."""
        devices = check_devices(devices, self.transports)
        try:
            key = load_public_key(self.settings.public_key)
            bundle = await load_bundle_async(
                source,
                key,
                self.store_dir,
                self.settings.max_bundle_bytes,
                self.settings.fetch_timeout_s,
            )
        except BundleError as exc:
            raise RolloutRefused(str(exc)) from None
        row = new_rollout(
            bundle, source, batch_size or self.settings.batch_size, origin, self.wall()
        )
        try:
            row = await self.store.add(row, devices)
        except ValueError as exc:  # another rollout is active
            raise RolloutRefused(str(exc)) from None
        self._wake.set()
        log.info(
            "rollout %d: %s %s to %d device(s) queued (%s)",
            row.id,
            row.board,
            row.version,
            len(devices),
            origin,
        )
        return row

    # ---- the task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Take up the rollout the database holds (one the gateway was running when it
        stopped, or one ``polekit ota push`` added), run it, and wait for the next."""
        while True:
            rollout = await self.store.active()
            if rollout is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), PICKUP_EVERY_S)
                except TimeoutError:
                    pass
                continue
            await self._execute(rollout)

    async def _execute(self, rollout: RolloutRow) -> None:
        self.current = rollout
        self._stop_reason = None
        resumed = rollout.state == "running"
        try:
            self._key = load_public_key(self.settings.public_key)
            # the gateway checks the bundle itself, whoever queued it and however long ago
            self._bundle = await load_bundle_async(
                rollout.bundle_dir, self._key, self.store_dir, self.settings.max_bundle_bytes
            )
            if self._bundle.version != rollout.version:
                raise BundleError(f"the bundle in {rollout.bundle_dir} is not the one queued")
        except BundleError as exc:
            log.error("rollout %d refused: %s", rollout.id, exc)
            await self._finish(rollout, "stopped", str(exc))
            return
        rollout.state = "running"
        await self.store.save_rollout(rollout)
        log.info(
            "rollout %d %s: %s %s, %d bytes, to %d device(s) in %d stage(s)",
            rollout.id,
            "resumed" if resumed else "started",
            rollout.board,
            rollout.version,
            rollout.bundle_bytes,
            len(rollout.devices),
            rollout.summary()["stages"],
        )
        await self._event(self.gateway_code, "ota_rollout", rollout.summary())
        stages: dict[int, list[DeviceRow]] = {}
        for row in rollout.devices:
            stages.setdefault(row.stage, []).append(row)
        for stage in sorted(stages):
            todo = [r for r in stages[stage] if r.state != "finished"]
            if todo:
                await self._run_stage(stage, todo)
            failed = [r for r in stages[stage] if r.result not in SUCCESS]
            if failed and self._stop_reason is None:
                f = failed[0]
                self._stop_reason = f"{f.device}: {f.result}: {f.reason}"
            if self._stop_reason is not None:
                break
        if self._stop_reason is not None:
            await self._finish(rollout, "stopped", self._stop_reason)
        else:
            await self._finish(rollout, "done", None)

    async def _finish(self, rollout: RolloutRow, state: str, reason: str | None) -> None:
        for row in rollout.devices:
            if row.state != "finished":
                why = f"rollout stopped: {reason}" if reason else "rollout stopped"
                await self._done(row, "skipped", why)
        rollout.state, rollout.reason, rollout.finished = state, reason, self.wall()
        await self.store.save_rollout(rollout)
        updated = sum(r.result in SUCCESS for r in rollout.devices)
        (log.info if state == "done" else log.error)(
            "rollout %d %s: %d of %d device(s) on %s%s",
            rollout.id,
            state,
            updated,
            len(rollout.devices),
            rollout.version,
            f"; {reason}" if reason else "",
        )
        await self._event(self.gateway_code, "ota_rollout", rollout.summary())
        self.last, self.current = rollout, None

    # ---- one stage --------------------------------------------------------------------

    async def _run_stage(self, stage: int, rows: list[DeviceRow]) -> None:
        by_line: dict[str, list[DeviceRow]] = {}
        for row in rows:
            by_line.setdefault(self.transports[row.device].line_of(row.device), []).append(row)
        trials: list[asyncio.Task[None]] = []

        async def line_task(line: str, queue: list[DeviceRow]) -> None:
            lock = self._lines.setdefault(line, asyncio.Lock())
            for row in queue:
                if self._stop_reason is not None:
                    return  # stopping: no new transfer; the report says skipped
                async with lock:
                    self._busy_lines.add(line)
                    try:
                        took = await self._deliver(row)
                    finally:
                        self._busy_lines.discard(line)
                if took:
                    trials.append(asyncio.create_task(self._await_trial(row)))

        await asyncio.gather(*(line_task(n, q) for n, q in by_line.items()))
        await asyncio.gather(*trials)
        log.info("rollout stage %d finished", stage)

    async def _deliver(self, row: DeviceRow) -> bool:
        """Push the bundle to one node; True when it took it and is installing."""
        bundle, key = self._bundle, self._key
        assert bundle is not None and key is not None
        if row.state == "installing":  # it took it before the gateway restarted
            return True
        transport = self.transports[row.device]
        status = None
        for attempt in range(1, STATUS_TRIES + 1):
            try:
                status = await transport.status(row.device)
                break
            except UpdateError as exc:
                if attempt == STATUS_TRIES:
                    await self._done(row, "failed", f"no status before the transfer: {exc}")
                    return False
        assert status is not None
        if row.version_before is None:
            row.version_before = status.running
        if status.running == bundle.version:
            if row.version_before != bundle.version:  # took it before a restart of ours
                row.state = "installing"
                await self.store.save_device(row)
                return True
            row.version_after = status.running
            await self._done(row, "already", f"already runs {bundle.version}")
            return False
        try:
            bundle.check_for(key, status.running)
        except BundleError as exc:
            await self._done(row, "refused", f"{exc} (the node runs {status.running})")
            return False
        row.state = "sending"
        if row.started is None:
            row.started = self.wall()
        row.total = bundle.size
        base = row.sent  # sent by an earlier push to this node (a restarted gateway)
        await self.store.save_device(row)
        await self._progress_event(row)
        try:
            pushed = await transport.push(
                row.device,
                bundle.manifest,
                bundle.sig,
                bundle.files,
                lambda have, total, sent=None: self._on_progress(row, have, total, sent, base),
            )
        except NodeRefused as exc:
            await self._done(row, "refused", str(exc))
            return False
        except UpdateError as exc:
            await self._done(row, "failed", f"transfer: {exc}")
            return False
        row.bytes = row.total
        row.state = "installing"
        await self.store.save_device(row)
        await self._progress_event(row)
        log.info(
            "%s: bundle delivered (%d bytes sent, %d held from before); installing",
            row.device,
            pushed.sent,
            pushed.resumed_at,
        )
        return True

    async def _await_trial(self, row: DeviceRow) -> None:
        """Wait for a node that took the bundle to confirm the new version, or to come
        back on its old one (a rollback), for ``trial_wait_s`` at most."""
        bundle = self._bundle
        assert bundle is not None
        transport = self.transports[row.device]
        deadline = self.clock() + self.settings.trial_wait_s
        seen_down = False
        last = None
        while self.clock() < deadline:
            try:
                last = await transport.status(row.device)
            except UpdateError:
                seen_down = True  # restarting
                await asyncio.sleep(STATUS_EVERY_S)
                continue
            if last.running == bundle.version and not last.on_trial:
                row.version_after = last.running
                await self._done(row, "updated", None)
                return
            if (
                last.running != bundle.version
                and last.rollback
                and (seen_down or last.previous == bundle.version)
            ):
                row.version_after = last.running
                await self._done(row, "rolled_back", rollback_text(last.rollback))
                return
            if last.running != bundle.version and last.error:
                row.version_after = last.running
                await self._done(
                    row, "refused", f"the node refused the install (code {last.error})"
                )
                return
            await asyncio.sleep(STATUS_EVERY_S)
        row.version_after = last.running if last is not None else None
        why = (
            "no answer"
            if last is None
            else f"still on trial on {last.running}"
            if last.on_trial
            else f"runs {last.running}"
        )
        await self._done(
            row,
            "failed",
            f"did not confirm {bundle.version} within {self.settings.trial_wait_s:g} s ({why})",
        )

    # ---- bookkeeping ------------------------------------------------------------------

    async def _done(self, row: DeviceRow, result: str, reason: str | None) -> None:
        row.state, row.result, row.reason = "finished", result, reason
        row.finished = self.wall()
        if row.started is None:
            row.started = row.finished
        await self.store.save_device(row)
        level = logging.INFO if result in SUCCESS else logging.ERROR
        log.log(level, "%s: %s%s", row.device, result, f": {reason}" if reason else "")
        await self._event(row.device, "ota_result", {"rollout": row.rollout, **row.report()})

    def _on_progress(
        self, row: DeviceRow, have: int, total: int, sent: int | None = None, base: int = 0
    ) -> None:
        # called by the transport as chunks are taken: memory at once, the database and
        # the platforms now and then (each quarter of the way). ``sent``: the bytes this
        # push put on the link, after ``base`` sent by earlier pushes (a gateway restarted
        # mid-transfer); a transport without it: what the node gained was sent to it
        if sent is not None:
            row.sent = base + sent
        elif have > row.bytes:
            row.sent += have - row.bytes
        row.bytes, row.total = have, total
        now = self.clock()
        if now - self._saved_at.get(row.device, 0.0) >= SAVE_EVERY_S:
            self._saved_at[row.device] = now
            self._spawn(self.store.save_device(row))
        quarter = 4 * have // total if total else 4
        if quarter > self._quarters.get(row.device, 0) and quarter < 4:
            self._quarters[row.device] = quarter
            self._spawn(self._progress_event(row))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def _progress_event(self, row: DeviceRow) -> None:
        await self._event(
            row.device,
            "ota_progress",
            {
                "rollout": row.rollout,
                "stage": row.stage,
                "state": row.state,
                "have": row.bytes,
                "total": row.total,
            },
        )

    async def _event(self, device: str, name: str, value: dict[str, Any]) -> None:
        await self.publish(device, {"event": name, "value": value, "t": self.wall()})

    def health(self) -> dict[str, Any]:
        """The rollout in progress (None when none) and the last one that ended, for
        /health and ``polekit gateway status``; the buses carrying a transfer now."""
        return {
            "rollout": None if self.current is None else self.current.summary(),
            "last": None if self.last is None else self.last.summary(),
            "transferring_on": sorted(self._busy_lines),
            "poll_interval_during_transfer_s": self.settings.poll_interval_s,
        }
