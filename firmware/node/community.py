# The community node: SOS button, smoke alarm, battery; BTHome v2 adverts over BLE.
#
# Measurements (battery, smoke state) go out every `advert_s`; an SOS press or a smoke
# alarm goes out at once, flagged trigger-based, with a new packet id, so receivers that
# de-duplicate by packet id see each event once. BLE has no acknowledgement, so an event
# holds the air for `event_s` at a fast pace (no measurement advert replaces it meanwhile)
# and events that come while one is on the air wait their turn: a busy scanner that misses
# most adverts still hears every press (docs/firmware.md states the odds).
#
# The gateway writes settings through the polekit GATT service (protocols.bthome.GATT):
# a CBOR map such as {"lamp_level": 40} on SETTINGS; the result goes back on RESULT (read
# and notify). Settings apply in the main loop, not in the radio's interrupt.
#
# With a `bindkey` (32 hex digits) every advert is AES-CCM encrypted as BTHome v2 says. The
# 4-byte counter in the nonce must never repeat under one key, so its top half is a start
# count kept in /state.json and bumped at every start (and when the low half wraps).
import asyncio
import time

import machine

from protocols import bthome, cbor

from .drivers.contact import Contact
from .settings import load_json, save_json, validate

STATE_FILE = "/state.json"
EVENT_US = 100000  # an event on the air: ten adverts a second for event_s
SLOW_US = 1000000  # steady state: one advert a second (a CR2032 lasts years at this rate)
EVENTS_WAITING = 8  # events queued behind the one on the air; more are dropped, and said so


class CommunityNode:
    def __init__(self, config, board):
        self.config, problems = validate(config, "ble")
        for line in problems:
            print(line)
        self.board = board
        self.packet_id = 0
        self.key = None
        self.state = load_json(STATE_FILE, {})
        self._pending = None  # (conn, settings bytes) written by a central
        self._steady = None  # the latest advert, resumed after a central disconnects
        self._resume = False  # a central disconnected: advertising must restart
        self._events = []  # events waiting for the air, oldest first
        self._held_until = None  # ticks_ms until which the event on the air holds it
        key = self.config.get("bindkey")
        if key is not None:
            try:
                self.key = bytes.fromhex(key)
            except ValueError:
                pass
            if self.key is None or len(self.key) != 16:
                # never fall back to plain adverts when encryption was asked for
                raise ValueError("config: bindkey must be 32 hex digits (16 bytes)")
            self._new_epoch()
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
        self.mac = self.ble.config("mac")[1]
        self.lamp = None
        if "lamp" in self.sensors:
            from .drivers.lamp import Lamp

            p = self.sensors["lamp"]["params"]
            self.lamp = Lamp(
                machine.PWM(machine.Pin(p["pwm_pin"])),
                machine.Pin(p["relay_pin"], machine.Pin.OUT),
            )
            self.lamp.set(self.state.get("lamp_level", 0))
        self._gatt()
        name = self.config["name"].encode()[:29]
        self.resp = bytes((len(name) + 1, 0x09)) + name  # scan response: the complete name

    def _gatt(self):
        import bluetooth

        u = bluetooth.UUID
        service = (
            u(bthome.GATT % 0),
            (
                (u(bthome.GATT % 1), bluetooth.FLAG_WRITE),
                (u(bthome.GATT % 2), bluetooth.FLAG_READ | bluetooth.FLAG_NOTIFY),
                (u(bthome.GATT % 3), bluetooth.FLAG_READ),
            ),
        )
        ((self.h_settings, self.h_result, self.h_status),) = self.ble.gatts_register_services(
            (service,)
        )
        self.ble.irq(self._irq)
        self._status()

    def _irq(self, event, data):
        if event == 3 and data[1] == self.h_settings:  # _IRQ_GATTS_WRITE
            self._pending = (data[0], self.ble.gatts_read(self.h_settings))
        elif event == 2:  # _IRQ_CENTRAL_DISCONNECT: the chip stopped advertising on connect
            self._resume = True

    def _status(self):
        self.ble.gatts_write(
            self.h_status,
            cbor.dumps(
                {
                    "lamp_level": self.lamp.level if self.lamp else None,
                    "advert_s": self.config["advert_s"],
                    "packet_id": self.packet_id,
                }
            ),
        )

    # apply settings a central wrote; the result is notified back to it
    def _apply(self, conn, raw):
        try:
            changes = cbor.loads(raw)
            if not isinstance(changes, dict) or not changes:
                raise ValueError('settings must be a map like {"lamp_level": 40}')
            for key, value in changes.items():
                if key == "lamp_level" and self.lamp is not None:
                    ok = isinstance(value, int) and 0 <= value <= 100
                elif key == "advert_s":
                    ok = isinstance(value, int) and 1 <= value <= 3600
                else:
                    raise ValueError("%s cannot be set on this node" % key)
                if not ok or isinstance(value, bool):
                    raise ValueError("%s = %r is out of range" % (key, value))
            for key, value in changes.items():
                if key == "lamp_level" and self.lamp is not None:  # checked above
                    self.lamp.set(value)
                    self.state["lamp_level"] = value
                    save_json(STATE_FILE, self.state)
                else:
                    self.config[key] = value
            result = {"ok": True, "set": changes}
        except (ValueError, TypeError) as e:
            result = {"ok": False, "error": str(e)}
        self._status()
        self.ble.gatts_notify(conn, self.h_result, cbor.dumps(result))

    def _new_epoch(self):
        self.epoch = (self.state.get("ble_epoch", 0) + 1) & 0xFFFF
        self.state["ble_epoch"] = self.epoch
        save_json(STATE_FILE, self.state)  # before any advert uses it
        self.counter = 0

    def battery(self):
        volts = self.battery_adc.read_uv() / 1e6 * self.divider
        # a Li-ion/LiFePO4-ish curve flattened to a line: 3.0 V empty, 4.1 V full
        return volts, max(0, min(100, round((volts - 3.0) / 1.1 * 100)))

    async def advertise(self, values, trigger=False):
        self.packet_id = (self.packet_id + 1) & 0xFF
        if self.key is None:
            sd = bthome.encode(values, packet_id=self.packet_id, trigger=trigger)
        else:
            if self.counter > 0xFFFF:
                self._new_epoch()
            sd = bthome.encode(
                values,
                self.packet_id,
                trigger,
                self.key,
                self.mac,
                self.epoch << 16 | self.counter,
            )
            self.counter += 1
        name = self.config["name"]
        try:
            data = bthome.advert(sd, name)
        except bthome.BTHomeError:  # encrypted adverts leave no room: the name is in resp
            data = bthome.advert(sd)
        # the radio repeats the advert at its interval until told otherwise (same packet
        # id: receivers drop the repeats); an event at the fast pace for event_s
        self._steady = data
        self._held_until = (
            time.ticks_add(time.ticks_ms(), self.config["event_s"] * 1000) if trigger else None
        )
        self.ble.gap_advertise(EVENT_US if trigger else SLOW_US, data, resp_data=self.resp)

    def event(self, values):
        """Queue an event (a press, an alarm) for the air; it goes out once the one on the
        air has had its time."""
        if len(self._events) >= EVENTS_WAITING:
            print("events: %d waiting; %r dropped" % (len(self._events), values))
            return
        self._events.append(values)

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
                self.event({"button": press})
            if self.smoke.update():
                self.event({"smoke": self.smoke.active})
            held = self._held_until is not None
            if self._resume and self._steady is not None:
                self._resume = False
                self.ble.gap_advertise(
                    EVENT_US if held else SLOW_US, self._steady, resp_data=self.resp
                )
            if self._pending is not None:
                conn, raw = self._pending
                self._pending = None
                self._apply(conn, raw)
            now = time.ticks_ms()
            if self._held_until is not None and time.ticks_diff(self._held_until, now) > 0:
                pass  # the event on the air keeps it
            elif self._events:
                await self.advertise(self._events.pop(0), trigger=True)
            elif last < 0 or time.ticks_diff(now, last) >= self.config["advert_s"] * 1000:
                last = now
                await self.advertise(self.measurements())
            elif held:  # the event has had its time: a coin cell's pace again, same advert
                self._held_until = None
                self.ble.gap_advertise(SLOW_US, self._steady, resp_data=self.resp)
            await asyncio.sleep_ms(10)
