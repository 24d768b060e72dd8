# Analog Devices ADXL345 accelerometer on I2C, used as a tilt sensor: the angle between
# the pole's axis (the sensor's z axis) and gravity, in degrees.
import math

from micropython import const

_DEVID = const(0x00)
_POWER_CTL = const(0x2D)
_DATA_FORMAT = const(0x31)
_DATAX0 = const(0x32)
_ID = const(0xE5)


def _s16(lo, hi):
    v = lo | (hi << 8)
    return v - 65536 if v & 0x8000 else v


class ADXL345:
    def __init__(self, i2c, address=0x53):
        self.i2c = i2c
        self.address = address
        self._buf = bytearray(6)
        self.ready = False

    # check the chip id and start measuring (full resolution); raises OSError if absent
    def start(self):
        if self.i2c.readfrom_mem(self.address, _DEVID, 1)[0] != _ID:
            raise OSError("ADXL345 id mismatch")
        self.i2c.writeto_mem(self.address, _DATA_FORMAT, b"\x08")
        self.i2c.writeto_mem(self.address, _POWER_CTL, b"\x08")
        self.ready = True

    # tilt from vertical in degrees (0 = upright)
    async def measure(self):
        if not self.ready:
            self.start()
        self.i2c.readfrom_mem_into(self.address, _DATAX0, self._buf)
        b = self._buf
        x, y, z = _s16(b[0], b[1]), _s16(b[2], b[3]), _s16(b[4], b[5])
        if x == 0 and y == 0 and z == 0:
            raise ValueError("ADXL345 reads no gravity")
        return math.degrees(math.atan2(math.sqrt(x * x + y * y), z))
