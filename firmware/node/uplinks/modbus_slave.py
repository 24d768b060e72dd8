# Modbus RTU slave on the RS-485 UART, built on protocols.modbus framing.
#
# A request ends when its length is known (functions 3, 4, 6, 16) or after t3.5 of
# silence. As the spec says: a frame with a bad CRC or for another unit gets no answer
# (it may be another slave's), an unknown function gets exception 1, a bad count 3, an
# unmapped address 2. The loop never blocks: it sleeps between polls of the UART.
# Imports nothing at the top that CPython lacks, so the host's fuzz suite (tests/fuzz) runs
# this very code.
import time

from protocols import modbus
from protocols.errors import FrameError, ModbusException

# CPython has no ticks_diff; MicroPython's wraps around like this
_diff = getattr(time, "ticks_diff", lambda a, b: a - b)


class ModbusSlave:
    def __init__(self, uart, unit, registers, baudrate=9600):
        self.uart = uart
        self.unit = unit
        self.registers = registers
        self.gap_ms = max(2, int(modbus.t35_s(baudrate) * 1000 + 0.999))
        # a frame whose length is known is given longer to finish than t3.5: read timing
        # jitters (a busy loop, a GC pause) while the UART's FIFO keeps the bytes
        self.fragment_ms = max(50, self.gap_ms)
        self.requests = 0
        self.ignored = 0  # bad CRC, other units, noise
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
        # take what the UART has; answer every complete frame; returns the frames answered
        now = time.ticks_ms() if now is None else now
        data = self.uart.read()
        if data:
            if self._buf and _diff(now, self._last_rx) >= self.fragment_ms:
                self.ignored += 1
                self._buf = b""  # a long silence ended the previous (incomplete) frame
            self._buf += data
            self._last_rx = now
        answered = 0
        while self._buf:
            need = modbus.request_length(self._buf)
            if need == 0 or (need > 0 and len(self._buf) < need):
                if _diff(now, self._last_rx) >= self.fragment_ms:
                    self.ignored += 1  # a fragment the line's silence cut off
                    self._buf = b""
                break
            if need < 0:  # unknown function: the frame is what the silence delimits
                if _diff(now, self._last_rx) < self.gap_ms:
                    break
                need = len(self._buf)
            frame, self._buf = self._buf[:need], self._buf[need:]
            reply = self.answer(frame)
            if reply is not None:
                self.uart.write(reply)
                answered += 1
        return answered

    async def run(self):
        from asyncio import sleep_ms

        while True:
            self.poll()
            await sleep_ms(1)
