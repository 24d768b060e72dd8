# The pole node: sensors sampled on their own schedules, values into the Modbus register
# file, alarms raised at once, the watchdog fed while the loop is healthy.
#
# Config (/config.json, merged over DEFAULTS) and the board's hardware map (/board.json,
# written from boards/*.toml at deploy time) are read at start. A failing sensor marks
# only its own values invalid (the "valid" bits) and is retried with backoff.
import asyncio
import gc
import json
import time

import machine

from protocols import modbus
from protocols.modbus import register_map

from .registers import RegisterFile
from .uplinks.modbus_slave import ModbusSlave

VERSION = (0, 1)
DEFAULTS = {
    "unit": 1,
    "baudrate": 9600,
    "sample_ms": 1000,
    "tilt_ms": 200,
    "tilt_threshold": 10.0,
    "tilt_hysteresis": 2.0,
    "lamp_default": 100,
    "watchdog_ms": 5000,
}
# key: (low, high) accepted; device_code and board are text
LIMITS = {
    "unit": (1, 247),
    "baudrate": (1200, 115200),
    "sample_ms": (100, 3600000),
    "tilt_ms": (20, 60000),
    "tilt_threshold": (0, 90),
    "tilt_hysteresis": (0, 30),
    "lamp_default": (0, 100),
    "watchdog_ms": (0, 60000),
}
STATE_FILE = "/state.json"  # survives resets: the lamp level a master set


# The config merged over DEFAULTS; each problem is one log line and the default is kept,
# so a typo never stops a pole from working.
def validate_config(config):
    good = dict(DEFAULTS)
    problems = []
    for key, value in config.items():
        if key in ("device_code", "board"):
            good[key] = value
        elif key not in LIMITS:
            problems.append("config: unknown key %r ignored" % key)
        elif (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not LIMITS[key][0] <= value <= LIMITS[key][1]
        ):
            problems.append(
                "config: %s = %r must be a number %s..%s; using %r"
                % (key, value, LIMITS[key][0], LIMITS[key][1], DEFAULTS[key])
            )
        else:
            good[key] = value
    return good, problems


def load_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


class PoleNode:
    def __init__(self, config, board):
        self.config, self.problems = validate_config(config)
        for line in self.problems:
            print(line)
        self.board = board
        self.valid = 0
        self.alarms = 0
        self.errors = 0
        self.samples = 0
        self.started = time.ticks_ms()
        self.regs = RegisterFile(register_map("pole-env"), self.on_write)
        self.state = load_json(STATE_FILE, {})
        c = self.config
        for name in ("tilt_threshold", "tilt_hysteresis", "lamp_default"):
            self.regs.set(name, self.state.get(name, c[name]))
        self.regs.set("report_interval", max(1, c["sample_ms"] // 1000))
        self.regs.set("fw_version", VERSION[0] << 8 | VERSION[1])
        self.regs.set("reset_cause", machine.reset_cause())
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

        i2c = machine.I2C(self._bus("i2c0")["id"])
        self.sht3x = SHT3x(i2c, self._sensor("sht3x")["params"]["address"])
        self.bh1750 = BH1750(i2c, self._sensor("bh1750")["params"]["address"])
        self.adxl345 = ADXL345(i2c, self._sensor("adxl345")["params"]["address"])
        self.pms = PMS5003(machine.UART(self._bus("pms")["id"], 9600))
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
            machine.UART(rs485["id"], self.config["baudrate"]),
            self.config["unit"],
            self.regs,
            self.config["baudrate"],
        )

    def on_write(self, point, value):
        if point.name == "lamp_level":
            self.lamp.set(value)
            self.regs.set("lamp_on", self.lamp.level > 0)
        if point.name in ("lamp_level", "lamp_default", "tilt_threshold", "tilt_hysteresis"):
            self.state[point.name] = value
            save_json(STATE_FILE, self.state)

    def _mark(self, bit, ok):
        self.valid = (self.valid | bit) if ok else (self.valid & ~bit)
        self.regs.set("valid", self.valid)

    def _alarm(self, bit, on):
        self.alarms = (self.alarms | bit) if on else (self.alarms & ~bit)
        self.regs.set("alarms", self.alarms)

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
        self.regs.set("temperature", t)
        self.regs.set("humidity", h)

    async def _read_bh1750(self):
        self.regs.set("illuminance", min(await self.bh1750.measure(), 400000))

    async def _read_tilt(self):
        tilt = await self.adxl345.measure()
        self.regs.set("tilt", tilt)
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
            self.regs.set(name, value)

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
            self.samples += 1
            self.regs.set("uptime", time.ticks_diff(time.ticks_ms(), self.started) // 1000)
            gc.collect()  # a collection a second keeps fragmentation down and the figure honest
            self.regs.set("free_heap", gc.mem_free())
            self.regs.set("node_seq", self.samples)
            await asyncio.sleep_ms(1000)

    async def _watchdog(self):
        # fed from the loop itself: a task that blocks the loop starves it and the board resets
        wdt = machine.WDT(timeout=self.config["watchdog_ms"])
        while True:
            wdt.feed()
            await asyncio.sleep_ms(100)

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
            self._inputs(),
            self._health(),
            self.slave.run(),
        ]
        if self.config["watchdog_ms"]:
            tasks.append(self._watchdog())
        await asyncio.gather(*tasks)


CRASH_FILE = "/crashes.json"
SAFE_MODE_AFTER = 3  # start-up crashes in a row; resets alone (brownouts) never count


def main():
    config = load_json("/config.json", None)
    board = load_json("/board.json", None)
    crashes = load_json(CRASH_FILE, {"count": 0}).get("count", 0)
    if board is None or not isinstance(config, dict):
        print(
            "polekit: safe mode: /board.json or /config.json missing or not JSON; the REPL is up. "
            "Redeploy with `polekit deploy`."
        )
        return
    if crashes >= SAFE_MODE_AFTER:
        print(
            "polekit: safe mode: the node crashed at start %d times in a row; the REPL is up. "
            "Fix the config, then delete %s." % (crashes, CRASH_FILE)
        )
        return
    try:
        if board.get("uplink") == "ble":
            from .community import CommunityNode

            node = CommunityNode(config, board)
        else:
            node = PoleNode(config, board)
    except Exception as exc:  # noqa: BLE001 - counted, shown, and the REPL stays usable
        save_json(CRASH_FILE, {"count": crashes + 1})
        print("polekit: start failed (%d/%d before safe mode):" % (crashes + 1, SAFE_MODE_AFTER))
        import sys

        sys.print_exception(exc)
        return
    if crashes:
        save_json(CRASH_FILE, {"count": 0})
    if board.get("uplink") == "ble":
        print("polekit community node %s up, BTHome over BLE" % config.get("device_code", "?"))
    else:
        print(
            "polekit node %s up, unit %d"
            % (node.config.get("device_code", "?"), node.config["unit"])
        )
    asyncio.run(node.run())
