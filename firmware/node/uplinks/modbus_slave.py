# Modbus RTU slave on the RS-485 UART, built on protocols.modbus framing.
#
# A frame is told by its CRC at a length it can have (a request's, or another slave's
# answer: every drop on the line hears both), not by when it was read: a late read (a GC
# pause, a busy loop) finds the master's request in one piece with the answer before it,
# and both must still be told apart. Bytes before a whole frame are noise. A frame of an
# unknown function ends after t3.5 of silence. As the spec says: a frame with a bad CRC or
# for another unit gets no answer (it may be another slave's), an unknown function gets
# exception 1, a bad count 3, an unmapped address 2. The loop never blocks: it sleeps
# between polls of the UART.
# Imports nothing at the top that CPython lacks, so the host's fuzz suite (tests/fuzz) runs
# this very code.
import time

from protocols import modbus
from protocols.errors import FrameError, ModbusException

# The OTA transfer window's first address (protocols.ota.WINDOW_STATUS; not imported here:
# the node loads its update code at the first request to the window, tests/test_ota_node.py
# checks the two agree)
OTA_WINDOW = 0x1000

# CPython has no ticks_diff; MicroPython's wraps around like this
_diff = getattr(time, "ticks_diff", lambda a, b: a - b)


class ModbusSlave:
    # ``ota_window``: None, or a function that makes the OTA transfer window
    # (node/ota/modbus_window.py) at the first request to its addresses, which then go to
    # it instead of the register file
    def __init__(self, uart, unit, registers, baudrate=9600, ota_window=None):
        self.uart = uart
        self.ota_window = ota_window
        self.window = None
        self.unit = unit
        self.registers = registers
        self.gap_ms = max(2, int(modbus.t35_s(baudrate) * 1000 + 0.999))
        # a frame whose length is known is given longer to finish than t3.5: read timing
        # jitters (a busy loop, a GC pause) while the UART's FIFO keeps the bytes, and a long
        # frame (an update's 255-byte write) reaches the reader a FIFO-full at a time: the
        # ESP32's UART hands over its 128-byte FIFO, an RS-485 adapter 64 bytes
        self.fragment_ms = max(50, self.gap_ms) + int(128 * modbus.char_time_s(baudrate) * 1000)
        self.requests = 0
        self.ignored = 0  # bad CRC, other units, noise
        self.no_memory = 0  # requests dropped unanswered for want of heap (the master retries)
        self._buf = b""
        self._last_rx = 0

    def answer(self, frame):
        # the response to one whole frame, or None for silence
        try:
            req = modbus.decode_request(frame)
        except FrameError:
            self.ignored += 1
            return None
        if req.unit != self.unit:
            self.ignored += 1
            return None
        self.requests += 1
        fc = req.function
        if req.error:
            return modbus.exception_response(self.unit, fc, req.error)
        try:
            w = self.window
            if w is None and self.ota_window and req.address >= OTA_WINDOW:
                w = self.window = self.ota_window()
            if w is not None and fc != modbus.READ_INPUT and w.handles(req.address):
                if fc == modbus.READ_HOLDING:
                    return modbus.read_response(self.unit, fc, w.read(req.address, req.count))
                w.write(req.address, req.values)  # a tuple: no copy of an update's 123
                value = req.values[0] if fc == modbus.WRITE_SINGLE else req.count
                return modbus.write_response(self.unit, fc, req.address, value)
            if fc == modbus.READ_HOLDING or fc == modbus.READ_INPUT:
                table = "holding" if fc == modbus.READ_HOLDING else "input"
                regs = self.registers.read(table, req.address, req.count)
                return modbus.read_response(self.unit, fc, regs)
            self.registers.write(req.address, list(req.values))
            value = req.values[0] if fc == modbus.WRITE_SINGLE else req.count
            return modbus.write_response(self.unit, fc, req.address, value)
        except ModbusException as exc:
            return modbus.exception_response(self.unit, fc, exc.code or modbus.DEVICE_FAILURE)

    def poll(self, now=None):
        # take what the UART has; answer every whole frame; returns the frames answered
        now = time.ticks_ms() if now is None else now
        data = self.uart.read()
        answered = 0
        if data:
            self._buf += data
            self._last_rx = now
            while self._buf:
                start, size = self._next_frame()
                if not size:
                    break
                if start:
                    self.ignored += 1  # noise, or the rest of a frame we missed the start of
                frame = self._buf[start : start + size]
                self._buf = self._buf[start + size :]
                answered += self._reply(frame)
        if self._buf:
            silent = _diff(now, self._last_rx)
            if modbus.frame_lengths(self._buf) == () and silent >= self.gap_ms:
                frame, self._buf = self._buf, b""  # an unknown function: the silence ends it
                answered += self._reply(frame)
            elif silent >= self.fragment_ms:
                self.ignored += 1  # a fragment the line's silence cut off
                self._buf = b""
        return answered

    def _next_frame(self):
        # (start, size) of the first whole frame with a valid CRC; size 0 when none is whole.
        # A frame to our unit can only be a request (no one else answers as us). A frame
        # still arriving at the head of the buffer is waited for: the data of a long frame
        # (an update's chunk, another slave's answer) may hold a few bytes that look like a
        # frame with a good CRC (FF FF 00 00 00 is one), which must not be taken for one
        buf = memoryview(self._buf)
        for start in range(len(buf) - 3):
            sizes = modbus.frame_lengths(buf[start:])
            if sizes is None:
                if start == 0:
                    return 0, 0
                continue
            arriving = False
            for size in sizes[:1] if buf[start] == self.unit else sizes:
                end = start + size
                if size and end <= len(buf):
                    if modbus.crc16(buf[start : end - 2]) == buf[end - 2] | buf[end - 1] << 8:
                        return start, size
                elif size:
                    arriving = True
            if start == 0 and arriving:
                return 0, 0
        return 0, 0

    def _reply(self, frame):
        reply = self.answer(frame)
        if reply is None:
            return 0
        self.uart.write(reply)
        return 1

    # A request the heap has no room for (an update's chunk while the node's garbage waits
    # for a collection) goes unanswered and is counted; the master sends it again after the
    # collection. It used to end this task, and with it the node's gather: a node whose loop
    # watch still fed the watchdog, deaf on its bus for good.
    async def run(self):
        import gc
        from asyncio import sleep_ms

        while True:
            try:
                self.poll()
            except MemoryError:
                self.no_memory += 1
                self._buf = b""
                gc.collect()
            await sleep_ms(1)
