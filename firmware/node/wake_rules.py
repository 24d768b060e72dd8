# What a water node's wake decides from RTC memory alone (rtcstore.py): the tip log and the
# rain rate over its window, the alarm rule with hysteresis, and the wake sources armed for
# the next deep sleep. One definition for the whole cycle (water.py) and the rain-tip wake
# (tipwake.py), which must agree on every tip and every alarm.
import time

TIPS_KEPT = 60  # tip times in RTC memory: 60 tips in 10 min is 72 mm/h at 0.2 mm a tip


def now_ms():
    # wall time across deep sleep (the RTC keeps running); ticks_ms restarts at each wake
    return time.time_ns() // 1000000


class Alarm:
    """On above `on`, off below `on - hysteresis`: one event per crossing, not one per sample
    while the value wavers around the threshold."""

    def __init__(self, name, active):
        self.name = name
        self.active = active

    def update(self, value, on, hysteresis):
        if value is None:
            return None
        if not self.active and value > on:
            self.active = True
            return True
        if self.active and value < on - hysteresis:
            self.active = False
            return False
        return None


def alarm_change(rtc, name, value, on, hysteresis):
    """The alarm `name` (its state kept in `rtc`) given `value`: True raised, False cleared,
    None unchanged. Nothing is kept: the change is the caller's to commit (queue_alarm) once
    its event is safely queued, and a tip wake asks before it commits to being short."""
    return Alarm(name, rtc.get("alarms", {}).get(name, False)).update(value, on, hysteresis)


def queue_alarm(rtc, name, on, queue):
    """Queue an alarm's event (`queue()`, which puts it in the outbox), then keep its new
    state in `rtc`. An event that could not be queued (`queue` raises) leaves the alarm as
    it was, so the next wake sees the crossing again and sends it: an alarm kept as raised
    whose event was lost would never be sent (and its clearing would be the first news)."""
    queue()
    active = rtc.get("alarms", {})
    active[name] = on
    rtc.set("alarms", active)


def rise_rate(rtc, metres, now, min_span_ms):
    """The water's rise in m/h from the reference sample kept in `rtc` ("lv" m at "lt" ms)
    to `metres` at `now`, or None (no reference yet, or less than `min_span_ms` since it).
    The reference moves to this sample only when a rate was taken (or the clock went back):
    over a short span the ADC's noise is a rate (3 mV, 7.8 mm, in 10 s is 2.8 m/h), so a
    sample off the schedule (a cover wake seconds after a report) must not be the base of one
    nor be one."""
    last, last_t = rtc.get("lv"), rtc.get("lt")
    rise = None
    if last is not None and now >= last_t:
        if now - last_t < max(1, min_span_ms):
            return None
        rise = (metres - last) * 3600000 / (now - last_t)
    rtc.set("lv", metres)
    rtc.set("lt", now)
    return rise


def record_tips(rtc, now):
    """The times of the tips counted since the last look (RTC memory keeps the last
    TIPS_KEPT): the rain rate is counted from them."""
    tips = rtc.get("tips", 0)
    new = tips - rtc.get("seen", tips)
    rtc.set("seen", tips)
    if new > 0:
        times = rtc.get("tt", []) + [now] * min(new, TIPS_KEPT)
        rtc.set("tt", times[-TIPS_KEPT:])


def rain_rate(rtc, now, mm_per_tip, window_s):
    """mm/h over the last `window_s`, from the tip times kept."""
    since = now - window_s * 1000
    n = sum(1 for t in rtc.get("tt", []) if t > since)
    return n * mm_per_tip * 3600 / window_s


def cover_news(contact_open, rtc):
    # the cover's contact open while its alarm is off: the opening must be reported now
    return contact_open and not rtc.get("alarms", {}).get("cover_open", False)


def deep_sleep(rtc, ms, rain_pin, rain_closed, cover_pin, cover_open):
    """Arm the wake sources, keep `rtc` in RTC memory, and deep sleep for `ms` (never
    returns). A contact at its wake level would wake the chip at once, again and again: a
    stuck reed or a cover left open wakes it on the timer only."""
    import esp32
    import machine

    if rain_pin.value() != rain_closed:
        esp32.wake_on_ext0(rain_pin, rain_closed)
    else:
        esp32.wake_on_ext0(None, esp32.WAKEUP_ALL_LOW)
    if not cover_open:
        esp32.wake_on_ext1([cover_pin], esp32.WAKEUP_ANY_HIGH)
    else:
        esp32.wake_on_ext1([], esp32.WAKEUP_ANY_HIGH)  # None would keep the cover's pin
    rtc.save()
    print("water: asleep for %d ms" % ms)
    machine.deepsleep(ms)
