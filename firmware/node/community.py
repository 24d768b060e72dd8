# The community node: SOS button, smoke alarm, battery; BTHome v2 adverts over BLE.
#
# Measurements (battery, smoke state) go out every `advert_s`; an SOS press or a smoke
# alarm goes out at once, flagged trigger-based, with a new packet id so receivers that
# de-duplicate by packet id see each event once. Adverts are repeated a few times (BLE
# has no acknowledgement).
import asyncio
import time

import machine

from protocols import bthome

from .drivers.contact import Contact

DEFAULTS = {"advert_s": 30, "repeat": 3, "long_press_ms": 2000, "name": "polekit"}


class CommunityNode:
    def __init__(self, config, board):
        self.config = dict(DEFAULTS)
        self.config.update({k: v for k, v in config.items() if k in DEFAULTS})
        self.board = board
        self.packet_id = 0
        self.sensors = {s["name"]: s for s in board["sensors"]}
        p = self.sensors["sos"]["params"]
        self.sos = Contact(
            machine.Pin(p["pin"], machine.Pin.IN, machine.Pin.PULL_UP), p.get("active_low", False)
        )
        p = self.sensors["smoke"]["params"]
        self.smoke = Contact(machine.Pin(p["pin"], machine.Pin.IN), p.get("active_low", False))
        p = self.sensors["battery"]["params"]
        self.battery_adc = machine.ADC(machine.Pin(p["pin"]))
        self.divider = p.get("divider", 1.0)
        import bluetooth

        self.ble = bluetooth.BLE()
        self.ble.active(True)

    def battery(self):
        volts = self.battery_adc.read_uv() / 1e6 * self.divider
        # a Li-ion/LiFePO4-ish curve flattened to a line: 3.0 V empty, 4.1 V full
        return volts, max(0, min(100, round((volts - 3.0) / 1.1 * 100)))

    async def advertise(self, values, trigger=False):
        self.packet_id = (self.packet_id + 1) & 0xFF
        data = bthome.advert(
            bthome.encode(values, packet_id=self.packet_id, trigger=trigger),
            name=self.config["name"],
        )
        for _ in range(self.config["repeat"] if trigger else 1):
            self.ble.gap_advertise(100000, data)
            await asyncio.sleep_ms(50)

    def measurements(self):
        volts, percent = self.battery()
        return {"battery": percent, "voltage": round(volts, 3), "smoke": self.smoke.active}

    async def run(self):
        last = -1
        while True:
            if self.sos.update() and not self.sos.active:  # released: short or long press
                press = (
                    "long_press" if self.sos.press_ms >= self.config["long_press_ms"] else "press"
                )
                await self.advertise({"button": press}, trigger=True)
            if self.smoke.update():
                await self.advertise({"smoke": self.smoke.active}, trigger=True)
            now = time.ticks_ms()
            if last < 0 or time.ticks_diff(now, last) >= self.config["advert_s"] * 1000:
                last = now
                await self.advertise(self.measurements())
            await asyncio.sleep_ms(10)
