# The water-and-lifeline node: a battery node in a manhole or on a riverbank that reports
# straight to the broker (MqttLink over Wi-Fi or NB-IoT) and sleeps deeply in between.
#
# One wake is one cycle: count what woke it (a rain tip is the EXT0 wake itself), sample,
# raise or clear alarms (each with hysteresis, sent at once), report when the report is due,
# flush the outbox, then deep sleep until the next report or a wake source: the rain gauge's
# contact (EXT0, low) or the manhole cover's (EXT1, high). What must outlive the sleep (tip
# count, recent tip times, the last level, alarm states, the next report time, the last
# cycle's awake time and heap low-water mark) is in RTC memory (rtcstore.py); the totals are
# copied to /state.json at each report so a power cut loses at most one report's worth.
#
# A tip wake with nothing else due never gets here: tipwake.py counts it from RTC memory and
# sleeps again (what it needs is left in RTC memory by sleep() below); this cycle runs for a
# tip only when a report is due, the rain alarm changes or the cover opened. The level, flow
# and cover are sampled on timer and cover wakes, i.e. every report: report_s in dry weather,
# storm_report_s while it rains (a tip within the last report_s), so a rising river is seen
# within minutes.
#
# An update (docs/ota.md "Over Wi-Fi HTTP") comes as an `ota` command in a flush: the node
# answers it, keeps it (ota_http.queue) and resets at the end of the wake instead of
# sleeping; the update's work is done in boots of their own (node/ota_wake.py: a wake has
# no heap for it beside the drivers and the MQTT client), which end in the new version.
# That version's trial is its first wake: its self-test, then a cycle whose report the
# broker acknowledges (the boot record then says "confirmed"); if it raises, fails the
# self-test or finds no broker, it asks the boot selector (/main.py) to roll it back, whose
# own watchdog and crash-loop checks stand too. The command's last result (the version's
# status) goes out from a boot of its own after that wake.
#
# The cycle is one asyncio task that yields (`await sleep_ms(0)`, `_breathe`) between its
# steps and between the packs of a flush, and allocates little: on the chip a yield costs
# nothing; on the emulated board (MicroPython's WebAssembly port) garbage is collected only
# at a yield, so a cycle that ran start to sleep without one ran out of heap there
# (docs/hil.md: garbage collection).
import gc
import json
import time
from asyncio import sleep_ms

import machine

from .rtcstore import RtcStore
from .settings import check, validate
from .state import StateFile
from .wake_rules import (
    alarm_change,
    cover_news,
    deep_sleep,
    queue_alarm,
    rain_rate,
    record_tips,
    rise_rate,
)
from .wake_rules import (
    now_ms as _now_ms,
)

STATE_FILE = "/state.json"
DOWN_KEY = "down"  # in the state file: the sensors down at the last sample
PSM_ACTIVE_S = 2  # T3324 asked of the NB-IoT module
TRIAL_WDT_MS = 30000  # a version on trial: its wake, past the flush budget, at most this long
FLUSH_SLICE_MS = 1  # a flush slice sends about one pack: then the cycle yields
SETTABLE = (
    "report_s",
    "storm_report_s",
    "level_high_m",
    "level_hysteresis_m",
    "rise_m_h",
    "rise_hysteresis_m_h",
    "rain_mm_h",
    "rain_hysteresis_mm_h",
    "rain_window_s",
    "tilt_deg",
)


class WaterNode:
    # ``boot``: the boot record /main.py read (None: no update ever ran)
    def __init__(self, config, board, boot_ms=0, boot=None):
        self.boot_ms = boot_ms  # ticks_ms when the firmware started (start.py)
        self.boot = boot or {}
        self.trial = self.boot.get("state") == "trial"  # this version's first wake
        self.wdt = None  # armed for a trial wake
        from .settings import load_json
        from .settings_mqtt import WATER_LIMITS, check_hystereses

        self.config, problems = validate(config, "mqtt")
        state = StateFile(STATE_FILE)
        given = state.get("settings", {})  # what the platform set: over the config
        good, more = check(given, self.config, WATER_LIMITS, ())
        self.config.update(good)
        more += check_hystereses(self.config)  # the platform's settings against the config's
        for line in problems + more:
            print(line)
        self.state = state
        self.board = board
        self.code = self.config.get("device_code", "node")
        self.rtc = RtcStore()
        if self.rtc.fresh:  # a power-on: the totals come back from flash, the rest starts over
            self.rtc.set("tips", state.get("tips", 0))
            self.rtc.set("litres", state.get("litres", 0.0))
        self.heap_min = gc.mem_free()
        self.held = 0  # packs left in the outbox after the flush
        self.clock_shift = 0  # ms the wall clock jumped when the network set it this wake
        self.sensors = {s["name"]: s for s in board["sensors"]}
        self.load_json = load_json
        self._build()

    def _params(self, name):
        return self.sensors[name]["params"]

    def _build(self):
        from . import buses
        from .drivers.adxl345 import ADXL345
        from .drivers.cover import Cover
        from .drivers.flow_meter import FlowMeter
        from .drivers.loop_level import LoopLevel
        from .drivers.rain_gauge import RainGauge

        p = self._params("level")
        self.power = machine.Pin(p["power_pin"], machine.Pin.OUT) if "power_pin" in p else None
        self.level = LoopLevel(
            machine.ADC(machine.Pin(p["pin"])),
            p["shunt_ohm"],
            p["range_m"],
            self.power,
            p.get("warmup_ms", 0),
        )
        p = self._params("rain")
        self.rain = RainGauge(
            machine.Pin(p["pin"], machine.Pin.IN),
            self.rtc,
            p.get("mm_per_tip", 0.2),
            p.get("active_low", True),
        )
        p = self._params("flow")
        self.flow = FlowMeter(
            machine.Pin(p["pin"], machine.Pin.IN), p["pulses_per_litre"], self.power
        )
        p = self.sensors["cover"]
        bus = next(b for b in self.board["buses"] if b["name"] == p["bus"])
        p = p["params"]
        self.cover = Cover(
            machine.Pin(p["pin"], machine.Pin.IN),
            ADXL345(buses.i2c(bus["params"]), p["address"]),
            p.get("active_low", False),
            self.config["tilt_deg"],
        )
        p = self._params("battery")
        self.battery = machine.ADC(machine.Pin(p["pin"]))
        self.divider = p.get("divider", 1.0)

    async def _breathe(self):
        # a collection, then the heap's low-water mark: the free heap at the cycle's fullest
        # moments (samples taken, packs built, the link and its client up), what is live
        # there, not the garbage a collection would give back
        if self.wdt is not None:
            self.wdt.feed()
        gc.collect()
        await sleep_ms(0)  # where the emulated board collects (the chip already has)
        free = gc.mem_free()
        if free < self.heap_min:
            self.heap_min = free

    # ---- one cycle ---------------------------------------------------------------------

    # the wake, then deep sleep; a version on trial that fails asks for its rollback and
    # resets instead (a reset never returns on the chip; on the emulated board the code
    # after it runs on briefly, but nothing it writes or sends leaves the VM)
    async def run(self):
        try:
            if self.trial:
                # the watchdog /main.py armed for the start, re-armed for the whole wake
                self.wdt = machine.WDT(timeout=self.config["flush_ms"] + TRIAL_WDT_MS)
                from .ota.trial import selftest

                if not await selftest(self.boot, self.state.flush):
                    return  # a rollback asked for: the reset is under way
            await self.cycle()
        except Exception as exc:  # noqa: BLE001 - shown; the node sleeps and tries again
            import sys

            sys.print_exception(exc)
            if self.trial:
                from protocols.ota import RB_EXCEPTION

                from .ota.trial import fail

                fail(RB_EXCEPTION, self.state.flush)  # the boot selector rolls it back
                return
        if self._ota_pending():  # an update's work, or its result: a boot of its own
            self.state.flush()
            machine.reset()
            return
        self.sleep()

    async def cycle(self):
        c = self.config
        rtc = self.rtc
        wake = machine.wake_reason()
        if wake == machine.EXT0_WAKE:
            self.rain.woke_by_tip()
        now = _now_ms()
        record_tips(rtc, now)
        rtc.add("cycle", 1)
        events = []
        rate = rain_rate(rtc, now, self.rain.mm_per_tip, c["rain_window_s"])
        self._alarm("rain_heavy", rate, c["rain_mm_h"], c["rain_hysteresis_mm_h"], events)
        # a report is due on time, or when the cover opened (its EXT1 wake, or found open
        # at a rain tip's wake: tipwake.py then leaves it to this cycle)
        due = (
            rtc.fresh
            or now >= rtc.get("next", 0)
            or wake == machine.EXT1_WAKE
            or cover_news(self.cover.contact_open(), rtc)
            or self.trial  # a new version's first wake: its report is its trial
        )
        values = None
        if due:
            values = await self.sample(now, rate, events)
        await self._breathe()
        sent = 0
        if events or values is not None:
            sent = await self.send(values, events)
            now += self.clock_shift  # the clock was set during the send: `now` moves with it
            self.clock_shift = 0
        await self._breathe()  # the link and its client are gone: this cycle's state is left
        if values is not None:
            interval = c["storm_report_s"] if self._raining(now) else c["report_s"]
            rtc.set("next", now + interval * 1000)
            self.state.set("tips", rtc.get("tips", 0))
            self.state.set("litres", rtc.get("litres", 0.0))
            self.state.flush()
        await self.rain.settle()
        record_tips(rtc, _now_ms())  # tips counted while it was awake
        awake_ms = time.ticks_ms()
        rtc.set("awake_ms", awake_ms)
        rtc.set("heap_min", self.heap_min)
        rtc.set("held", self.held)
        summary = {
            "cycle": rtc.get("cycle"),
            "wake": wake,
            "tips": rtc.get("tips", 0),
            "rain_mm_h": round(rate, 2),
            "reported": values is not None,
            "alarms": [e[0] + (" on" if e[1] else " off") for e in events],
            "sent": sent,
            "held": self.held,
            "awake_ms": awake_ms,
            "heap_min": self.heap_min,
            "boot_ms": self.boot_ms,
        }
        if values is not None:
            summary["values"] = values
        print("water cycle " + json.dumps(summary))

    def _raining(self, now):
        tt = self.rtc.get("tt", [])
        return bool(tt) and now - tt[-1] < self.config["report_s"] * 1000

    def _alarm(self, name, value, on, hysteresis, events):
        # the change is kept in RTC memory only once its event is in the outbox (send)
        changed = alarm_change(self.rtc, name, value, on, hysteresis)
        if changed is not None:
            events.append((name, changed, value))

    async def sample(self, now, rate_mm_h, events):
        c = self.config
        rtc = self.rtc
        values = {}
        metres, fault = await self.level.measure()
        await sleep_ms(0)
        if fault is None:
            values["water_level"] = round(metres, 4)
            # the rate over at least one report interval: a sample off the schedule (a cover
            # wake, a command's early report) neither is a rate nor moves its reference
            span_ms = min(c["report_s"], c["storm_report_s"]) * 1000
            rise = rise_rate(rtc, metres, now, span_ms)
            self._alarm("level_high", metres, c["level_high_m"], c["level_hysteresis_m"], events)
            self._alarm("level_rising", rise, c["rise_m_h"], c["rise_hysteresis_m_h"], events)
        else:
            values["level_fault"] = fault
        l_min = await self.flow.measure(c["flow_gate_ms"])
        if self.power is not None:
            self.power.value(0)  # the loop and the meter draw mA: off until the next sample
        # volume: what was counted while awake, plus the sleep between samples as a trapezoid
        litres = rtc.get("litres", 0.0) + self.flow.pulses / self.flow.k
        last_q, last_qt = rtc.get("q"), rtc.get("qt")
        if last_q is not None and now > last_qt:
            litres += (last_q + l_min) / 2 * (now - last_qt) / 60000
        rtc.set("litres", litres)
        rtc.set("q", l_min)
        rtc.set("qt", now)
        await sleep_ms(0)
        opened, tilt = await self.cover.measure()
        self._alarm("cover_open", 1 if opened else 0, 0.5, 0, events)
        values["rain"] = round(self.rain.rain_mm / 1000, 6)
        values["rain_rate"] = rate_mm_h / 3600000
        values["flow"] = l_min / 60000
        values["volume"] = round(litres / 1000, 6)
        values["cover_open"] = bool(opened)
        if tilt is not None:
            values["tilt"] = round(tilt, 1)
        values["voltage"] = round(self.battery.read_uv() / 1e6 * self.divider, 3)
        # the sensors down now: an update's trial self-test does not hold them against the
        # new version (ota/trial.py "known_down"; node/ota_wake.py reads this)
        down = [n for n, bad in (("level", fault), ("cover", tilt is None)) if bad]
        self.state.set(DOWN_KEY, down)
        if rtc.get("awake_ms") is not None:  # the previous cycle's, whole (this one is not over)
            values["awake_time"] = rtc.get("awake_ms") / 1000
            values["free_heap"] = rtc.get("heap_min")
        return values

    # ---- the uplink --------------------------------------------------------------------

    async def send(self, values, events):
        """Alarms and the report into the outbox, then the flush: packs sent (0 when the
        uplink is away: the outbox keeps them for the next wake). Each alarm's new state is
        kept only once its event is in the outbox: if the link cannot be built or the event
        not queued (an exception ends the cycle), the alarm stays as it was and the next wake
        sees the crossing again and sends it."""
        try:
            link = self._link()
        except ImportError as e:
            print("water: no uplink in this bundle (%s); values stay on the console" % e)
            self._console_alarms(events)
            return 0
        except ValueError as e:  # the broker or the access point not set: said, not sent
            print("water: %s" % e)
            self._console_alarms(events)
            return 0
        for name, on, _value in events:
            body = {"alarm": name, "alarm_on": on}
            quantity = {"level_high": "water_level", "level_rising": "water_level"}.get(name)
            if quantity and "water_level" in (values or {}):
                body[quantity] = values["water_level"]
            queue_alarm(self.rtc, name, on, lambda b=body: link.event(self.code, b))
            await sleep_ms(0)
        if values is not None:
            link.report(self.code, values)
        await self._breathe()
        sent = await self.flush(link)
        if self.trial and not self._trial_verdict(link, sent):
            return sent  # a rollback asked for: the reset is under way
        from .uplinks.mqtt_link import unix_time

        if unix_time() is None:  # no clock since power-on: the network's (NTP or AT+CCLK?)
            from .clock import set_clock

            before = _now_ms()
            if set_clock(link.transport):
                self._clock_moved(_now_ms() - before)
        link.sleep()  # commands the modem took while disconnecting are answered, not lost
        if link.transport.status().get("psm"):
            self.rtc.set("psm", True)  # the next wake finds the modem asleep
        return sent

    # ---- an update (node/ota_http.py) -------------------------------------------------

    def _ota_pending(self):
        from .ota import PULL_KEY, REPORT_KEY

        return bool(self.state.get(PULL_KEY) or self.state.get(REPORT_KEY))

    # answered at once, run from the end of this wake on (node/ota_wake.py)
    def _ota_command(self, code, body):
        if self.config["uplink"] != "wifi":
            raise ValueError(
                "ota: this node's uplink is NB-IoT, which carries no HTTP pull; update it "
                "by cable (polekit deploy)"
            )
        if self._ota_pending():
            raise ValueError("ota: an update is under way on this node; send it again later")
        from .ota_http import queue

        return queue(self.state, code, body)

    # a new version's trial, once its first flush is over: the broker took everything the
    # outbox held (this wake's report last), or the version is rolled back (reason 5)
    def _trial_verdict(self, link, sent):
        from .ota import trial

        if sent and not self.held:
            trial.confirm()
            self.trial = False
            return True
        fault = link.last_fault
        print("polekit: trial: the broker did not take this wake's report (%s)" % fault)
        from protocols.ota import RB_UPLINK

        trial.fail(RB_UPLINK, self.state.flush)
        return False

    def _console_alarms(self, events):
        # no uplink to send on (none in the bundle, or none configured): the cycle's line on
        # the console is where the alarms go, so they are kept as said, not said every wake
        for name, on, _value in events:
            queue_alarm(self.rtc, name, on, lambda: None)

    def _clock_moved(self, delta_ms):
        # the wall clock jumped from the chip's power-on epoch (2000) to the network's time:
        # what RTC memory holds as wall times (the next report, the last level and flow
        # samples, the rain tips) moves with it, or the next report would be due at once
        # and every tip would look decades old (the rain rate alarm would clear)
        rtc = self.rtc
        for key in ("next", "lt", "qt"):
            if rtc.get(key) is not None:
                rtc.set(key, rtc.get(key) + delta_ms)
        rtc.set("tt", [t + delta_ms for t in rtc.get("tt", [])])
        self.clock_shift += delta_ms

    async def flush(self, link):
        # the outbox a pack or so at a time, yielding in between, within flush_ms; the link
        # stays up between slices and closes at the end (a DISCONNECT: no will, the node
        # is asleep, not lost). A link fault ends it: the rest waits for the next wake
        deadline = time.ticks_add(time.ticks_ms(), self.config["flush_ms"])
        sent = 0
        slice_ms = FLUSH_SLICE_MS
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            n = link.flush(min(slice_ms, max(0, left)), stay=True)
            sent += n
            # a slice the connect or the commands took whole gets twice the time next
            slice_ms = FLUSH_SLICE_MS if n else slice_ms * 2
            await self._breathe()
            if not link.connected or not len(link.outbox) or left <= 0:
                break
        if link.connected:
            sent += link.flush(0)  # the commands that came last, then the DISCONNECT
        self.held = len(link.outbox)
        return sent

    def _link(self):
        # the link from the MQTT uplink's settings (settings_mqtt.MQTT_*), whichever radio:
        # ValueError names a missing broker or access point
        from .uplinks.mqtt_link import from_settings

        c = self.config
        if c["uplink"] == "nbiot":
            from . import buses
            from .uplinks import nbiot

            bus = next(b for b in self.board["buses"] if b["name"] == "modem")["params"]
            transport = nbiot.from_settings(
                c,
                buses.uart(bus, bus.get("baudrate", 9600), timeout=50),
                machine.Pin(bus["pwrkey"], machine.Pin.OUT),
                # out of coverage, the cycle gives up within its flush budget, not 2 minutes
                attach_timeout_ms=c["flush_ms"],
                # reachable only briefly after a flush: commands wait at the broker (a
                # persistent session) for the next wake, so the module sleeps at once
                psm_active_s=PSM_ACTIVE_S,
                asleep=self.rtc.get("psm", False),  # PSM from the last cycle: PWRKEY wakes it
            )
            self.rtc.set("psm", False)
        else:
            from .uplinks import wifi_mqtt

            transport = wifi_mqtt.from_settings(c)
        link = from_settings(c, transport)
        link.on_command(self.on_command)
        return link

    def on_command(self, code, body):
        """A platform command: {"id": ..., "set": {"report_s": 600}} changes settings, kept
        on flash; the new report interval applies from this wake on. {"id": ..., "ota":
        URL} fetches a signed update once the flush is over (node/ota_http.py)."""
        if "ota" in body:
            return self._ota_command(code, body)
        from .settings_mqtt import WATER_LIMITS, hysteresis_faults

        changes = body.get("set")
        if not isinstance(changes, dict) or not changes:
            return {"ok": False, "error": 'give settings like {"set": {"report_s": 600}}'}
        unknown = [k for k in changes if k not in SETTABLE]
        if unknown:
            return {"ok": False, "error": "cannot set %s; settable: %s" % (unknown, SETTABLE)}
        good, problems = check(changes, self.config, WATER_LIMITS, ())
        if not problems:  # each alarm's hysteresis against its threshold, as they would be
            problems = [why for _, _, why in hysteresis_faults(good)]
        if problems:
            return {"ok": False, "error": "; ".join(problems)}
        self.config.update(good)
        kept = self.state.get("settings", {})
        kept.update(changes)
        self.state.set("settings", kept, now=True)
        if "report_s" in changes or "storm_report_s" in changes:
            self.rtc.set("next", 0)  # recomputed at the end of this cycle
        return {"ok": True, "set": changes}

    # ---- sleep -------------------------------------------------------------------------

    def sleep(self):
        now = _now_ms()
        if self.power is not None:
            self.power.value(0)
        self.rain.stop()
        self.flow.stop()
        if self.rtc.get("next", 0) <= now:  # a cycle that failed before it reported
            self.rtc.set("next", now + self.config["report_s"] * 1000)
        ms = max(1000, self.rtc.get("next") - now)
        # what a rain tip's wake needs to be short (tipwake.py), so that it reads no file:
        # the pins, the bucket, the rain alarm's settings, as of this cycle
        c = self.config
        self.rtc.set(
            "tipwake",
            [
                self._params("rain")["pin"],
                self.rain.closed,
                self.rain.mm_per_tip,
                c["rain_window_s"],
                c["rain_mm_h"],
                c["rain_hysteresis_mm_h"],
                self._params("cover")["pin"],
                self.cover.active_low,
            ],
        )
        deep_sleep(
            self.rtc,
            ms,
            self.rain.pin,
            self.rain.closed,
            self.cover.pin,
            self.cover.contact_open(),
        )


def main(config, board, boot_ms=0, boot=None):
    import asyncio

    node = WaterNode(config, board, boot_ms, boot)
    from .start import started
    from .version import VERSION

    started()  # up: the start-up crash count starts over (this main never returns)
    print(
        "polekit water node %s up, uplink %s, version %d.%d%s"
        % (node.code, node.config["uplink"], VERSION[0], VERSION[1], " on trial" * node.trial)
    )
    asyncio.run(node.run())
    return node
