# A pulse-output flow meter (a Hall turbine): `pulses_per_litre` pulses a litre. Pulses are
# counted by a pin interrupt while the node is awake and powers the meter; the rate is the
# pulses in a gate window. While the node sleeps the meter is off, so the volume between
# wakes is integrated from the rates measured at each end (trapezoids): docs/firmware.md says
# what that misses and when a site needs the ULP counter instead.
import time
from asyncio import sleep_ms

import machine


class FlowMeter:
    def __init__(self, pin, pulses_per_litre, power=None):
        self.pin = pin
        self.k = pulses_per_litre
        self.power = power
        self.pulses = 0
        pin.irq(self._pulse, machine.Pin.IRQ_RISING)

    def _pulse(self, pin):
        self.pulses += 1

    # flow in L/min over a gate of gate_ms
    async def measure(self, gate_ms=1000):
        if self.power is not None and not self.power.value():
            self.power.value(1)
            await sleep_ms(50)  # the turbine's electronics start
        start_pulses = self.pulses
        start = time.ticks_ms()
        await sleep_ms(gate_ms)
        elapsed = time.ticks_diff(time.ticks_ms(), start)
        pulses = self.pulses - start_pulses
        return pulses / self.k / (elapsed / 60000) if elapsed > 0 else 0.0

    def stop(self):
        self.pin.irq(None)
