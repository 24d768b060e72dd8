# What the water node keeps across deep sleep: a small map in RTC slow memory
# (machine.RTC().memory(): up to 2048 bytes on the ESP32, kept across deep sleep and resets,
# lost when the power goes). JSON, behind a tag, so a foreign or torn content reads as empty.
import json

import machine

_TAG = b"pk1"


class RtcStore:
    def __init__(self):
        self.rtc = machine.RTC()
        raw = self.rtc.memory()
        self.data = {}
        self.fresh = True  # nothing was kept: a power-on, or a first start
        if raw[:3] == _TAG:
            try:
                self.data = json.loads(raw[3:])
                self.fresh = False
            except ValueError:
                pass

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value):
        self.data[key] = value

    def add(self, key, n):
        self.data[key] = self.data.get(key, 0) + n

    def save(self):
        self.rtc.memory(_TAG + json.dumps(self.data).encode())
