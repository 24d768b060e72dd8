# The OTA transfer window of the Modbus slave: holding registers from 0x1000, outside the
# register map (docs/protocols.md, "OTA over Modbus"; addresses and codes in protocols/ota.py).
#
# A function 3 read of the status block, function 16 (or 6) writes of commands and data.
# Commands that take long (BEGIN: the signature; COMMIT: every file's hash) run as asyncio
# tasks: the write is answered at once, the status says "checking"/"verifying" until they
# end, and every other request (polls of this node's values) is answered meanwhile.
# The session (session.py, and the Ed25519 code behind it) is imported at the first request
# to the window, so a node that is never updated does not carry it on its heap.
from protocols import ota
from protocols.errors import ModbusException
from protocols.manifest import TOO_LARGE, ManifestError
from protocols.modbus import ILLEGAL_ADDRESS, ILLEGAL_VALUE

DEVICE_FAILURE = 4
DEVICE_BUSY = 6


class ModbusWindow:
    """The window of a node of ``board`` running version ``running`` ("MAJOR.MINOR");
    ``reset`` is the node's planned reset (its state flushed first)."""

    def __init__(self, board, running, reset):
        self.board = board
        self.running = running
        self.reset = reset
        self.session = None
        self.header = None  # bytearray: signature, then manifest, as the master writes it
        self.header_have = 0
        self.pending = 0  # CHECKING or VERIFYING while a command's task runs
        self.heap_low = None  # the least free heap seen during the update (bytes)
        self.task = None

    def handles(self, address):
        return ota.WINDOW_STATUS <= address < ota.WINDOW_DATA + 123

    def _session(self):
        if self.session is None:
            from .session import OtaSession

            self.session = OtaSession(self.board, self.running, self.reset, on_heap=self.on_heap)
        return self.session

    # the update status points of the register map (pole-env), once a second
    def show(self, regs):
        if self.session is None:
            return
        s = self.status()
        regs.set("ota_state", s["state_code"])
        regs.set("ota_error", s["error"])
        regs.set("ota_rollback", s["rollback"])
        regs.set("fw_previous", s["previous_code"])

    def on_heap(self, free):
        if self.heap_low is None or free < self.heap_low:
            self.heap_low = free

    def status(self):
        s = self._session().status()
        if self.pending:
            s["state_code"] = self.pending
        elif self.header is not None:
            s["state_code"] = ota.HEADER
        s["heap_low"] = self.heap_low or 0
        return s

    # a function 3 read: registers of the status block
    def read(self, address, count):
        end = ota.WINDOW_STATUS + ota.STATUS_REGS
        if address < ota.WINDOW_STATUS or address + count > end:
            raise ModbusException("only the status block can be read", ILLEGAL_ADDRESS)
        regs = ota.encode_status(self.status())
        at = address - ota.WINDOW_STATUS
        return regs[at : at + count]

    # a function 16 or 6 write: a command or a data chunk
    def write(self, address, values):
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
        s = self._session()
        if code == ota.CMD_OPEN:
            n = values[1] << 16 | values[2] if len(values) >= 3 else 0
            if not ota.SIG_BYTES < n <= ota.SIG_BYTES + ota.MAX_MANIFEST_BYTES:
                raise ModbusException("header of %d bytes" % n, ILLEGAL_VALUE)
            if s.state == ota.TRIAL:
                raise ModbusException("on trial", DEVICE_BUSY)
            self.header = None  # the old one's memory first
            self.header = bytearray(n)
            self.header_have = 0
        elif code == ota.CMD_BEGIN:
            if self.header is None or self.header_have < len(self.header):
                raise ModbusException("the header is not complete", ILLEGAL_VALUE)
            self._start(ota.CHECKING, self._begin())
        elif code == ota.CMD_COMMIT:
            if s.state != ota.RECEIVING or s.need() is not None:
                raise ModbusException("files are missing", ILLEGAL_VALUE)
            self._start(ota.VERIFYING, self._commit())
        elif code == ota.CMD_ABORT:
            if self.pending:
                raise ModbusException("busy", DEVICE_BUSY)
            self.header = None
            try:
                s.abort()
            except OtaBusyError:
                raise ModbusException("busy", DEVICE_BUSY) from None
        else:
            raise ModbusException("no command %d" % code, ILLEGAL_VALUE)

    def _data(self, values):
        from .session import OtaBusyError, OtaOutOfOrderError

        if self.pending:
            raise ModbusException("busy", DEVICE_BUSY)
        try:
            index, offset, data = ota.parse_data(values)
        except ValueError:
            raise ModbusException("data write too short", ILLEGAL_VALUE) from None
        if index == ota.HEADER_FILE:
            h = self.header
            if h is None or offset > self.header_have or offset >= len(h):
                raise ModbusException("header at %d" % offset, ILLEGAL_VALUE)
            end = min(len(h), offset + len(data))
            h[offset:end] = data[: end - offset]
            self.header_have = max(self.header_have, end)
            return
        try:
            self._session().write(index, offset, data)
        except (OtaOutOfOrderError, ManifestError):
            raise ModbusException("chunk refused", ILLEGAL_VALUE) from None
        except OtaBusyError:
            raise ModbusException("busy", DEVICE_BUSY) from None
        except OSError:
            self.session.state = ota.REFUSED
            self.session.error = TOO_LARGE
            raise ModbusException("the flash refused the write", DEVICE_FAILURE) from None

    def _start(self, state, coro):
        import asyncio

        self.pending = state
        self.task = asyncio.create_task(self._run(coro))

    async def _run(self, coro):
        from .session import OtaBusyError

        try:
            await coro
        except (ManifestError, OtaBusyError, ValueError) as exc:
            print("polekit: update refused: %s" % exc)
        except OSError as exc:
            self.session.state = ota.REFUSED
            self.session.error = TOO_LARGE
            print("polekit: update stopped: the flash failed (%s)" % exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the slave: shown, state reset
            import sys

            print("polekit: update stopped by an error:")
            sys.print_exception(exc)
        finally:
            self.pending = 0

    async def _begin(self):
        h = self.header
        self.header = None
        sig = bytes(h[: ota.SIG_BYTES])
        manifest = bytes(h[ota.SIG_BYTES :])
        del h
        await self._session().begin(manifest, sig)

    async def _commit(self):
        await self._session().commit()
