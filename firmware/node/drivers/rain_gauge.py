# A tipping-bucket rain gauge: a reed contact closes once per tip (`mm_per_tip` of rain).
#
# Tips are counted by a pin interrupt while the node is awake and by the wake itself while it
# sleeps: the contact is the chip's EXT0 wake source, so a tip during deep sleep starts the
# chip, which counts that tip (`woke_by_tip`) and sleeps again once the contact has opened
# (EXT0 is a level: sleeping on a closed contact would wake at once and count it twice).
# The count lives in `store` (RTC memory, rtcstore.py) so deep sleep keeps it.
#
# Debounce: a reed chatters for a few ms when it makes and breaks. A closing edge counts only
# when the contact has been open for `debounce_ms` before it and no tip was counted in the
# last `debounce_ms` (a bucket cannot tip twice that fast), so a bouncing contact is one tip.
import time

import machine


class RainGauge:
    def __init__(self, pin, store, mm_per_tip=0.2, active_low=True, debounce_ms=40):
        self.pin = pin
        self.store = store
        self.mm_per_tip = mm_per_tip
        self.closed = 0 if active_low else 1
        self.debounce_ms = debounce_ms
        now = time.ticks_ms()
        # an open contact at start has been open for long enough: its first closing counts
        past = time.ticks_add(now, -debounce_ms)
        self._opened_at = past if pin.value() != self.closed else None
        self._counted_at = past
        trigger = machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING
        pin.irq(self._edge, trigger)

    def _edge(self, pin):
        now = time.ticks_ms()
        if pin.value() != self.closed:
            self._opened_at = now
            return
        opened = self._opened_at
        self._opened_at = None
        if opened is None or time.ticks_diff(now, opened) < self.debounce_ms:
            return  # chatter: the contact was not open long enough
        if time.ticks_diff(now, self._counted_at) < self.debounce_ms:
            return
        self._counted_at = now
        self.store.add("tips", 1)

    def woke_by_tip(self):
        # the tip that woke the chip closed the contact before this code ran
        self._counted_at = time.ticks_ms()
        self.store.add("tips", 1)

    @property
    def tips(self):
        return self.store.get("tips", 0)

    @property
    def rain_mm(self):
        return self.tips * self.mm_per_tip

    def is_open(self):
        return self.pin.value() != self.closed

    # wait (up to limit_ms) until the contact has been open for debounce_ms: safe to sleep
    async def settle(self, limit_ms=2000):
        from asyncio import sleep_ms

        start = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), start) < limit_ms:
            opened = self._opened_at
            if self.is_open() and (
                opened is None or time.ticks_diff(time.ticks_ms(), opened) >= self.debounce_ms
            ):
                return True
            await sleep_ms(10)
        return False

    def stop(self):
        self.pin.irq(None)
