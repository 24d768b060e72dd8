# Virtual peripherals of the emulated board, attached from the board definition.
#
# Each answers the firmware at the bus level (I2C bytes with the real chip's commands and
# CRCs, UART frames, pin levels, ADC counts) from physical values the host sets:
#   sht3x.temperature, sht3x.humidity, bh1750.illuminance, adxl345.tilt, pms5003.pm2_5,
#   door.active, sos.press (ms), noise.voltage, battery.voltage, lamp.level (read back),
#   level.metres (4-20 mA loop), rain.tips / rain.rate_mm_h, flow.l_min, cover.open / cover.tilt...
# Faults, on any device: .absent (1: no answer, I2C raises ENODEV), .stuck (1: the value
# freezes), .noise (amplitude added at random to every reading), .spike ({quantity: value}:
# the next measurement only reads that wild value; reads back {} once it has been measured).
import math
import random
import time

import _board


class Device:
    DEFAULTS = {}

    def __init__(self, name, spec):
        self.name = name
        self.spec = spec
        self.values = dict(self.DEFAULTS)
        self.absent = False
        self.stuck = None  # frozen copy of the values while stuck
        self.noise = 0.0
        self.spike = {}

    def set(self, quantity, value):
        if quantity == "absent":
            self.absent = bool(value)
        elif quantity == "stuck":
            self.stuck = dict(self.values) if value else None
        elif quantity == "noise":
            self.noise = float(value)
        elif quantity == "spike":
            if not isinstance(value, dict):
                raise ValueError(
                    "%s.spike takes {quantity: value}, e.g. %r" % (self.name, self.DEFAULTS)
                )
            for q in value:
                if q not in self.values:
                    raise KeyError("%s has no %r to spike" % (self.name, q))
            self.spike = dict(value)
        elif quantity in self.values:
            if isinstance(self.values[quantity], (int, float)) and not isinstance(
                value, (int, float)
            ):  # a physical value is a number; "abc" would fail later, inside a driver
                raise ValueError("%s.%s takes a number, not %r" % (self.name, quantity, value))
            self.values[quantity] = value
            self.changed(quantity)
        else:
            raise KeyError(
                "%s has no %r; it has: %s, absent, stuck, noise, spike"
                % (self.name, quantity, ", ".join(sorted(self.values)))
            )

    def get(self, quantity):
        if quantity in ("absent", "stuck", "noise", "spike"):
            faults = {"absent": self.absent, "stuck": self.stuck is not None, "noise": self.noise}
            faults["spike"] = self.spike
            return faults[quantity]
        if quantity not in self.values:
            raise KeyError(
                "%s has no %r; it has: %s" % (self.name, quantity, ", ".join(sorted(self.values)))
            )
        return self.values[quantity]

    def reading(self, quantity):
        # what the sensor measures now: the physical value, frozen or noisy if faulted
        if quantity in self.spike:
            return self.spike.pop(quantity)
        v = (self.stuck or self.values)[quantity]
        if self.noise:
            v += random.uniform(-self.noise, self.noise)
        return v

    def changed(self, quantity):
        pass


def crc8(data):
    # Sensirion CRC-8: polynomial 0x31, init 0xFF
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SHT3x(Device):
    DEFAULTS = {"temperature": 21.0, "humidity": 50.0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self._out = b""

    def i2c_write(self, data):
        if data[:1] in (b"\x24", b"\x2c", b"\xe0"):  # single shot / periodic fetch
            t = max(0, min(65535, int((self.reading("temperature") + 45) * 65535 / 175 + 0.5)))
            h = max(0, min(65535, int(self.reading("humidity") * 65535 / 100 + 0.5)))
            tb, hb = bytes((t >> 8, t & 0xFF)), bytes((h >> 8, h & 0xFF))
            self._out = tb + bytes((crc8(tb),)) + hb + bytes((crc8(hb),))
        elif data[:2] == b"\xf3\x2d":  # status register
            self._out = b"\x00\x00" + bytes((crc8(b"\x00\x00"),))

    def i2c_read(self, n):
        return (self._out + b"\xff" * n)[:n]


class BH1750(Device):
    DEFAULTS = {"illuminance": 120.0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.powered = False

    def i2c_write(self, data):
        if data[:1] == b"\x01":
            self.powered = True
        elif data[:1] == b"\x00":
            self.powered = False

    def i2c_read(self, n):
        raw = max(0, min(65535, int(self.reading("illuminance") * 1.2))) if self.powered else 0
        return bytes((raw >> 8, raw & 0xFF))[:n]


class ADXL345(Device):
    DEFAULTS = {"tilt": 0.0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.regs = bytearray(0x40)
        self.regs[0x00] = 0xE5  # DEVID
        self.ptr = 0

    def i2c_write(self, data):
        self.ptr = data[0] & 0x3F
        for i, b in enumerate(data[1:]):
            self.regs[(self.ptr + i) & 0x3F] = b

    def i2c_read(self, n):
        # gravity tilted by `tilt` degrees from vertical, in the x-z plane; 256 LSB/g
        a = math.radians(self.reading("tilt"))
        for reg, g in ((0x32, math.sin(a)), (0x34, 0.0), (0x36, math.cos(a))):
            v = int(round(g * 256)) & 0xFFFF
            self.regs[reg], self.regs[reg + 1] = v & 0xFF, v >> 8
        out = bytes(self.regs[(self.ptr + i) & 0x3F] for i in range(n))
        self.ptr = (self.ptr + n) & 0x3F
        return out


class PMS5003(Device):
    DEFAULTS = {"pm1": 5, "pm2_5": 12, "pm10": 20}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.uart = spec["uart_id"]
        self.next_ms = 0

    def on_write(self, data):
        pass  # mode commands are accepted and ignored: the sensor keeps streaming

    def tick(self, now):
        if self.absent or now < self.next_ms:
            return
        self.next_ms = now + 1000  # one frame a second, as the sensor streams
        pm = [max(0, int(self.reading(q))) for q in ("pm1", "pm2_5", "pm10")]
        words = pm + pm + [0] * 7
        body = b"\x42\x4d\x00\x1c" + b"".join(bytes((w >> 8, w & 0xFF)) for w in words)
        total = sum(body)
        frame = body + bytes((total >> 8, total & 0xFF))
        _board.receive(self.uart, frame)


class Contact(Device):
    # a dry contact on a GPIO: door, water immersion probe, smoke alarm relay
    DEFAULTS = {"active": 0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.pin = spec["pin"]
        self.changed("active")

    def changed(self, quantity):
        level = (1 if self.values["active"] else 0) ^ (1 if self.spec.get("active_low") else 0)
        _board.set_pin(self.pin, level)


class Button(Contact):
    # set "press" to a duration in ms: pressed now, released after it. The press runs out
    # on the board's running time: a gap between ticks longer than TICK_GAP_MS is the host
    # starving the VM, and counts as TICK_GAP_MS only (on the chip the firmware runs while
    # a finger is on the button; in the emulator a busy host must not let a press come and
    # go between two looks of the firmware)
    DEFAULTS = {"active": 0, "press": 0}
    TICK_GAP_MS = 20

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.left_ms = None  # of the press under way
        self.last_tick = None

    def changed(self, quantity):
        if quantity == "press" and self.values["press"]:
            self.values["active"] = 1
            self.left_ms = int(self.values["press"])
            self.last_tick = None
            self.values["press"] = 0
        Contact.changed(self, "active")

    def tick(self, now):
        if self.left_ms is None:
            return
        if self.last_tick is not None:
            self.left_ms -= min(now - self.last_tick, self.TICK_GAP_MS)
        self.last_tick = now
        if self.left_ms <= 0:
            self.left_ms = None
            self.values["active"] = 0
            Contact.changed(self, "active")


class Analog(Device):
    # a voltage on an ADC pin (3.3 V full scale), through an optional divider; a battery's
    # input starts at the cells' nominal_v (the board definition's), not at a bare 1.0 V.
    # Converted when the firmware reads it: a battery is on the pin from power-on, so a
    # read before the board's clock first ticked (a self-test at start-up) sees it, not 0 V
    DEFAULTS = {"voltage": 1.0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.pin = spec["pin"]
        if "nominal_v" in spec:
            self.values["voltage"] = float(spec["nominal_v"])
        _board.adc[self.pin] = self.adc_u16

    def adc_u16(self):
        if self.absent:
            return 0
        v = self.reading("voltage") / self.spec.get("divider", 1.0)
        return max(0, min(65535, int(v / 3.3 * 65535)))


class Lamp(Device):
    # the lamp driver: read back what the firmware drives (PWM duty on pwm_pin, relay pin)
    DEFAULTS = {}

    def get(self, quantity):
        duty = _board.pwm.get(self.spec["pwm_pin"], 0)
        relay = _board.pins.get(self.spec["relay_pin"], 0)
        values = {
            "duty": duty,
            "relay": relay,
            "level": round(duty * 100 / 65535, 1) if relay else 0.0,
        }
        if quantity not in values:
            raise KeyError("lamp has: level (percent), duty (0..65535), relay (0/1)")
        return values[quantity]


class LoopTransducer(Device):
    # a 4-20 mA water-level pressure transducer read through a shunt on an ADC pin:
    # 4 mA at 0 m, 20 mA at range_m; it drives its loop only while its power pin is high and
    # warmup_ms after that (before, the loop reads 0 mA, as a cold sensor's does). Saturates
    # at 3.9 and 22 mA (NAMUR NE 43 keeps 3.8-20.5 mA for measurements); open=1 is a cut wire
    DEFAULTS = {"metres": 0.5, "open": 0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.pin = spec["pin"]
        self.powered_at = None
        power = spec.get("power_pin")
        if power is not None:
            _board.pin_listeners.setdefault(power, []).append(self._power)
            if _board.pins.get(power):
                self._power(1)
        _board.adc[self.pin] = self.adc_u16  # converted when the firmware reads it

    def _power(self, level):
        self.powered_at = time.ticks_ms() if level else None

    def current_ma(self):
        if self.spec.get("power_pin") is not None:
            if self.powered_at is None:
                return 0.0
            if time.ticks_diff(time.ticks_ms(), self.powered_at) < self.spec.get("warmup_ms", 0):
                return 0.0
        if self.absent or self.values["open"]:
            return 0.0
        ma = 4 + 16 * self.reading("metres") / self.spec.get("range_m", 5.0)
        return max(3.9, min(22.0, ma))

    def adc_u16(self):
        volts = self.current_ma() / 1000 * self.spec.get("shunt_ohm", 120)
        return max(0, min(65535, int(volts / 3.3 * 65535)))


class RainGauge(Device):
    # a tipping-bucket rain gauge: a reed contact closes for closure_ms at each tip of
    # mm_per_tip. rain.tips = N: N tips from now (GAP_MS apart); rain.rate_mm_h: the bucket
    # fills and tips on its own; rain.bounce: extra make/break chatters at each closure (a
    # worn reed); rain.fill_mm: the water in the bucket now (the board keeps it across sleep)
    DEFAULTS = {"tips": 0, "rate_mm_h": 0.0, "fill_mm": 0.0, "bounce": 0}
    # tips=N comes one tip a second: faster than any rain (300 mm/h, about the wettest hour
    # on record, is a tip every 2.4 s at 0.2 mm), and still inside a woken node's boot
    GAP_MS = 900

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.pin = spec["pin"]
        self.closed_level = 0 if spec.get("active_low", True) else 1
        self.pending = 0
        self.closed_until = None
        self.next_ms = 0
        self.last = None
        _board.set_pin(self.pin, 1 - self.closed_level)

    def changed(self, quantity):
        if quantity == "tips":
            self.pending += int(self.values["tips"])
            self.values["tips"] = 0
            self._step(_board.ticks_ms)

    def _step(self, now):
        if self.closed_until is not None and now >= self.closed_until:
            self.closed_until = None
            _board.set_pin(self.pin, 1 - self.closed_level)
            self.next_ms = now + self.GAP_MS
        if self.closed_until is None and self.pending and now >= self.next_ms:
            self.pending -= 1
            for _ in range(int(self.values["bounce"])):  # make, break, make...: one tip
                _board.set_pin(self.pin, self.closed_level)
                _board.set_pin(self.pin, 1 - self.closed_level)
            _board.set_pin(self.pin, self.closed_level)
            self.closed_until = now + self.spec.get("closure_ms", 100)

    def tick(self, now):
        if self.last is not None:
            self.values["fill_mm"] += self.values["rate_mm_h"] * (now - self.last) / 3600000
        self.last = now
        tip = self.spec.get("mm_per_tip", 0.2)
        while self.values["fill_mm"] >= tip:
            self.values["fill_mm"] -= tip
            self.pending += 1
        self._step(now)

    def wake_rule(self):
        return {
            "kind": "bucket",
            "device": self.name,
            "pin": self.pin,
            "level": self.closed_level,
            "tip_mm": self.spec.get("mm_per_tip", 0.2),
            "fill_mm": self.values["fill_mm"],
            "rate": self.values["rate_mm_h"],
            "pending": self.pending,
        }


class FlowMeter(Device):
    # a pulse-output flow meter: pulses_per_litre pulses per litre at flow.l_min, while its
    # power pin (if any) is high
    DEFAULTS = {"l_min": 0.0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.pin = spec["pin"]
        self.due = 0.0
        self.last = None
        _board.set_pin(self.pin, 0)

    def tick(self, now):
        power = self.spec.get("power_pin")
        on = power is None or _board.pins.get(power)
        if self.last is not None and on and not self.absent:
            litres = self.reading("l_min") * (now - self.last) / 60000
            self.due += litres * self.spec.get("pulses_per_litre", 100)
        self.last = now
        while self.due >= 1:
            self.due -= 1
            _board.set_pin(self.pin, 1)
            _board.set_pin(self.pin, 0)


class Cover(ADXL345):
    # a manhole cover: a reed contact on `pin` (high when the cover is lifted off its magnet,
    # unless active_low) and an ADXL345 on the cover's frame for its tilt
    DEFAULTS = {"open": 0, "tilt": 0.0}

    def __init__(self, name, spec):
        super().__init__(name, spec)
        self.pin = spec["pin"]
        self.changed("open")

    def changed(self, quantity):
        if quantity == "open":
            level = (1 if self.values["open"] else 0) ^ (1 if self.spec.get("active_low") else 0)
            _board.set_pin(self.pin, level)

    def wake_rule(self):
        return {
            "kind": "level",
            "path": self.name + ".open",
            "pin": self.pin,
            "invert": bool(self.spec.get("active_low")),
        }


KINDS = {
    "loop_4_20": LoopTransducer,
    "rain_gauge": RainGauge,
    "flow_meter": FlowMeter,
    "cover": Cover,
    "sht3x": SHT3x,
    "bh1750": BH1750,
    "adxl345": ADXL345,
    "pms5003": PMS5003,
    "contact": Contact,
    "button": Button,
    "adc": Analog,
    "lamp": Lamp,
}


def attach():
    buses = {b["name"]: b for b in _board.DEFINITION["buses"]}
    for s in _board.DEFINITION["sensors"]:
        spec = dict(s["params"])
        bus = buses.get(s.get("bus"))
        if bus is not None and bus["type"] == "uart":
            spec["uart_id"] = bus["params"]["id"]
        dev = KINDS[s["type"]](s["name"], spec)
        _board.devices[s["name"]] = dev
        if bus is not None and bus["type"] == "i2c":
            _board.i2c_devices[(bus["params"].get("id", 0), spec["address"])] = dev
        elif bus is not None and bus["type"] == "uart":
            _board.uart_devices[spec["uart_id"]] = dev
