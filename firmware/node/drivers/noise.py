# An analog sound-level module on an ADC pin: its output voltage rises linearly with the
# sound level (the common modules give 0.6-2.6 V for 30-130 dB: 50 dB per volt). A reading
# averages `samples` conversions a millisecond apart. A pin stuck at 0 V reads as absent.
from asyncio import sleep_ms


class Noise:
    def __init__(self, adc, db_per_volt=50.0, db_offset=0.0, samples=8):
        self.adc = adc
        self.db_per_volt = db_per_volt
        self.db_offset = db_offset
        self.samples = samples

    # sound level in dB
    async def measure(self):
        total = 0
        for _ in range(self.samples):
            total += self.adc.read_uv()
            await sleep_ms(1)
        volts = total / self.samples / 1e6
        if volts < 0.01:
            raise OSError("noise sensor: no signal on the ADC pin")
        return volts * self.db_per_volt + self.db_offset
