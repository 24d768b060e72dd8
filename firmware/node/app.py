# The pole node: sensors sampled on their own schedules, values into the Modbus register
# file, alarms raised at once, the watchdog fed while the loop is healthy.
#
# Config (/config.json, checked against settings.POLE_*) and the board's hardware map
# (/board.json, written from boards/*.toml at deploy time) are read at start. A failing
# sensor marks only its own values invalid (the "valid" bits) and is retried with backoff.
import asyncio
import gc
import time

import machine

from protocols import modbus
from protocols.modbus import register_map

from . import buses
from .loopwatch import LoopWatch
from .policy import Policy
from .registers import RegisterFile
from .settings import REPORTED, validate
from .state import StateFile
from .uplinks.modbus_slave import ModbusSlave
from .version import VERSION

# the board map's sensor names and their "valid" bits
SENSOR_BITS = (
    ("sht3x", modbus.VALID_SHT3X),
    ("bh1750", modbus.VALID_BH1750),
    ("adxl345", modbus.VALID_ADXL345),
    ("pms5003", modbus.VALID_PMS5003),
    ("noise", modbus.VALID_NOISE),
)
STATE_FILE = "/state.json"  # survives resets: what a master set (writes coalesced: state.py)


class PoleNode:
    # ``boot``: the boot record the boot selector (/main.py) read (node/ota/record.py)
    def __init__(self, config, board, boot=None):
        self.config, self.problems = validate(config, "modbus")
        for line in self.problems:
            print(line)
        self.board = board
        self.valid = 0
        self.alarms = 0
        self.errors = 0
        self.reports = 0
        self.started = time.ticks_ms()
        self.regs = RegisterFile(register_map("pole-env"), self.on_write)
        self.state = StateFile(STATE_FILE)
        c = self.config
        for name in ("tilt_threshold", "tilt_hysteresis", "lamp_default"):
            self.regs.set(name, self.state.get(name, c[name]))
        self.regs.set("report_interval", self.state.get("report_interval", c["report_s"]))
        self.policies = {}
        for name, (f, window, delta) in REPORTED.items():
            p = c["report"].get(name, {})
            self.policies[name] = Policy(
                p.get("filter", f),
                int(p.get("window", window)),
                p.get("delta", delta),
                p.get("max_s") or self.regs.get("report_interval"),
            )
        self.watch = LoopWatch()
        self.regs.set("fw_version", VERSION[0] << 8 | VERSION[1])
        self.regs.set("reset_cause", machine.reset_cause())
        boot = boot or {}
        self.trial = boot.get("state") == "trial"
        prev = (boot.get("previous") or "0.0").split(".")  # "MAJOR.MINOR"
        self.regs.set("fw_previous", int(prev[0]) << 8 | int(prev[1]))
        # protocols.ota's states: 7 trial, 8 rolled back, 0 idle
        rolled_back = boot.get("state") == "rolled_back"
        self.regs.set("ota_state", 7 if self.trial else 8 if rolled_back else 0)
        self.regs.set("ota_rollback", boot.get("rollback", 0))
        self.window = None
        self._build_hardware()
        self.lamp.set(self.state.get("lamp_level", self.regs.get("lamp_default")))
        self.regs.set("lamp_level", self.lamp.level)
        self.regs.set("lamp_on", self.lamp.level > 0)

    def _bus(self, name):
        for b in self.board["buses"]:
            if b["name"] == name:
                return b["params"]
        raise KeyError(name)

    def _sensor(self, name):
        for s in self.board["sensors"]:
            if s["name"] == name:
                return s
        return None

    def _build_hardware(self):
        from .drivers.adxl345 import ADXL345
        from .drivers.bh1750 import BH1750
        from .drivers.contact import Contact
        from .drivers.lamp import Lamp
        from .drivers.pms5003 import PMS5003
        from .drivers.sht3x import SHT3x

        i2c = buses.i2c(self._bus("i2c0"))
        self.sht3x = SHT3x(i2c, self._sensor("sht3x")["params"]["address"])
        self.bh1750 = BH1750(i2c, self._sensor("bh1750")["params"]["address"])
        self.adxl345 = ADXL345(i2c, self._sensor("adxl345")["params"]["address"])
        self.pms = PMS5003(buses.uart(self._bus("pms"), 9600))
        from .drivers.noise import Noise

        p = self._sensor("noise")["params"]
        self.noise = Noise(
            machine.ADC(machine.Pin(p["pin"])), p.get("db_per_volt", 50.0), p.get("db_offset", 0)
        )
        self.contacts = {}
        for name in ("door", "water"):
            p = self._sensor(name)["params"]
            self.contacts[name] = Contact(
                machine.Pin(p["pin"], machine.Pin.IN), p.get("active_low", False)
            )
        lamp = self._sensor("lamp")["params"]
        self.lamp = Lamp(
            machine.PWM(machine.Pin(lamp["pwm_pin"])),
            machine.Pin(lamp["relay_pin"], machine.Pin.OUT),
        )
        rs485 = self._bus("rs485")
        self.slave = ModbusSlave(
            buses.uart(rs485, self.config["baudrate"]),
            self.config["unit"],
            self.regs,
            self.config["baudrate"],
            self._ota_window,
        )

    # the OTA transfer window, made at the first request to it (an update's code stays off
    # the heap of a node that is never updated)
    def _ota_window(self):
        from .ota.modbus_window import ModbusWindow

        self.window = ModbusWindow(
            self.board.get("name"), "%d.%d" % VERSION, self._reset, self.sensors_down
        )
        return self.window

    # the sensors not working now (their values marked invalid): a new version's trial
    # self-test does not fail on what was already broken before it (node/ota/trial.py)
    def sensors_down(self):
        return [name for name, bit in SENSOR_BITS if not self.valid & bit]

    # a planned reset: what a master set is on the flash first
    def _reset(self):
        self.state.flush()
        machine.reset()

    def on_write(self, point, value):
        if point.name == "lamp_level":
            self.lamp.set(value)
            self.regs.set("lamp_on", self.lamp.level > 0)
        if point.name == "report_interval":
            custom = self.config["report"]
            for name, policy in self.policies.items():
                if not custom.get(name, {}).get("max_s"):
                    policy.max_ms = value * 1000
        if point.name in (
            "lamp_level",
            "lamp_default",
            "tilt_threshold",
            "tilt_hysteresis",
            "report_interval",
        ):
            self.state.set(point.name, value)

    def _mark(self, bit, ok):
        self.valid = (self.valid | bit) if ok else (self.valid & ~bit)
        self.regs.set("valid", self.valid)

    def _alarm(self, bit, on):
        self.alarms = (self.alarms | bit) if on else (self.alarms & ~bit)
        self.regs.set("alarms", self.alarms)

    # a sample through its quantity's report policy; a reported value is what masters read
    def _report(self, name, value):
        value = self.policies[name].offer(value)
        if value is not None:
            self.regs.set(name, value)
            self.reports += 1
            self.regs.set("node_seq", self.reports)

    async def _sensor_loop(self, bit, period_ms, read):
        # one sensor on its own schedule; a failure marks its values invalid and backs off
        backoff = period_ms
        while True:
            try:
                await read()
                self._mark(bit, True)
                backoff = period_ms
            except (OSError, ValueError):
                self.errors += 1
                self._mark(bit, False)
                backoff = min(backoff * 2, 30000)
            await asyncio.sleep_ms(backoff if not (self.valid & bit) else period_ms)

    async def _read_sht3x(self):
        t, h = await self.sht3x.measure()
        self._report("temperature", t)
        self._report("humidity", h)

    async def _read_bh1750(self):
        self._report("illuminance", min(await self.bh1750.measure(), 400000))

    async def _read_noise(self):
        self._report("noise", await self.noise.measure())

    async def _read_tilt(self):
        tilt = await self.adxl345.measure()
        self._report("tilt", tilt)  # the alarm below uses the raw sample: no filter delay
        threshold = self.regs.get("tilt_threshold")
        if tilt > threshold:
            self._alarm(modbus.ALARM_TILT, True)
        elif tilt < threshold - self.regs.get("tilt_hysteresis"):
            self._alarm(modbus.ALARM_TILT, False)

    async def _read_pms(self):
        reading = self.pms.poll()
        if reading is None:
            raise ValueError("no PMS5003 frame")
        for name, value in zip(("pm1", "pm2_5", "pm10"), reading):
            self._report(name, value)

    async def _inputs(self):
        while True:
            for name, contact in self.contacts.items():
                if contact.update():
                    point = "door_open" if name == "door" else "water"
                    self.regs.set(point, contact.active)
                    self._alarm(
                        modbus.ALARM_DOOR if name == "door" else modbus.ALARM_WATER, contact.active
                    )
            await asyncio.sleep_ms(10)

    async def _health(self):
        while True:
            self.regs.set("uptime", time.ticks_diff(time.ticks_ms(), self.started) // 1000)
            # a collection a second keeps fragmentation down and the figure honest. On the
            # chip the heap is collected when gc.collect() returns: `free` is exact there.
            # The emulated board's VM collects at the next yield (docs/hil.md, "Garbage
            # collection") and resumes this task first, so the reading after it is the one
            # there; the larger of the two is right on both
            gc.collect()
            free = gc.mem_free()
            await asyncio.sleep_ms(0)
            self.regs.set("free_heap", max(free, gc.mem_free()))
            self.regs.set("errors", min(self.errors, 65535))
            self.regs.set("loop_stalls", min(self.watch.stalls, 65535))
            if self.window:
                self.window.show(self.regs)
            self.state.tick()  # settings a master wrote in a burst reach the flash here
            await asyncio.sleep_ms(1000)

    async def run(self):
        sample = self.config["sample_ms"]
        for contact in self.contacts.values():
            self.regs.set(
                "door_open" if contact is self.contacts["door"] else "water", contact.active
            )
        tasks = [
            self._sensor_loop(modbus.VALID_SHT3X, sample, self._read_sht3x),
            self._sensor_loop(modbus.VALID_BH1750, sample, self._read_bh1750),
            self._sensor_loop(modbus.VALID_ADXL345, self.config["tilt_ms"], self._read_tilt),
            self._sensor_loop(modbus.VALID_PMS5003, max(sample, 1000), self._read_pms),
            self._sensor_loop(modbus.VALID_NOISE, sample, self._read_noise),
            self._inputs(),
            self._health(),
            self.slave.run(),
            self.watch.run(),
        ]
        wdt_ms = self.config["watchdog_ms"]
        if self.trial:
            from .ota.trial import Trial

            tasks.append(Trial(self.config["ota_trial_s"], self).run())
            wdt_ms = wdt_ms or 5000  # on trial a hang must reset the board: a rollback
        if wdt_ms:
            # fed only by the loop watch: a task that blocks the loop starves it
            self.watch.wdt = machine.WDT(timeout=wdt_ms)
        try:
            await asyncio.gather(*tasks)
        except Exception as exc:  # noqa: BLE001 - shown, then a restart
            # one task ended: the others (the loop watch among them) would go on without
            # it, feeding the watchdog of a node deaf on its bus or blind to a sensor
            import sys

            print("polekit: a node task failed; restarting:")
            sys.print_exception(exc)
            self._reset()

    # good exchanges on the uplink (requests to this unit answered): what a trial watches
    def uplink_exchanges(self):
        return self.slave.requests

    # the version on trial confirmed itself (node/ota/trial.py): the registers and the
    # transfer window say so from now on, not what the boot record said at start
    def ota_confirmed(self, rec):
        self.trial = False
        self.regs.set("ota_state", 0)
        if self.window:
            self.window.confirmed(rec)
