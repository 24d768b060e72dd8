# A 4-20 mA water-level pressure transducer read through a shunt resistor on an ADC pin.
#
# 4 mA is 0 m of water over the sensor, 20 mA is `range_m`. NAMUR NE 43 keeps 3.8-20.5 mA
# for measurements: below 3.8 mA the loop is open (a cut cable, a dead sensor, no power) and
# above 20.5 mA the sensor is over its range or shorted. Either is reported as a fault, never
# as a level: 0 mA must not read as "dry". The loop is powered only while the node is awake
# (a transducer draws at least 4 mA): `power` (a Pin) switches it, and the reading waits
# `warmup_ms` for the output to settle.
from asyncio import sleep_ms

OPEN_LOOP_MA = 3.8
OVER_RANGE_MA = 20.5


class LoopLevel:
    def __init__(self, adc, shunt_ohm, range_m, power=None, warmup_ms=0, samples=8):
        self.adc = adc
        self.shunt_ohm = shunt_ohm
        self.range_m = range_m
        self.power = power
        self.warmup_ms = warmup_ms
        self.samples = samples
        self.current_ma = 0.0

    # (metres, None) or (None, "open_loop" | "over_range"); current_ma keeps the last current
    async def measure(self):
        if self.power is not None and not self.power.value():
            self.power.value(1)
            await sleep_ms(self.warmup_ms)
        total = 0
        for _ in range(self.samples):
            total += self.adc.read_uv()
            await sleep_ms(1)
        self.current_ma = total / self.samples / self.shunt_ohm / 1000
        if self.current_ma < OPEN_LOOP_MA:
            return None, "open_loop"
        if self.current_ma > OVER_RANGE_MA:
            return None, "over_range"
        metres = (self.current_ma - 4) / 16 * self.range_m
        return max(0.0, metres), None
