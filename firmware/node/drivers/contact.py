# A dry contact on a GPIO (door, water probe, smoke relay, SOS button), debounced.
#
# The level must hold for `debounce_ms` before the state changes; `active_low` inverts it.
# For buttons, `press_ms` measures how long the last press lasted (short/long press).
import time


class Contact:
    def __init__(self, pin, active_low=False, debounce_ms=30):
        self.pin = pin
        self.active_low = active_low
        self.debounce_ms = debounce_ms
        self.active = self._level()
        self._candidate = self.active
        self._since = time.ticks_ms()
        self._pressed_at = None
        self.press_ms = 0

    def _level(self):
        return bool(self.pin.value()) != self.active_low

    # sample the pin; True when the debounced state changed
    def update(self, now=None):
        now = time.ticks_ms() if now is None else now
        level = self._level()
        if level != self._candidate:
            self._candidate = level
            self._since = now
            return False
        if level != self.active and time.ticks_diff(now, self._since) >= self.debounce_ms:
            self.active = level
            if level:
                self._pressed_at = now
            elif self._pressed_at is not None:
                self.press_ms = time.ticks_diff(now, self._pressed_at)
            return True
        return False
