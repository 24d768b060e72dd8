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
# and notify). Settings apply in the main loop, not in the radio's interrupt. A node
# without a bind key takes them from any central in range (docs/gateway.md says so).
#
# With a `bindkey` (32 hex digits) every advert is AES-CCM encrypted as BTHome v2 says. The
# 4-byte counter in the nonce must never repeat under one key, so its top half is an epoch
# kept in /state.json, bumped at every start (and when the low half wraps) and written
# (atomically, see state.py) before its first use. Settings must then be signed with the
# key for the node's current challenge (signed.py); anything else is refused, counted
# ("rejected" in STATUS) and answered with the reason. A signed write may carry "after":
# the last counter the gateway accepted; a node whose counter is not past it (its state
# was lost or rolled back, so the gateway refuses its adverts as replays) moves its epoch
# past it: forward only, so a nonce is never reused on purpose.
import asyncio
import random
import time

import machine

from protocols import bthome, cbor

from .drivers.contact import Contact
from .settings import validate
from .signed import MAX_BYTES, open_signed
from .state import StateFile

STATE_FILE = "/state.json"
EVENT_US = 100000  # an event on the air: ten adverts a second for event_s
SLOW_US = 1000000  # steady state: one advert a second (a CR2032 lasts years at this rate)
EVENTS_WAITING = 8  # events queued behind the one on the air; more are dropped, and said so
LAST_EPOCH = 0xFFFF  # the epoch is the counter's top 16 bits


TRIAL_WDT_MS = 5000  # a version on trial whose loop stops this long is reset (the pole node's)


# the GATT status fields of an update (docs/protocols.md): versions as "MAJOR.MINOR", the
# state and rollback reason as protocols.ota's codes (7 trial, 8 rolled back, 0 idle)
def _versions(boot):
    from .version import VERSION

    state = boot.get("state")
    return {
        "fw_version": "%d.%d" % VERSION,
        "fw_previous": boot.get("previous"),
        "ota_state": 7 if state == "trial" else 8 if state == "rolled_back" else 0,
        "ota_error": 0,
        "ota_rollback": boot.get("rollback", 0),
    }


class CommunityNode:
    # ``boot``: the boot record the boot selector (/main.py) read; None: read it here
    def __init__(self, config, board, boot=None):
        if boot is None:
            from .ota import record

            boot = record.load()
        self.config, problems = validate(config, "ble")
        for line in problems:
            print(line)
        self.board = board
        self.packet_id = 0
        self.key = None
        self.challenge = None  # what the next signed settings write must be signed for
        self.rejected = 0  # settings writes refused
        self.state = StateFile(STATE_FILE)
        self._pending = None  # (conn, settings bytes) written by a central
        self._steady = None  # the latest advert, resumed after a central disconnects
        self._resume = False  # a central disconnected: advertising must restart
        self._events = []  # events waiting for the air, oldest first
        self._held_until = None  # ticks_ms until which the event on the air holds it
        self._ota_inbox = []  # OTA frames (conn, handle, bytes) written by a central
        self.ota = None  # ota_gatt.OtaGatt, made at the first OTA frame
        self.adverts = 0
        self.boot = boot or {}  # the boot record /main.py read (node/ota/record.py)
        self.versions = _versions(self.boot)
        key = self.config.get("bindkey")
        if key is not None:
            try:
                self.key = bytes.fromhex(key)
            except ValueError:
                pass
            if self.key is None or len(self.key) != 16:
                # never fall back to plain adverts when encryption was asked for
                raise ValueError("config: bindkey must be 32 hex digits (16 bytes)")
            self._new_epoch(self.state.get("ble_epoch", 0) + 1)
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
                # OTA (ota_gatt.py): CONTROL and DATA, answered by notifications
                (u(bthome.GATT % bthome.OTA_CONTROL), bluetooth.FLAG_WRITE | bluetooth.FLAG_NOTIFY),
                (u(bthome.GATT % bthome.OTA_DATA), bluetooth.FLAG_WRITE | bluetooth.FLAG_NOTIFY),
            ),
        )
        ((h_settings, h_result, h_status, h_control, h_data),) = self.ble.gatts_register_services(
            (service,)
        )
        self.h_settings, self.h_result, self.h_status = h_settings, h_result, h_status
        self.h_ota = (h_control, h_data)
        # the chip keeps 20 bytes of a write unless told more: a signed write is longer
        self.ble.gatts_set_buffer(self.h_settings, MAX_BYTES)
        self.ble.gatts_set_buffer(h_control, bthome.OTA_WRITE)
        self.ble.gatts_set_buffer(h_data, bthome.OTA_WRITE)
        self.ble.irq(self._irq)
        if self.key is not None:
            self._new_challenge()
        self._status()

    def _irq(self, event, data):
        if event == 3 and data[1] == self.h_settings:  # _IRQ_GATTS_WRITE
            self._pending = (data[0], self.ble.gatts_read(self.h_settings))
        elif event == 3 and data[1] in self.h_ota:
            # an OTA frame: queued for the loop; a central keeps fewer than OTA_QUEUE in
            # flight, and one that sends more loses the rest and is told where to resume
            if len(self._ota_inbox) < bthome.OTA_QUEUE:
                self._ota_inbox.append((data[0], data[1], self.ble.gatts_read(data[1])))
        elif event == 2:  # _IRQ_CENTRAL_DISCONNECT: the chip stopped advertising on connect
            self._resume = True

    def _status(self):
        status = {
            "lamp_level": self.lamp.level if self.lamp else None,
            "advert_s": self.config["advert_s"],
            "packet_id": self.packet_id,
            "rejected": self.rejected,
        }
        status.update(self.versions)
        if self.key is not None:
            status["challenge"] = self.challenge
            status["counter"] = self.epoch << 16 | self.counter
        self.ble.gatts_write(self.h_status, cbor.dumps(status))

    def _new_challenge(self):
        # 4 bytes that never repeat while the epoch is kept, 4 that a lost state cannot
        # bring back (the ESP32 port seeds `random` from its hardware RNG at boot)
        self.challenge = self._next_counter().to_bytes(4, "big") + random.getrandbits(32).to_bytes(
            4, "big"
        )

    # apply settings a central wrote; the result is notified back to it
    def _apply(self, conn, raw):
        try:
            after = None
            if self.key is None:
                changes = cbor.loads(raw)
                if not isinstance(changes, dict) or not changes:
                    raise ValueError('settings must be a map like {"lamp_level": 40}')
            else:
                try:
                    changes, after = open_signed(raw, self.key, self.challenge)
                except ValueError:
                    self.rejected += 1
                    raise
                self._new_challenge()  # this write is spent: a replay of it fails
            for key, value in changes.items():
                if key == "lamp_level" and self.lamp is not None:
                    ok = isinstance(value, int) and 0 <= value <= 100
                elif key == "advert_s":
                    ok = isinstance(value, int) and 1 <= value <= 3600
                else:
                    raise ValueError("%s cannot be set on this node" % key)
                if not ok or isinstance(value, bool):
                    raise ValueError("%s = %r is out of range" % (key, value))
            if after is not None and after >= self.epoch << 16 | self.counter:
                self._new_epoch((after >> 16) + 1)  # forward only: past what was accepted
            for key, value in changes.items():
                if key == "lamp_level" and self.lamp is not None:  # checked above
                    self.lamp.set(value)
                    self.state.set("lamp_level", value)
                else:
                    self.config[key] = value
            result = {"ok": True, "set": changes}
            if self.key is not None:
                result["counter"] = self.epoch << 16 | self.counter
        except (ValueError, TypeError) as e:
            result = {"ok": False, "error": str(e)}
        self._status()
        self.ble.gatts_notify(conn, self.h_result, cbor.dumps(result))

    def _ota_step(self):
        if self.ota is None:
            from .ota_gatt import OtaGatt

            self.ota = OtaGatt(
                self.ble, self.h_ota[0], self.h_ota[1], self._ota_session, self._reset
            )
        self.ota.step(self._ota_inbox)

    def _ota_session(self, on_heap):
        from .ota.session import OtaSession
        from .version import VERSION

        return OtaSession(
            self.board["name"], "%d.%d" % VERSION, self._reset, on_heap=on_heap, down=self._down
        )

    # the sensors not working now (the self-test's names): the new version's trial does
    # not hold them against it (ota/trial.py, "known_down")
    def _down(self):
        volts = self.battery_adc.read_uv()
        return ["battery"] if volts < 10000 else []  # selftest.py's 0 V limit

    # the version on trial confirmed itself (ota/trial.py): the status says so from now on
    def ota_confirmed(self, rec):
        self.boot = rec
        self.versions = _versions(rec)
        self._status()
        if self.ota is not None:
            self.ota.confirmed()

    # a planned reset (into a new version): the state on flash first
    def _reset(self):
        self.state.flush()
        machine.reset()

    # adverts the radio took: what the trial of a new version watches (BLE has no answers)
    def uplink_exchanges(self):
        return self.adverts

    def _new_epoch(self, epoch):
        if epoch > LAST_EPOCH:  # wrapping would reuse nonces: only a new key helps
            raise ValueError("bindkey: all %d epochs are used; provision a new key" % LAST_EPOCH)
        self.epoch = epoch
        self.state.set("ble_epoch", epoch, now=True)  # on flash before any advert uses it
        self.counter = 0

    # the next never-used counter value (adverts and challenges draw from one sequence)
    def _next_counter(self):
        if self.counter > 0xFFFF:
            self._new_epoch(self.epoch + 1)
        n = self.epoch << 16 | self.counter
        self.counter += 1
        return n

    def battery(self):
        volts = self.battery_adc.read_uv() / 1e6 * self.divider
        # a Li-ion/LiFePO4-ish curve flattened to a line: 3.0 V empty, 4.1 V full
        return volts, max(0, min(100, round((volts - 3.0) / 1.1 * 100)))

    async def advertise(self, values, trigger=False):
        self.packet_id = (self.packet_id + 1) & 0xFF
        if self.key is None:
            sd = bthome.encode(values, packet_id=self.packet_id, trigger=trigger)
        else:
            sd = bthome.encode(
                values, self.packet_id, trigger, self.key, self.mac, self._next_counter()
            )
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
        self.adverts += 1

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
        wdt = None
        if self.boot.get("state") == "trial":
            # a new version confirms itself once its adverts went out for the trial time;
            # the boot selector rolls it back after a crash loop (node/ota/trial.py). The
            # watchdog /main.py armed for its start is re-armed here and fed by this loop
            # alone: a version whose loop hangs is reset by it and rolled back (reason 2)
            from .ota.trial import Trial

            asyncio.create_task(Trial(self.config["ota_trial_s"], self).run())
            wdt = machine.WDT(timeout=TRIAL_WDT_MS)
        last = -1
        while True:
            if wdt is not None:
                wdt.feed()
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
            if self._ota_inbox:
                self._ota_step()
            self.state.tick()
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
