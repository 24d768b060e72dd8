"""The RS-485 link for updates: the gateway's client of the node's Modbus transfer window
(docs/protocols.md, "OTA over Modbus"; the registers and codes are protocols/ota.py).

Every transaction goes through the bus's own task (``ModbusBus.request``), between its
polls, with the line's t3.5 gaps: the update shares the line with the polling instead of
taking the port away from it. While a transfer runs, every device on that bus is polled
at most every ``poll_interval_s`` ([ota] poll_interval): the stated reduced rate; the
transfer takes the rest of the line. One transfer at a time per bus is the rollout's rule
(rollout.py), so a transfer's chunks never queue behind another's.

A chunk whose answer is lost is sent again (the node answers a repeat as taken and does
not write it twice); a chunk the node refuses as out of place (exception 3) makes the
client read ``need`` and go on from there; "busy" (exception 6: the node is checking a
signature or hashing its files) is waited out. A node that a few tries in a row do not
reach is reported lost, and the rollout's next push resumes where the node stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.exceptions import ConnectionException

from polekit.gateway.config import DeviceConfig
from polekit.gateway.ota.transport import LinkLost, NodeRefused, NodeUpdate, Progress, Pushed
from polekit.gateway.sources.modbus_bus import DeviceNoResponse, DeviceRefused, ModbusBus
from polekit.protocols import ota

log = logging.getLogger("polekit.gateway.ota.modbus")

TRIES = 6  # a transaction that gets no answer is sent this many times in all
BUSY_WAIT_S = 1.0  # between status reads while the node checks or hashes (each costs it heap)
CHECK_TIMEOUT_S = 600.0  # the node's signature check (pure Ed25519 on the chip: seconds)
VERIFY_TIMEOUT_S = 600.0  # every file's SHA-256 read back from the flash at commit
BACK_TIMEOUT_S = 120.0  # a node that restarted mid-transfer: to answer again
RESUMES = 5  # restarts of the node in a row without a byte gained before the push fails
ILLEGAL_DATA_VALUE = 3
SERVER_BUSY = 6


@dataclass
class _Tally:
    """One push's count: bytes it put on the line, and whether the node took any since
    the last resume (a node that restarts again and again gaining nothing ends it)."""

    sent: int = 0
    gained: bool = False


class ModbusTransport:
    """Updates the Modbus devices of the gateway's config (``devices``: code -> its
    config and the bus it is on). ``poll_interval_s``: the polling floor on a bus while
    it carries a transfer. ``clock`` is monotonic seconds (tests)."""

    def __init__(
        self,
        devices: dict[str, tuple[DeviceConfig, ModbusBus]],
        poll_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.devices = devices
        self.poll_interval_s = poll_interval_s
        self.clock = clock

    def line_of(self, device: str) -> str:
        return f"bus:{self.devices[device][1].config.name}"

    async def _call(self, device: str, call: Callable[[Any], Any], what: str) -> Any:
        # one transaction with the tries a noisy line needs; busy answers waited out
        dev, bus = self.devices[device]
        last: Exception | None = None
        for _ in range(TRIES):
            try:
                return await bus.request(call, f"{dev.code} {what}")
            except DeviceNoResponse as exc:
                last = exc
            except DeviceRefused as exc:
                if exc.code != SERVER_BUSY:
                    raise
                last = exc
                await asyncio.sleep(BUSY_WAIT_S)
            except (ConnectionException, OSError) as exc:  # the port went away: reopening
                last = exc
                await asyncio.sleep(1.0)
        raise LinkLost(f"{dev.code} does not answer ({what}): {last}")

    async def _status(self, device: str) -> dict[str, Any]:
        dev = self.devices[device][0]
        rr = await self._call(
            device,
            lambda c: c.read_holding_registers(
                ota.WINDOW_STATUS, count=ota.STATUS_REGS, device_id=dev.unit
            ),
            "OTA status",
        )
        if len(rr.registers) != ota.STATUS_REGS:
            raise LinkLost(f"{dev.code}: OTA status of {len(rr.registers)} registers")
        status: dict[str, Any] = ota.decode_status(list(rr.registers))
        return status

    async def status(self, device: str) -> NodeUpdate:
        try:
            s = await self._status(device)
        except DeviceRefused as exc:  # no transfer window: firmware from before updates
            raise LinkLost(f"{device} has no OTA window (firmware too old?): {exc}") from None
        return NodeUpdate(
            running=s["running"],
            previous=s["previous"],
            state=s["state"],
            error=s["error"],
            rollback=s["rollback"],
        )

    async def _command(self, device: str, code: int, *args: int) -> None:
        dev = self.devices[device][0]
        regs = [code, *args]
        await self._call(
            device,
            lambda c: c.write_registers(ota.WINDOW_COMMAND, regs, device_id=dev.unit),
            f"OTA command {code}",
        )

    async def _write(self, device: str, file_index: int, offset: int, chunk: bytes) -> bool:
        # True when the node took it; False when it refused it as out of place (read
        # ``need`` and go on from there)
        dev = self.devices[device][0]
        regs = ota.data_registers(file_index, offset, chunk)
        try:
            await self._call(
                device,
                lambda c: c.write_registers(ota.WINDOW_DATA, regs, device_id=dev.unit),
                f"OTA data {file_index}:{offset}",
            )
        except DeviceRefused as exc:
            if exc.code == ILLEGAL_DATA_VALUE:
                return False
            if exc.code == 4:  # the flash refused the write: full
                s = await self._status(device)
                raise NodeRefused(s["error"] or 5, ota.error_text(s["error"] or 5)) from None
            raise
        return True

    async def _wait_leaving(
        self, device: str, states: tuple[int, ...], timeout_s: float
    ) -> dict[str, Any]:
        # read the status until the node's state is none of ``states``. The node may
        # restart meanwhile (it checks a signature in a boot of its own, with the heap to
        # itself): silence is waited out until the deadline, as the checking is
        deadline = self.clock() + timeout_s
        while True:
            try:
                s = await self._status(device)
            except LinkLost:
                if self.clock() > deadline:
                    raise
                continue
            if s["state_code"] not in states:
                return s
            if self.clock() > deadline:
                raise LinkLost(f"{device} stayed {s['state']} for {timeout_s:g} s")
            await asyncio.sleep(BUSY_WAIT_S)

    async def push(
        self,
        device: str,
        manifest: bytes,
        sig: bytes,
        files: list[bytes],
        progress: Progress,
    ) -> Pushed:
        bus = self.devices[device][1]
        bus.poll_floor_s = self.poll_interval_s
        log.info(
            "bus %s: update transfer to %s; its devices polled every %g s at most until it ends",
            bus.config.name,
            device,
            self.poll_interval_s,
        )
        try:
            return await self._push(device, manifest, sig, files, progress)
        except DeviceRefused as exc:
            raise LinkLost(f"{device} refused a transfer step: {exc}") from None
        finally:
            bus.poll_floor_s = 0.0

    async def _push(
        self,
        device: str,
        manifest: bytes,
        sig: bytes,
        files: list[bytes],
        progress: Progress,
    ) -> Pushed:
        # a node that restarts mid-transfer (a power cut, a watchdog) keeps its staging:
        # once it answers again it is sent the header and BEGIN again and goes on from
        # its ``need``; RESUMES restarts in a row without a byte gained end the push
        resumed_at, fruitless = -1, 0
        tally = _Tally()  # this push's own (pushes on other buses run at the same time)
        while True:
            try:
                need, chunk_bytes = await self._begin(device, sig + manifest)
            except LinkLost:
                fruitless += 1
                if fruitless > RESUMES:
                    raise
                await self._until_back(device)
                continue
            held = self._held(need, files)
            if resumed_at < 0:
                resumed_at = held
            progress(held, sum(len(f) for f in files), tally.sent)
            try:
                await self._send(device, files, need, chunk_bytes, progress, tally)
                break
            except LinkLost as exc:
                log.info("%s: %s; resuming when it answers again", device, exc)
                fruitless = 0 if tally.gained else fruitless + 1
                if fruitless > RESUMES:
                    raise
                await self._until_back(device)
        await self._command(device, ota.CMD_COMMIT)
        deadline = self.clock() + VERIFY_TIMEOUT_S
        try:
            s = await self._status(device)
            while s["state_code"] in (ota.RECEIVING, ota.VERIFYING):
                if self.clock() > deadline:
                    raise LinkLost(f"{device} stayed {s['state']} for {VERIFY_TIMEOUT_S:g} s")
                await asyncio.sleep(BUSY_WAIT_S)
                s = await self._status(device)
        except LinkLost:  # it reset into the new version: the rollout waits for its trial
            return Pushed(tally.sent, resumed_at)
        if s["state_code"] == ota.REFUSED:
            raise NodeRefused(s["error"], ota.error_text(s["error"]))
        return Pushed(tally.sent, resumed_at)

    async def _until_back(self, device: str) -> None:
        # wait (BACK_TIMEOUT_S at most) for a node that went silent to answer again
        deadline = self.clock() + BACK_TIMEOUT_S
        while True:
            try:
                await self._status(device)
                return
            except LinkLost:
                if self.clock() > deadline:
                    raise

    async def _begin(self, device: str, header: bytes) -> tuple[tuple[int, int] | None, int]:
        # the header (signature, then manifest) and BEGIN; the node's ``need`` and chunk
        await self._command(device, ota.CMD_OPEN, len(header) >> 16, len(header) & 0xFFFF)
        for offset in range(0, len(header), ota.CHUNK_BYTES):
            part = header[offset : offset + ota.CHUNK_BYTES]
            if not await self._write(device, ota.HEADER_FILE, offset, part):
                raise LinkLost(f"{device} refused the header at byte {offset}")
        await self._command(device, ota.CMD_BEGIN)
        s = await self._wait_leaving(device, (ota.HEADER, ota.CHECKING), CHECK_TIMEOUT_S)
        if s["state_code"] == ota.REFUSED:
            raise NodeRefused(s["error"], ota.error_text(s["error"]))
        if s["state_code"] != ota.RECEIVING:  # it gave up on its own (see its log)
            raise LinkLost(f"{device} went {s['state']} instead of receiving the files")
        return s["need"], min(s["chunk"] or ota.CHUNK_BYTES, ota.CHUNK_BYTES)

    async def _send(
        self,
        device: str,
        files: list[bytes],
        need: tuple[int, int] | None,
        chunk_bytes: int,
        progress: Progress,
        tally: _Tally,
    ) -> None:
        # every file from ``need`` on, until the node says it holds them all; what it
        # took is counted in ``tally`` as it goes (a link lost midway loses no count)
        starts = [sum(len(f) for f in files[:i]) for i in range(len(files))]
        total = sum(len(f) for f in files)
        tally.gained = False
        while True:
            while need is not None:
                index, offset = need
                if index >= len(files):
                    raise LinkLost(f"{device} asks for file {index}; the bundle has {len(files)}")
                part = files[index][offset : offset + chunk_bytes]
                if part and await self._write(device, index, offset, part):
                    tally.sent += len(part)
                    tally.gained = True
                    offset += len(part)
                    if offset < len(files[index]):
                        need = (index, offset)
                    else:  # a file's end: the node may hold the next ones already (it copies
                        # the files its running version has unchanged), so it says what next
                        need = await self._need(device)
                    at = starts[need[0]] + need[1] if need and need[0] < len(files) else total
                    progress(at, total, tally.sent)
                else:  # out of place (or an empty file): where does the node stand?
                    need = await self._need(device)
            need = await self._need(device)  # every byte sent: the node's own word on it
            if need is None:
                return

    async def _need(self, device: str) -> tuple[int, int] | None:
        s = await self._status(device)
        if s["state_code"] != ota.RECEIVING:
            raise LinkLost(f"{device} went {s['state']} while receiving the files")
        need: tuple[int, int] | None = s["need"]
        return need

    @staticmethod
    def _held(need: tuple[int, int] | None, files: list[bytes]) -> int:
        # bytes of the files the node already holds, from its ``need``
        if need is None:
            return sum(len(f) for f in files)
        index, offset = need
        return sum(len(f) for f in files[:index]) + offset
