# The loop's own health: wakes every TICK_MS, measures how late it woke, and feeds the
# hardware watchdog only from here, so the WDT resets the board when the scheduler stops
# making progress (a hung task) and never while it is healthy.
#
# A wake-up later than `warn_ms` (ESPHome's 30 ms budget) means some task ran that long
# without awaiting; it is counted and logged (at most one line per 10 s, with the count and
# worst case since the last line) so a slow driver shows up in the field log.
import time

TICK_MS = 10
LOG_EVERY_MS = 10000


class LoopWatch:
    def __init__(self, wdt=None, warn_ms=30):
        self.wdt = wdt
        self.warn_ms = warn_ms
        self.stalls = 0
        self.worst_ms = 0
        self._unlogged = 0
        self._unlogged_worst = 0
        self._logged_at = None

    def _stalled(self, late, now):
        self.stalls += 1
        self.worst_ms = max(self.worst_ms, late)
        self._unlogged += 1
        self._unlogged_worst = max(self._unlogged_worst, late)
        if self._logged_at is None or time.ticks_diff(now, self._logged_at) >= LOG_EVERY_MS:
            print(
                "polekit: warning: the loop was blocked for %d ms (%d time(s) over %d ms): "
                "a task ran without awaiting" % (self._unlogged_worst, self._unlogged, self.warn_ms)
            )
            self._logged_at = now
            self._unlogged = 0
            self._unlogged_worst = 0

    async def run(self):
        from asyncio import sleep_ms

        last = time.ticks_ms()
        while True:
            if self.wdt:
                self.wdt.feed()
            await sleep_ms(TICK_MS)
            now = time.ticks_ms()
            late = time.ticks_diff(now, last) - TICK_MS
            last = now
            if late > self.warn_ms:
                self._stalled(late, now)
