# Plantower PMS5003 particulate sensor on a UART: it streams a 32-byte frame a second.
#
# The parser finds frames in whatever bytes arrived (resynchronising on the 0x42 0x4D
# start), checks the length field and the checksum, and keeps the newest good frame.
from micropython import const

_FRAME = const(32)


# (pm1, pm2_5, pm10) in ug/m3 (atmospheric environment) from one frame, or None if bad
def decode(frame):
    if len(frame) != _FRAME or frame[0] != 0x42 or frame[1] != 0x4D or frame[2:4] != b"\x00\x1c":
        return None
    if sum(frame[:30]) & 0xFFFF != (frame[30] << 8) | frame[31]:
        return None
    return tuple((frame[i] << 8) | frame[i + 1] for i in (10, 12, 14))


class PMS5003:
    def __init__(self, uart):
        self.uart = uart
        self._buf = b""
        self.bad_frames = 0

    # the newest valid reading among the bytes received since the last call, or None
    def poll(self):
        data = self.uart.read()
        if data:
            self._buf = (self._buf + data)[-4 * _FRAME :]
        latest = None
        while True:
            start = self._buf.find(b"\x42\x4d")
            if start < 0 or len(self._buf) - start < _FRAME:
                self._buf = self._buf[start:] if start >= 0 else b""
                return latest
            frame = self._buf[start : start + _FRAME]
            reading = decode(frame)
            if reading is None:
                self.bad_frames += 1
                self._buf = self._buf[start + 2 :]
            else:
                latest = reading
                self._buf = self._buf[start + _FRAME :]
