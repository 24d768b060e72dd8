# ROHM BH1750 ambient light sensor on I2C (one-time high-resolution mode).
from asyncio import sleep_ms

from micropython import const

_POWER_ON = b"\x01"
_ONE_TIME_HIGH_RES = b"\x20"
_MEASURE_MS = const(180)


class BH1750:
    def __init__(self, i2c, address=0x23):
        self.i2c = i2c
        self.address = address

    # illuminance in lx
    async def measure(self):
        self.i2c.writeto(self.address, _POWER_ON)
        self.i2c.writeto(self.address, _ONE_TIME_HIGH_RES)
        await sleep_ms(_MEASURE_MS)
        raw = self.i2c.readfrom(self.address, 2)
        return ((raw[0] << 8) | raw[1]) / 1.2
