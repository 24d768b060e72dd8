"""A signed bundle to a community node over its GATT service (protocols/ota_gatt.py has the
frames, docs/protocols.md the exchange): the gateway's side, on bleak.

``push_ble`` is what the rollout (gateway orchestration) calls per BLE device. It sends the
manifest and its signature, lets the node check them (the node resets to check the signature
in a boot of its own; the same header and BEGIN are sent again once it is back, and its
verdict answers: a refusal comes back with the node's reason code and text, before any file
byte moves), then the files from where the node says
it stands, ``WINDOW`` writes ahead of the node's acknowledgements. A dropped link or a node
that restarted is met by connecting again and asking where to go on (the node's staging is
on flash), up to ``attempts`` times in a row without progress. After the commit the node
resets; the gateway connects again and reads which version it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from polekit.gateway.config import BleConfig
from polekit.gateway.sources.modbus_bus import DeviceNoResponse
from polekit.protocols import bthome, cbor
from polekit.protocols import ota_gatt as og

log = logging.getLogger("polekit.gateway.ble_ota")
ANSWER_TIMEOUT_S = 10.0  # a control answer
BEGIN_TIMEOUT_S = 120.0  # the check boot (Ed25519 on the node): seconds on a chip
ACK_TIMEOUT_S = 5.0  # a data acknowledgement
COMMIT_TIMEOUT_S = 180.0  # hashes and install on the node, until its reset drops the link
BOOT_TIMEOUT_S = 60.0  # the node back on the air after its reset
TRIAL_POLL_S = 1.0  # how often a node on trial is asked how it goes (trial_wait_s)
CHECK_BOOTS = 2  # check boots for one bundle: one, and one more after a power cut in it
CHUNK_BYTES = og.MAX_WRITE - og.DATA_HEAD


class BleOtaError(Exception):
    """An update over BLE that did not complete."""


class OtaRefusedError(BleOtaError):
    """The node refused the bundle; ``code`` is its reason (protocols' ManifestError codes,
    5 too large, 8 a file's hash, 9 out of order) and the message its text."""

    def __init__(self, address: str, code: int | None, text: str) -> None:
        super().__init__(f"{address} refused the update: {text} (code {code})")
        self.address = address
        self.code = code
        self.text = text


class _DroppedError(Exception):
    """The link went down (or stopped answering) in the middle: connect again and resume."""


class _CheckBootError(Exception):
    """The node resets to check the signature in a boot of its own: connect again once it
    is back and send the same header; its verdict answers the next BEGIN."""


# (bytes the node holds of the files, bytes in all, file bytes written over the air by this
# push so far: resends included, the files the node copied from its own slot not)
Progress = Callable[[int, int, int], Any]


def _running(status: Mapping[str, Any]) -> Any:
    # the version the node runs, in its status map
    return status.get("running", status.get("version"))


class _Link:
    """One GATT connection to the node with its two notification streams."""

    def __init__(self, config: BleConfig, address: str) -> None:
        self.config = config
        self.address = address
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.acks: asyncio.Queue[tuple[int, int, int]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.client: Any = None
        self.written = 0  # file bytes written on this link

    async def __aenter__(self) -> _Link:
        self.client = await open_client_for(self.config, self.address, self._dropped)
        try:
            await self.client.start_notify(bthome.GATT % og.CONTROL, self._answer)
            await self.client.start_notify(bthome.GATT % og.DATA, self._ack)
        except BaseException:
            await self.client.disconnect()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None and not self.gone.is_set():
            try:
                await self.client.disconnect()
            except Exception as err:  # noqa: BLE001 - the link is going anyway; said in the log
                log.debug("%s: disconnect: %s", self.address, err)

    def _dropped(self, _client: Any) -> None:
        self.gone.set()

    def _answer(self, _char: Any, data: bytearray) -> None:
        try:
            answer = cbor.loads(bytes(data))
        except ValueError:
            log.info("%s: an unreadable OTA answer (%d bytes)", self.address, len(data))
            return
        if isinstance(answer, dict):
            self.answers.put_nowait(answer)

    def _ack(self, _char: Any, data: bytearray) -> None:
        try:
            self.acks.put_nowait(og.parse_ack(bytes(data)))
        except ValueError:
            log.info("%s: an unreadable OTA ack (%d bytes)", self.address, len(data))

    async def _next(self, queue: asyncio.Queue[Any], timeout_s: float, what: str) -> Any:
        if not queue.empty():
            return queue.get_nowait()
        get = asyncio.ensure_future(queue.get())
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            done, _ = await asyncio.wait(
                {get, gone}, timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            for task in (get, gone):
                if not task.done():
                    task.cancel()
        if get in done:
            return get.result()
        if gone in done:
            raise _DroppedError(f"{self.address}: the link dropped waiting for {what}")
        raise _DroppedError(f"{self.address}: no {what} in {timeout_s:.0f} s")

    async def _write(self, uuid_n: int, data: bytes) -> None:
        from bleak.exc import BleakError

        try:
            await self.client.write_gatt_char(bthome.GATT % uuid_n, data, response=True)
        except BleakError as exc:
            raise _DroppedError(f"{self.address}: write failed: {exc}") from None

    async def request(self, frame: bytes, timeout_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """Write one CONTROL request; its answer. OtaRefusedError when the node says no."""
        await self._write(og.CONTROL, frame)
        while True:
            answer = await self._next(self.answers, timeout_s, f"an answer to {frame[:1]!r}")
            if answer.get("op") == chr(frame[0]):
                break  # an older answer (a commit's failure, say) is not this one's
        if not answer.get("ok"):
            raise OtaRefusedError(self.address, answer.get("code"), str(answer.get("error")))
        return answer

    async def begin(self, manifest: bytes, sig: bytes) -> tuple[int, int] | None:
        await self.request(og.header(len(manifest), sig))
        for piece in og.manifest_pieces(manifest):
            await self.request(piece)
        answer = await self.request(bytes((og.OP_BEGIN,)), BEGIN_TIMEOUT_S)
        if answer.get("check"):  # it resets now: the link drops (then connect again)
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    await self.gone.wait()
            except TimeoutError:
                raise _DroppedError(f"{self.address}: no reset for its check boot") from None
            raise _CheckBootError(f"{self.address} checks the signature in a boot of its own")
        need = answer["need"]
        return None if need is None else (int(need[0]), int(need[1]))

    async def send(
        self, start: tuple[int, int], blobs: list[bytes], done: Callable[[int, int], None]
    ) -> None:
        """Files from ``start`` until the node has all; ``done(file, offset)`` at each ack.
        An ack that says the node wants another place than the byte after its frame (it
        has the next files already: copied from its running slot) moves the writes there.
        A file's last frame is acknowledged before the next file's first goes: the node may
        have that one (and frames sent ahead into it would cross the air for nothing)."""
        pos: tuple[int, int] | None = start
        inflight = 0
        rewind: tuple[int, int] | None = None
        ends: list[tuple[int, int] | None] = []  # where each frame in flight ends
        while True:
            while inflight < og.WINDOW and rewind is None and pos is not None:
                f, off = pos
                if inflight and off == 0:
                    break  # a new file: where the node wants to go on comes with the ack
                chunk = blobs[f][off : off + CHUNK_BYTES]
                await self._write(og.DATA, og.data_frame(f, off, chunk))
                self.written += len(chunk)
                inflight += 1
                pos = _after(blobs, f, off + len(chunk))
                ends.append(pos)
            if inflight == 0:  # everything sent and answered, and no DONE: ask again
                raise _DroppedError(f"{self.address}: the node did not confirm the last bytes")
            status, f, off = await self._next(self.acks, ACK_TIMEOUT_S, "a data ack")
            inflight -= 1
            end = ends.pop(0) if ends else None
            if status == og.ACK_DONE:
                return
            if status == og.ACK_OK:
                done(f, off)
                if (f, off) != end and rewind is None:  # the node skips what it has
                    rewind = (f, off)
            elif status == og.ACK_IDLE:  # the node restarted: begin again
                raise _DroppedError(f"{self.address}: the node forgot the update (it restarted)")
            elif status == og.ACK_ERROR:  # a file's hash differs, the flash is full: why
                status_map = await self.status()
                raise OtaRefusedError(
                    self.address,
                    status_map.get("error"),
                    f"the node refused file {f}: its state is {status_map.get('state')}",
                )
            else:  # a gap, a full queue, a refused write: back to where the node stands
                done(f, off)
                rewind = (f, off)
            if rewind is not None and inflight == 0:
                pos, rewind = rewind, None

    async def commit(self) -> None:
        await self.request(bytes((og.OP_COMMIT,)))
        # the node hashes, installs and resets: the link drops. A failure is answered.
        while True:
            answer = await self._next_or_gone(COMMIT_TIMEOUT_S)
            if answer is None:
                return
            if answer.get("op") == "C" and not answer.get("ok"):
                raise OtaRefusedError(self.address, answer.get("code"), str(answer.get("error")))

    async def _next_or_gone(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            return dict(await self._next(self.answers, timeout_s, "the node's reset"))
        except _DroppedError:
            if self.gone.is_set():
                return None
            raise

    async def status(self) -> dict[str, Any]:
        answer = await self.request(bytes((og.OP_STATUS,)))
        status = answer.get("status")
        out = dict(status) if isinstance(status, dict) else {}
        if answer.get("heap_low") is not None:
            out["heap_low"] = answer["heap_low"]
        # also under the GATT status characteristic's names (docs/protocols.md), which a
        # reader of either gets: fw_version, fw_previous, ota_state (code), ota_error,
        # ota_rollback
        for gatt_name, name in _STATUS_NAMES:
            if name in out:
                out.setdefault(gatt_name, out[name])
        return out


_STATUS_NAMES = (
    ("fw_version", "running"),
    ("fw_previous", "previous"),
    ("ota_state", "state_code"),
    ("ota_error", "error"),
    ("ota_rollback", "rollback"),
)


def _after(blobs: list[bytes], f: int, off: int) -> tuple[int, int] | None:
    # the position after (f, off): the next file's start past empty ones, None at the end
    while f < len(blobs) and off >= len(blobs[f]):
        f, off = f + 1, 0
    return (f, off) if f < len(blobs) else None


async def open_client_for(config: BleConfig, address: str, disconnected: Any) -> Any:
    from bleak.exc import BleakError

    from polekit.gateway.ble_commands import open_client

    try:
        return await open_client(config, address, address, disconnected)
    except (BleakError, TimeoutError, OSError, DeviceNoResponse) as exc:
        # DeviceNoResponse: not heard on a real adapter (a node rebooting into its new
        # version is off the air for seconds): connect again, as for a dropped link
        raise _DroppedError(f"{address}: cannot connect: {exc}") from None


async def status_ble(address: str, *, config: BleConfig | None = None) -> dict[str, Any]:
    """The node's update status map (the answer to ``S``, also under the GATT status
    names: ``fw_version``, ``ota_state``...), over one connection. BleOtaError (or
    DeviceNoResponse) when it cannot be had."""
    try:
        async with _Link(config or BleConfig(), address) as link:
            return await link.status()
    except _DroppedError as exc:
        raise BleOtaError(str(exc)) from None


async def push_ble(
    address: str,
    manifest: bytes,
    sig: bytes,
    files: Mapping[str, bytes],
    progress: Progress | None = None,
    *,
    config: BleConfig | None = None,
    attempts: int = 5,
    trial_wait_s: float | None = None,
) -> dict[str, Any]:
    """Update the node at ``address`` with the signed bundle (``files``: board path ->
    bytes, as signing.load_signed gives them) and wait until it runs it.

    ``progress(bytes_done, bytes_total, bytes_sent)`` is called as the node acknowledges
    (``bytes_sent``: what crossed the air so far, which the rollout reports). Returns the
    report: ``bytes`` (the bundle's), ``sent`` (file bytes written, resends included),
    ``duration_s``, ``reconnects``, ``heap_low`` (the least free heap the node saw while
    it took the files), ``status`` (the node's status map after its reset: running
    version, rollback reason...), ``result``: "trial" (it runs the new version on trial),
    "updated" (confirmed), "rolled_back" (back on its previous version; ``rollback`` the
    reason code, ``why`` its words) or "not_running". With ``trial_wait_s`` it waits that
    long for the trial's outcome (the rollout watches trials itself and leaves it None).
    Raises OtaRefusedError with the node's reason, and DeviceNoResponse when ``attempts``
    connections in a row made no progress."""
    config = config or BleConfig()
    try:
        listed = cbor.loads(manifest)["files"]
        blobs = [bytes(files[entry["path"]]) for entry in listed]
        version = cbor.loads(manifest)["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BleOtaError(f"the bundle's manifest does not match its files: {exc}") from None
    sizes = [len(b) for b in blobs]
    total = sum(sizes)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    report: dict[str, Any] = {
        "address": address,
        "bytes": total,
        "sent": 0,
        "reconnects": 0,
        "check_boots": 0,
    }
    started = time.monotonic()
    link: _Link | None = None

    def sent() -> int:
        # file bytes written: by the links before this one, and this one's so far
        return int(report["sent"]) + (link.written if link is not None else 0)

    def done(f: int, off: int) -> None:
        if progress is not None and f < len(starts):
            progress(starts[f] + off, total, sent())

    failures = 0
    committed = False
    last: BaseException | None = None
    while not committed:
        if failures >= attempts:
            raise DeviceNoResponse(f"{address}: the update over BLE stopped: {last}")
        link = _Link(config, address)
        try:
            async with link:
                before = await link.status()
                if _running(before) == version and before.get("state") not in ("staging",):
                    log.info("%s already runs %s", address, version)
                    report["status"] = before
                    break
                need = await link.begin(manifest, sig)
                if need is not None:
                    await link.send(need, blobs, done)
                    # what the node saw while it took the files (its heap low-water mark)
                    report["heap_low"] = (await link.status()).get("heap_low")
                if progress is not None:
                    progress(total, total, sent())
                await link.commit()
                committed = True
        except _CheckBootError as exc:
            report["check_boots"] += 1
            if report["check_boots"] > CHECK_BOOTS:  # its verdict is not kept: say so
                raise BleOtaError(
                    f"{exc}, {report['check_boots']} times: it keeps no verdict"
                ) from None
            log.info("%s; waiting for it", exc)
            await _status_after_reset(config, address, BEGIN_TIMEOUT_S)
        except _DroppedError as exc:
            last = exc
            failures = 0 if link.written else failures + 1
            report["reconnects"] += 1
            log.info("%s: %s; connecting again", address, exc)
            await asyncio.sleep(min(5.0, 0.2 * 2**failures))
        finally:
            report["sent"] += link.written
            link = None
    if committed:
        report["status"] = await _status_after_reset(config, address)
    report["duration_s"] = round(time.monotonic() - started, 3)
    if trial_wait_s and report["status"].get("state") == "trial":
        report["status"] = await _trial_outcome(config, address, trial_wait_s)
    report.update(_result(report["status"], version))
    return report


def _result(status: Mapping[str, Any], version: str) -> dict[str, Any]:
    # what the report says of the update: the node runs it on trial or confirmed, or it
    # went back to the version before (why: protocols.ota's rollback reason)
    from polekit.protocols import ota

    code = int(status.get("rollback") or 0)
    if _running(status) == version:
        return {"result": "trial" if status.get("state") == "trial" else "updated"}
    if status.get("state") == "rolled_back" and code:
        return {"result": "rolled_back", "rollback": code, "why": ota.rollback_text(code)}
    return {"result": "not_running", "why": f"the node runs {_running(status)}, not {version}"}


async def _trial_outcome(config: BleConfig, address: str, wait_s: float) -> dict[str, Any]:
    # the new version on trial confirms itself or is rolled back (a reset: the link drops
    # and the node comes back on its previous version); its status once either happened
    deadline = time.monotonic() + wait_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        left = deadline - time.monotonic()
        try:
            status = await _status_after_reset(config, address, max(1.0, left))
        except DeviceNoResponse:
            break
        if status.get("state") != "trial":
            return status
        await asyncio.sleep(TRIAL_POLL_S)
    raise DeviceNoResponse(
        f"{address}: still on trial (or silent) after {wait_s:.0f} s; last status {status}"
    )


async def _status_after_reset(
    config: BleConfig, address: str, timeout_s: float = BOOT_TIMEOUT_S
) -> dict[str, Any]:
    # the node resets after its commit (or for a check boot): its status once it is back
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            async with _Link(config, address) as link:
                return await link.status()
        except _DroppedError as exc:
            last = exc
            await asyncio.sleep(0.5)
    raise DeviceNoResponse(f"{address}: not back after its reset in {timeout_s:.0f} s: {last}")
