# OTA over BLE on the community node: the CONTROL and DATA characteristics of the polekit
# GATT service (protocols/ota_gatt.py has the frames, docs/protocols.md the exchange). The
# node imports this when a central first writes to one of them: an idle node carries none.
#
# The radio's IRQ only queues what a central wrote (community.py); step(), from the node's
# loop, hands the frames to the OtaSession (ota/session.py: staging on flash, checks,
# slots) and answers each by a notification. Commit runs as a task of its own (hashing
# every file takes a while; the node keeps advertising) that yields between its steps.
#
# The signature is checked as the pole node's Modbus window does (ota/modbus_window.py):
# the header (signature, then manifest) goes to the flash as the central writes it
# (verify.HEADER), and the first BEGIN of a header marks it (verify.PENDING) and resets:
# node.start checks it before the node starts (verify.boot_check), in a heap the running
# node's tasks do not hold (the Ed25519 steps beside them do not fit the community node's
# heap). The central connects again and sends the same header and BEGIN; the check boot's
# verdict (verify.VERIFIED) answers it, and staging starts or resumes. (The check boot ends
# in a reset of its own, node/start.py: the node starts in a heap the check never touched.)
import asyncio
import gc

from protocols import cbor
from protocols import ota_gatt as og

from .ota.verify import HEADER, PENDING
from .ota_reason import reason

ERROR_CHARS = 100  # an answer fits one notification (MTU - 3 bytes)


STATUS_KEYS = (
    "state",
    "state_code",
    "error",
    "running",
    "previous",
    "rollback",
    "version",
    "staged",
    "total",
)


class OtaGatt:
    # ``reset``: the node's planned reset (its state on flash first), for the check boot
    def __init__(self, ble, h_control, h_data, make_session, reset):
        self.ble = ble
        self.reset = reset
        self.h_control = h_control
        self.h_data = h_data
        self.make_session = make_session  # (on_heap) -> an OtaSession, made on first use
        self.session = None
        self.header = 0  # bytes of the header (signature + manifest) on flash, 0: none
        self.header_have = 0
        self.begun = False  # the session took a manifest: data may come
        self.working = None  # the task of a begin or a commit (both take a while)
        self.heap_low = None  # the least gc.mem_free() seen while taking frames
        self.frames = 0
        self.gaps = 0

    # the version on trial confirmed itself (community.py ota_confirmed): a session made
    # while it was on trial says so no more; the next request makes one from the record
    def confirmed(self):
        if self.session is not None and self.session.status()["state_code"] == 7:  # TRIAL
            self.session = None

    def _session(self):
        if self.session is None:
            self.session = self.make_session(self._heap)
        return self.session

    def _heap(self, free=None):
        if free is None:
            free = gc.mem_free()
        if self.heap_low is None or free < self.heap_low:
            self.heap_low = free

    def _answer(self, conn, op, ok=True, **fields):
        fields["op"] = chr(op)
        fields["ok"] = ok
        try:
            self.ble.gatts_notify(conn, self.h_control, cbor.dumps(fields))
        except OSError as exc:  # the central left: it asks again when it comes back
            print("ota: answer to %d lost: %r" % (conn, exc))

    def _refuse(self, conn, op, exc):
        code, text = reason(exc, ERROR_CHARS)
        self._answer(conn, op, False, code=code, error=text)

    def _crashed(self, conn, op, exc):
        import sys

        sys.print_exception(exc)
        text = "internal error (%s); see the node's log" % type(exc).__name__
        self._answer(conn, op, False, code=None, error=text)

    def _ack(self, conn, status, need):
        f, off = need if need is not None else (255, 0)
        try:
            self.ble.gatts_notify(conn, self.h_data, og.ack(status, f, off))
        except OSError as exc:
            print("ota: ack to %d lost: %r" % (conn, exc))

    # every frame waiting in `inbox` (conn, handle, bytes), in the order written
    def step(self, inbox):
        while inbox:
            conn, handle, raw = inbox.pop(0)
            if handle == self.h_data:
                self._data(conn, raw)
            else:
                self._control(conn, raw)
        self._heap()

    def _data(self, conn, raw):
        self.frames += 1
        if not self.begun or self.working is not None:
            self._ack(conn, og.ACK_IDLE, None)
            return
        session = self._session()  # begun: it exists
        try:
            file, offset, chunk = og.parse_data(raw)
            need = session.need()
            if need is None:
                self._ack(conn, og.ACK_DONE, None)
                return
            if (file, offset) != (need[0], need[1]):
                self.gaps += 1
                self._ack(conn, og.ACK_GAP, need)
                return
            session.write(file, offset, chunk)
            need = session.need()
        except (ValueError, RuntimeError, OSError) as exc:
            # a file whose hash differs (ManifestError: dropped, need() is at its start),
            # the flash full, a session not receiving: the central reads S and stops
            print("ota: data refused: %r" % (exc,))
            self.begun = False
            self._ack(conn, og.ACK_ERROR, session.need())
            return
        self._ack(conn, og.ACK_DONE if need is None else og.ACK_OK, need)

    def _control(self, conn, raw):
        op = raw[0] if raw else 0
        try:
            if self.working is not None and op != og.OP_STATUS:
                raise ValueError(og.CODE_BUSY, "busy checking or installing; ask again")
            if op == og.OP_HEADER:
                self._header(raw)
                self._answer(conn, op)
            elif op == og.OP_MANIFEST:
                self._piece(raw)
                self._answer(conn, op, got=self.header_have - og.SIG_BYTES)
            elif op == og.OP_BEGIN:
                if not self.header or self.header_have != self.header:
                    raise ValueError(og.CODE_ORDER, "begin before the whole manifest")
                self.begun = False
                self.working = asyncio.create_task(self._begin(conn))
            elif op == og.OP_COMMIT:
                if not self.begun or self._session().need() is not None:
                    raise ValueError(og.CODE_ORDER, "commit before every file is staged")
                self.working = asyncio.create_task(self._commit(conn))
                self._answer(conn, op, state="committing")
            elif op == og.OP_ABORT:
                self._session().abort()
                self.begun = False
                self.header = self.header_have = 0
                self._answer(conn, op)
            elif op == og.OP_STATUS:
                status = self._session().status()
                short = {}
                for key in STATUS_KEYS:
                    short[key] = status.get(key)
                self._answer(conn, op, status=short, heap_low=self.heap_low)
            else:
                raise ValueError(og.CODE_ORDER, "unknown request %r" % raw[:1])
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            self._refuse(conn, op, exc)

    def _header(self, raw):
        import os

        if len(raw) != 3 + og.SIG_BYTES:
            raise ValueError(og.CODE_ORDER, "header of %d bytes" % len(raw))
        size = int.from_bytes(raw[1:3], "little")
        if not 0 < size <= og.MANIFEST_MAX:
            raise ValueError(og.CODE_ORDER, "manifest of %d bytes" % size)
        try:
            os.mkdir(HEADER[: HEADER.rfind("/")])
        except OSError:
            pass  # it exists
        with open(HEADER, "wb") as f:  # a begun staging is kept: same header, same id
            f.write(memoryview(raw)[3:])
        self.header = og.SIG_BYTES + size
        self.header_have = og.SIG_BYTES

    def _piece(self, raw):
        if not self.header or len(raw) < 3:
            raise ValueError(og.CODE_ORDER, "a manifest piece before its header")
        at = og.SIG_BYTES + int.from_bytes(raw[1:3], "little")
        end = at + len(raw) - 3
        if at != self.header_have or end > self.header:
            raise ValueError(
                og.CODE_ORDER,
                "manifest piece at %d, expected %d"
                % (at - og.SIG_BYTES, self.header_have - og.SIG_BYTES),
            )
        with open(HEADER, "ab") as f:
            f.write(memoryview(raw)[3:])
        self.header_have = end

    async def _begin(self, conn):
        try:
            info, ident = await self._verdict(conn)
            if info is None:
                return  # the node resets for its check boot
            await self._session().begin(None, None, info, ident)
            self.begun = True
            self._answer(conn, og.OP_BEGIN, need=self._session().need())
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            self._refuse(conn, og.OP_BEGIN, exc)
        except Exception as exc:  # noqa: BLE001 - a bug or MemoryError: answered, printed
            self._crashed(conn, og.OP_BEGIN, exc)
        finally:
            self.working = None

    # (the checked manifest's {"version", "files"}, its id) from the check boot's verdict
    # on this very header; (None, None) after marking it for a check boot (the answer says
    # "check": the central connects again once the node is back)
    async def _verdict(self, conn):
        from .ota.verify import pause, verdict

        info, ident = verdict(self.header)
        if info is None:
            with open(PENDING, "w") as f:
                f.write("%d\n" % self.header)
            print("ota: checking the signature in a boot of its own")
            self._answer(conn, og.OP_BEGIN, check=True)
            await pause(100)  # the answer leaves the radio first
            self.reset()
            return None, None
        await pause(1, True)
        return info, ident

    async def _commit(self, conn):
        try:
            await self._session().commit()  # on success the node resets in there
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            self._refuse(conn, og.OP_COMMIT, exc)
        except Exception as exc:  # noqa: BLE001 - a bug or MemoryError: answered, printed
            self._crashed(conn, og.OP_COMMIT, exc)
        finally:
            self.working = None
            self.begun = False
