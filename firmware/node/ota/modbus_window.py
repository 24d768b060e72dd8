# The OTA transfer window of the Modbus slave: holding registers from 0x1000, outside the
# register map (docs/protocols.md, "OTA over Modbus"; addresses and codes in protocols/ota.py).
#
# A function 3 read of the status block, function 16 (or 6) writes of commands and data.
# Commands that take long (BEGIN: the signature; COMMIT: every file's hash) run as asyncio
# tasks: the write is answered at once, the status says "checking"/"verifying" until they
# end, and every other request (polls of this node's values) is answered meanwhile.
# This module is imported at the first request to the window; the signature check
# (verify.py) at BEGIN, and the session (session.py) only once the signature is good: the
# heap a running node leaves is too small for all of them and a signature step at once.
from protocols import ota
from protocols.errors import ModbusException
from protocols.modbus import ILLEGAL_ADDRESS, ILLEGAL_VALUE

from . import record
from .verify import TOO_LARGE

HEADER = "/ota/header.bin"  # verify.HEADER
DEVICE_FAILURE = 4
DEVICE_BUSY = 6


# A collection at every request to the window: while an update runs, the node holds its
# code and the update's beside its own, and its garbage must not pile up between the
# collections the node asks for once a second (the emulated board's VM collects only when
# asked and back in JavaScript; on the chip this is a collection of ~1 ms a request).
def _collect():
    import gc

    gc.collect()


async def pause_then_reset(reset):
    from asyncio import sleep_ms

    await sleep_ms(50)  # the answer to the last request leaves the UART first
    reset()


def _makedirs():
    import os

    try:
        os.mkdir(record.DIR)
    except OSError:
        pass  # it exists


# The window of a node of ``board`` running version ``running`` ("MAJOR.MINOR");
# ``reset`` is the node's planned reset (its state flushed first); ``down`` the sensors not
# working now (OtaSession's).
class ModbusWindow:
    def __init__(self, board, running, reset, down=None):
        self.board = board
        self.down = down  # OtaSession's: the sensors not working before the update
        self.running = running
        self.reset = reset
        self.session = None
        self.boot = record.load()
        self.error = 0  # a refusal before the session was made
        # the header (signature, then manifest) goes to the flash as the master writes it: the
        # signature check has the heap its two RAM copies would take
        self.header = 0  # its length, 0: none opened
        self.header_have = 0
        self.pending = 0  # CHECKING or VERIFYING while a command's task runs
        self.heap_low = None  # the least free heap seen during the update (bytes)
        self.task = None
        self._after_check_boot()

    # made after a check boot (verify.boot_check): its verdict is taken at once, as BEGIN would
    def _after_check_boot(self):
        import os

        from .verify import PENDING, VERIFIED

        try:
            os.stat(VERIFIED)
            n = os.stat(HEADER)[6]
        except OSError:
            return
        try:
            os.stat(PENDING)
            return  # not checked yet
        except OSError:
            pass
        stage = record.DIR + "/stage.json"
        try:
            os.stat(stage)
            return  # staging began already: the master's BEGIN resumes it
        except OSError:
            pass
        self.header = n
        self.header_have = n
        self._start(ota.CHECKING, self._begin())

    def handles(self, address):
        return ota.WINDOW_STATUS <= address < ota.WINDOW_DATA + 123

    def _session(self):
        if self.session is None:
            from .session import OtaSession

            self.session = OtaSession(
                self.board, self.running, self.reset, on_heap=self.on_heap, down=self.down
            )
        return self.session

    # the update status points of the register map (pole-env), once a second
    def show(self, regs):
        s = self.status()
        regs.set("ota_state", s["state_code"])
        regs.set("ota_error", s["error"])
        regs.set("ota_rollback", s["rollback"])
        regs.set("fw_previous", s["previous_code"])

    # the version on trial confirmed itself: the window reports the new boot record, and a
    # session made during the trial (it answered "on trial") is dropped with its state
    def confirmed(self, rec):
        self.boot = rec
        if self.session is not None and self.session.status()["state_code"] == ota.TRIAL:
            self.session = None

    def on_heap(self, free):
        if self.heap_low is None or free < self.heap_low:
            self.heap_low = free

    def status(self):
        if self.session is not None:
            s = self.session.status()
        else:
            rec = self.boot
            prev = rec.get("previous")
            state = {"trial": ota.TRIAL, "rolled_back": ota.ROLLED_BACK}.get(
                rec.get("state") or "", 0
            )
            s = {
                "state_code": ota.REFUSED if self.error else state,
                "error": self.error,
                "rollback": rec.get("rollback", 0),
                "running_code": ota.version_code(self.running),
                "previous_code": ota.version_code(prev) if prev else 0,
            }
        if self.pending:
            s["state_code"] = self.pending
        elif self.header:
            s["state_code"] = ota.HEADER
        s["heap_low"] = self.heap_low or 0
        return s

    # a function 3 read: registers of the status block
    def read(self, address, count):
        _collect()
        end = ota.WINDOW_STATUS + ota.STATUS_REGS
        if address < ota.WINDOW_STATUS or address + count > end:
            raise ModbusException("only the status block can be read", ILLEGAL_ADDRESS)
        regs = ota.encode_status(self.status())
        at = address - ota.WINDOW_STATUS
        return regs[at : at + count]

    # a function 16 or 6 write: a command or a data chunk
    def write(self, address, values):
        _collect()
        if address == ota.WINDOW_COMMAND:
            self._command(values)
        elif address == ota.WINDOW_DATA:
            self._data(values)
        else:
            raise ModbusException("write the command or the data register", ILLEGAL_ADDRESS)

    def _command(self, values):
        from .session import OtaBusyError

        code = values[0]
        if self.pending and code != ota.CMD_ABORT:
            raise ModbusException("busy", DEVICE_BUSY)
        if code == ota.CMD_OPEN:
            n = values[1] << 16 | values[2] if len(values) >= 3 else 0
            if not ota.SIG_BYTES < n <= ota.SIG_BYTES + ota.MAX_MANIFEST_BYTES:
                raise ModbusException("header of %d bytes" % n, ILLEGAL_VALUE)
            if self.status()["state_code"] == ota.TRIAL:
                raise ModbusException("on trial", DEVICE_BUSY)
            _makedirs()
            open(HEADER, "wb").close()
            self.header = n
            self.header_have = 0
        elif code == ota.CMD_BEGIN:
            if not self.header or self.header_have < self.header:
                raise ModbusException("the header is not complete", ILLEGAL_VALUE)
            self._start(ota.CHECKING, self._begin())
        elif code == ota.CMD_COMMIT:
            s = self.session
            if s is None or s.state != ota.RECEIVING or s.need() is not None:
                raise ModbusException("files are missing", ILLEGAL_VALUE)
            self._start(ota.VERIFYING, self._commit())
        elif code == ota.CMD_ABORT:
            if self.pending:
                raise ModbusException("busy", DEVICE_BUSY)
            self.header = 0
            self.error = 0
            if self.session is None:
                return
            try:
                self.session.abort()
            except OtaBusyError:
                raise ModbusException("busy", DEVICE_BUSY) from None
        else:
            raise ModbusException("no command %d" % code, ILLEGAL_VALUE)

    def _data(self, values):
        from .session import OtaBusyError

        if self.pending:
            raise ModbusException("busy", DEVICE_BUSY)
        try:
            index, offset, data = ota.parse_data(values)
        except ValueError:
            raise ModbusException("data write too short", ILLEGAL_VALUE) from None
        if index == ota.HEADER_FILE:
            n = self.header
            if not n or offset > self.header_have or offset >= n:
                raise ModbusException("header at %d" % offset, ILLEGAL_VALUE)
            end = min(n, offset + len(data))
            if end > self.header_have:
                with open(HEADER, "ab") as f:
                    f.write(memoryview(data)[self.header_have - offset : end - offset])
                self.header_have = end
            return
        try:
            self._session().write(index, offset, data)
        except ValueError:  # out of order, or a file refused (the status says which)
            raise ModbusException("chunk refused", ILLEGAL_VALUE) from None
        except OtaBusyError:
            raise ModbusException("busy", DEVICE_BUSY) from None
        except OSError:
            self._refuse(TOO_LARGE)
            raise ModbusException("the flash refused the write", DEVICE_FAILURE) from None

    # the update refused with ``code``: the status says so until the next OPEN or ABORT
    def _refuse(self, code):
        self.error = code
        s = self.session
        if s is not None:
            s.state = ota.REFUSED
            s.error = code

    def _start(self, state, coro):
        import asyncio

        self.pending = state
        self.task = asyncio.create_task(self._run(coro))

    async def _run(self, coro):
        from .session import OtaBusyError

        try:
            await coro
        except (OtaBusyError, ValueError) as exc:  # refused: the status says why
            print("polekit: update refused: %s" % exc)
        except OSError as exc:
            self._refuse(TOO_LARGE)
            print("polekit: update stopped: the flash failed (%s)" % exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the slave: shown, state reset
            import sys

            print("polekit: update stopped by an error:")
            sys.print_exception(exc)
        finally:
            self.pending = 0

    # BEGIN: a header whose signature a check boot found good (verify.VERIFIED) starts the
    # staging; one it refused is refused with its code; a new one is left for a check boot
    # (verify.boot_check): the node resets, checks it before it starts, and the first
    # request to the window after that (the master's status read) takes the verdict.
    async def _begin(self):
        import os

        from .verify import PENDING, OtaRefusedError, pause, verdict

        n = os.stat(HEADER)[6]
        self.header = 0
        self.error = 0
        try:
            info, ident = verdict(n)
        except OtaRefusedError as exc:
            self._refuse(exc.code)
            raise
        if info is None:
            with open(PENDING, "w") as f:
                f.write("%d\n" % n)
            print("polekit: update: checking its signature in a boot of its own")
            await pause_then_reset(self.reset)
            return
        await pause(1, True)
        s = self._session()
        await pause(1, True)
        await s.begin(None, None, info, ident)

    async def _commit(self):
        await self._session().commit()
