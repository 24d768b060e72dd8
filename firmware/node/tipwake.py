# The rain-tip wake, short. A tip during deep sleep wakes the chip (EXT0); unless a report
# or an alarm is due, all that wake has to do is count the tip in RTC memory, wait for the
# contact to open and sleep again. The whole cycle (water.py) would first read the
# settings, the board and the state from flash and build every driver (the accelerometer
# over I2C included) before it knows the wake was only a tip, and a storm day has ~590 of
# them (bench/battery.py; docs/firmware.md has the times). This reads RTC memory only:
# each whole cycle leaves there, as it goes to sleep, what a tip wake needs ("tipwake": the
# rain and cover pins, the bucket, the rain alarm's settings). Without it (a first start,
# a power cut) the whole cycle runs, as it does when the tip wake finds a report due, the
# rain alarm changing with this tip, or the cover's contact newly open.
import gc
import time
from asyncio import sleep_ms

import machine

from .drivers.rain_gauge import RainGauge
from .rtcstore import RtcStore
from .wake_rules import alarm_change, cover_news, deep_sleep, now_ms, rain_rate, record_tips


class TipWake:
    """A tip already counted (in RAM: kept at sleep); `finish()` ends the wake."""

    def __init__(self, rtc, gauge, cover_pin, cover_low, rate, boot_ms):
        self.rtc = rtc
        self.boot_ms = boot_ms
        self.gauge = gauge
        self.cover_pin = cover_pin
        self.cover_low = cover_low
        self.rate = rate

    async def finish(self):
        # tips while awake count by the gauge's interrupt; sleeping on a closed contact
        # would wake it again at once and count this tip twice
        rtc = self.rtc
        gauge = self.gauge
        await gauge.settle()
        record_tips(rtc, now_ms())
        gauge.stop()
        gc.collect()
        await sleep_ms(0)  # where the emulated board collects (the chip already has)
        heap_min = gc.mem_free()
        awake_ms = time.ticks_ms()
        rtc.set("awake_ms", awake_ms)
        rtc.set("heap_min", heap_min)
        # the same line as the whole cycle's (water.py), so a log reads alike
        print(
            'water cycle {"cycle": %d, "wake": %d, "tips": %d, "rain_mm_h": %s, '
            '"reported": false, "alarms": [], "sent": 0, "held": %d, "awake_ms": %d, '
            '"heap_min": %d, "boot_ms": %d, "short": true}'
            % (
                rtc.get("cycle"),
                machine.EXT0_WAKE,
                rtc.get("tips", 0),
                round(self.rate, 2),
                rtc.get("held", 0),
                awake_ms,
                heap_min,
                self.boot_ms,
            )
        )
        cover_open = bool(self.cover_pin.value()) != self.cover_low
        ms = max(1000, rtc.get("next") - now_ms())
        deep_sleep(rtc, ms, gauge.pin, gauge.closed, self.cover_pin, cover_open)


def start(boot_ms=0):
    """A TipWake when this EXT0 wake is only a rain tip, its tip counted; None when the whole
    cycle must run (nothing kept for a tip wake, a report due, an alarm to send); `boot_ms`:
    ticks_ms when the firmware started (the summary line says it). Nothing
    is kept in RTC memory before it says so: the whole cycle then counts the tip itself."""
    rtc = RtcStore()
    kept = rtc.get("tipwake")
    if kept is None:
        return None
    rain_pin, closed, mm_per_tip, window_s, rain_mm_h, hysteresis, cover_pin, cover_low = kept
    now = now_ms()
    if now >= rtc.get("next", 0):
        return None
    cover = machine.Pin(cover_pin, machine.Pin.IN)
    if cover_news(bool(cover.value()) != cover_low, rtc):
        return None
    gauge = RainGauge(machine.Pin(rain_pin, machine.Pin.IN), rtc, mm_per_tip, closed == 0)
    gauge.woke_by_tip()
    record_tips(rtc, now)
    rate = rain_rate(rtc, now, mm_per_tip, window_s)
    if alarm_change(rtc, "rain_heavy", rate, rain_mm_h, hysteresis) is not None:
        gauge.stop()
        return None
    rtc.add("cycle", 1)
    return TipWake(rtc, gauge, cover, cover_low, rate, boot_ms)
