# Sensirion SHT3x temperature/humidity sensor on I2C (single-shot, high repeatability).
#
# A reading is checked with the sensor's CRC-8 (polynomial 0x31, init 0xFF): a corrupt
# transfer raises ValueError, an absent sensor OSError (ENODEV/ETIMEDOUT) from the bus.
from asyncio import sleep_ms

from micropython import const

_MEASURE = b"\x24\x00"  # single shot, high repeatability, no clock stretching
_MEASURE_MS = const(16)


def crc8(data):
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


# Decode a 6-byte measurement: (temperature in Cel, relative humidity in %RH).
def decode(raw):
    if len(raw) != 6 or crc8(raw[0:2]) != raw[2] or crc8(raw[3:5]) != raw[5]:
        raise ValueError("SHT3x CRC mismatch")
    t = -45 + 175 * ((raw[0] << 8) | raw[1]) / 65535
    h = 100 * ((raw[3] << 8) | raw[4]) / 65535
    return t, h


class SHT3x:
    def __init__(self, i2c, address=0x44):
        self.i2c = i2c
        self.address = address
        self._buf = bytearray(6)

    # (temperature Cel, humidity %RH), waiting for the conversion without blocking others
    async def measure(self):
        self.i2c.writeto(self.address, _MEASURE)
        await sleep_ms(_MEASURE_MS)
        self.i2c.readfrom_into(self.address, self._buf)
        return decode(self._buf)
