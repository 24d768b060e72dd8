# OTA over BLE on the community node: the CONTROL and DATA characteristics of the polekit
# GATT service (protocols/ota_gatt.py has the frames, docs/protocols.md the exchange). The
# node imports this when a central first writes to one of them: an idle node carries none.
#
# The radio's IRQ only queues what a central wrote (community.py); step(), from the node's
# loop, hands the frames to the OtaSession (ota/session.py: staging on flash, checks,
# slots) and answers each by a notification. Commit runs as a task of its own (hashing
# every file takes a while; the node keeps advertising) that yields between its steps.
import asyncio
import gc

from protocols import cbor
from protocols import ota_gatt as og

from .ota_reason import reason

ERROR_CHARS = 100  # an answer fits one notification (MTU - 3 bytes)


STATUS_KEYS = ("state", "error", "running", "previous", "rollback", "version", "staged", "total")


class OtaGatt:
    def __init__(self, ble, h_control, h_data, make_session):
        self.ble = ble
        self.h_control = h_control
        self.h_data = h_data
        self.make_session = make_session  # (on_heap) -> an OtaSession, made on first use
        self.session = None
        self.manifest = None  # bytearray while a central sends it
        self.manifest_got = 0
        self.sig = None
        self.begun = False  # the session took a manifest: data may come
        self.working = None  # the task of a begin or a commit (both take a while)
        self.heap_low = None  # the least gc.mem_free() seen while taking frames
        self.frames = 0
        self.gaps = 0

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
        session = self.session
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
                self._answer(conn, op, got=self.manifest_got)
            elif op == og.OP_BEGIN:
                manifest = self.manifest
                if manifest is None or self.manifest_got != len(manifest):
                    raise ValueError(og.CODE_ORDER, "begin before the whole manifest")
                self.begun = False
                self.working = asyncio.create_task(self._begin(conn, bytes(manifest)))
            elif op == og.OP_COMMIT:
                if not self.begun or self.session.need() is not None:
                    raise ValueError(og.CODE_ORDER, "commit before every file is staged")
                self.working = asyncio.create_task(self._commit(conn))
                self._answer(conn, op, state="committing")
            elif op == og.OP_ABORT:
                self._session().abort()
                self.begun = False
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
        if len(raw) != 3 + og.SIG_BYTES:
            raise ValueError(og.CODE_ORDER, "header of %d bytes" % len(raw))
        size = int.from_bytes(raw[1:3], "little")
        if not 0 < size <= og.MANIFEST_MAX:
            raise ValueError(og.CODE_ORDER, "manifest of %d bytes" % size)
        self.manifest = None
        gc.collect()  # the last manifest's buffer is back before a new one is taken
        self.manifest = bytearray(size)
        self.manifest_got = 0
        self.sig = bytes(raw[3:])

    def _piece(self, raw):
        if self.manifest is None or len(raw) < 3:
            raise ValueError(og.CODE_ORDER, "a manifest piece before its header")
        at = int.from_bytes(raw[1:3], "little")
        end = at + len(raw) - 3
        if at != self.manifest_got or end > len(self.manifest):
            raise ValueError(
                og.CODE_ORDER, "manifest piece at %d, expected %d" % (at, self.manifest_got)
            )
        self.manifest[at:end] = raw[3:]
        self.manifest_got = end

    async def _begin(self, conn, manifest):
        # the signature check takes seconds on a chip, in steps: the node keeps advertising
        try:
            await self._session().begin(manifest, self.sig)  # ManifestError: nothing taken
            self.manifest = None
            self.begun = True
            self._answer(conn, og.OP_BEGIN, need=self.session.need())
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            self._refuse(conn, og.OP_BEGIN, exc)
        except Exception as exc:  # noqa: BLE001 - a bug or MemoryError: answered, printed
            self._crashed(conn, og.OP_BEGIN, exc)
        finally:
            self.working = None

    async def _commit(self, conn):
        try:
            await self.session.commit()  # on success the node resets in there
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            self._refuse(conn, og.OP_COMMIT, exc)
        except Exception as exc:  # noqa: BLE001 - a bug or MemoryError: answered, printed
            self._crashed(conn, og.OP_COMMIT, exc)
        finally:
            self.working = None
            self.begun = False
