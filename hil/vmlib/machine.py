# `machine` for the emulated board: the ESP32 port's API, backed by virtual peripherals.
#
# Errors behave like the chip's: an I2C transfer to an address nobody answers raises
# OSError(ENODEV) (errno 19), a write to an input pin does nothing, WDT cannot be stopped.
# time.sleep() busy-waits in the WebAssembly port: firmware must sleep with asyncio.
#
# Calls are held to what the chip accepts (tests/test_chip_conformance.py checks every
# signature here against MicroPython 1.27's ESP32 stubs): MicroPython's def has no "/", so a
# parameter the chip takes by position only is spelled "_name" (naming it fails, as on the
# chip), and keyword-only ones follow "*". I2C and UART without pins use the port's default
# pins, as the chip does: a bus is wired to the pins in the board definition, so firmware that
# leaves them out reads nothing, as it would on the board.
import errno as _errno
import time as _time

import _board
import js as _js

_CHIP = _board.DEFINITION.get("chip", "esp32")
# ports/esp32/machine_i2c.h (v1.27.0 lines 30-49): I2C id -> (scl, sda) without pins given
_I2C_PINS = {"esp32": {0: (18, 19), 1: (25, 26)}}.get(_CHIP, {0: (9, 8), 1: (9, 8)})
# ports/esp32/machine_uart.c (v1.27.0 lines 276-288): UART id -> (tx, rx); UART0 is the REPL
_UART_PINS = {0: (1, 3), 1: (10, 9), 2: (17, 16)}


def _wiring(kind):
    # bus id -> the pins the board definition wires it to
    out = {}
    for bus in _board.DEFINITION.get("buses", ()):
        p = bus["params"]
        if bus["type"] == kind:
            out[p.get("id", 0)] = (
                (p.get("scl"), p.get("sda"))
                if kind == "i2c"
                else (
                    p.get("tx"),
                    p.get("rx"),
                )
            )
    return out


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
# machine.wake_reason() is esp_sleep_get_wakeup_cause() (ports/esp32/modmachine.c): ESP-IDF's
# esp_sleep_source_t numbers; 0 (undefined) after any start that was not a wake from sleep
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6
SLEEP = 2
DEEPSLEEP = 4


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5

    def __init__(self, _id, mode=-1, pull=-1, *, value=None):
        self.id = _id
        self._mode = self.IN
        self._pull = None
        self._irq = None
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    def value(self, _x=None):
        if _x is None:
            if self.id in _board.pins:
                return _board.pins[self.id]
            return 1 if self._pull == self.PULL_UP else 0
        if self._mode in (self.OUT, self.OPEN_DRAIN):
            _board.set_pin(self.id, _x)
        return None

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, *, wake=None):
        listeners = _board.pin_listeners.setdefault(self.id, [])
        if self._irq is not None and self._irq in listeners:
            listeners.remove(self._irq)
        self._irq = None
        if handler is not None:

            def edge(level, pin=self):
                if (level and trigger & Pin.IRQ_RISING) or (
                    not level and trigger & Pin.IRQ_FALLING
                ):
                    handler(pin)

            self._irq = edge
            listeners.append(edge)
        return self._irq

    def __repr__(self):
        return "Pin(%d)" % self.id


class Signal:
    # a Pin object, invert by name only (extmod/machine_signal.c: Signal(pin, True) raises)
    def __init__(self, _pin, *, invert=False):
        self.pin = _pin if isinstance(_pin, Pin) else Pin(_pin, Pin.OUT)
        self.invert = invert

    def value(self, _x=None):
        if _x is None:
            return self.pin.value() ^ self.invert
        self.pin.value(bool(_x) ^ self.invert)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


def _pin_id(p):
    return p.id if isinstance(p, Pin) else p


class I2C:
    def __init__(self, _id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        if _id not in _I2C_PINS:
            raise ValueError("I2C(%s) doesn't exist" % (_id,))
        default = _I2C_PINS[_id]
        self.id = _id
        self.freq = freq
        self._pins = (
            default[0] if scl is None else _pin_id(scl),
            default[1] if sda is None else _pin_id(sda),
        )

    def _wired(self):
        return _wiring("i2c").get(self.id) == self._pins

    def _dev(self, addr):
        dev = _board.i2c_devices.get((self.id, addr)) if self._wired() else None
        if dev is None or dev.absent:
            raise OSError(_errno.ENODEV)
        return dev

    def scan(self):
        if not self._wired():
            return []
        return sorted(
            a for (bus, a), d in _board.i2c_devices.items() if bus == self.id and not d.absent
        )

    def writeto(self, _addr, _buf, _stop=True):
        self._dev(_addr).i2c_write(bytes(_buf))
        return len(_buf)

    def readfrom(self, _addr, _nbytes, _stop=True):
        return bytes(self._dev(_addr).i2c_read(_nbytes))

    def readfrom_into(self, _addr, _buf, _stop=True):
        _buf[:] = self.readfrom(_addr, len(_buf))

    def writeto_mem(self, _addr, _memaddr, _buf, *, addrsize=8):
        self._dev(_addr).i2c_write(bytes((_memaddr,)) + bytes(_buf))

    def readfrom_mem(self, _addr, _memaddr, _nbytes, *, addrsize=8):
        dev = self._dev(_addr)
        dev.i2c_write(bytes((_memaddr,)))
        return bytes(dev.i2c_read(_nbytes))

    def readfrom_mem_into(self, _addr, _memaddr, _buf, *, addrsize=8):
        _buf[:] = self.readfrom_mem(_addr, _memaddr, len(_buf))


class SoftI2C(I2C):
    # bit-banged on any two pins: it reaches the devices of the bus wired to them
    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        pins = (_pin_id(scl), _pin_id(sda))
        self.id = None
        for bus, wired in _wiring("i2c").items():
            if wired == pins:
                self.id = bus
        self.freq = freq
        self._pins = pins


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 9
    WIDTH_10BIT = 10
    WIDTH_11BIT = 11
    WIDTH_12BIT = 12

    # without atten the chip sets its widest range, ATTN_11DB (machine_adc.c line 195)
    def __init__(self, _pin, *, atten=ATTN_11DB):
        self.pin = _pin_id(_pin)

    def atten(self, _atten):
        pass

    def width(self, _bits):
        if not 9 <= _bits <= 12:
            raise ValueError("invalid bit-width")

    def read_u16(self):
        return int(_board.adc_u16(self.pin))

    def read(self):
        return self.read_u16() >> 4

    def read_uv(self):
        return int(self.read_u16() * 3300000 // 65535)


class PWM:
    def __init__(self, _dest, freq=5000, *, duty=None, duty_u16=None, duty_ns=None):
        self.pin = _pin_id(_dest)
        self._freq = freq
        _board.pwm[self.pin] = 0
        if duty is not None:
            self.duty(duty)
        if duty_u16 is not None:
            self.duty_u16(duty_u16)

    def freq(self, _value=None):
        if _value is None:
            return self._freq
        self._freq = _value

    def duty_u16(self, _value=None):
        if _value is None:
            return _board.pwm.get(self.pin, 0)
        if not 0 <= _value <= 65535:
            raise ValueError("duty_u16 must be 0..65535")
        _board.pwm[self.pin] = int(_value)

    def duty(self, _value=None):
        if _value is None:
            return self.duty_u16() >> 6
        self.duty_u16(min(1023, int(_value)) * 65535 // 1023)

    def deinit(self):
        _board.pwm[self.pin] = 0


class UART:
    INV_TX = 32
    INV_RX = 4

    def __init__(
        self,
        _id,
        baudrate=115200,
        bits=8,
        parity=None,
        stop=1,
        *,
        tx=None,
        rx=None,
        rts=None,
        cts=None,
        txbuf=None,
        rxbuf=None,
        timeout=None,
        timeout_char=None,
        invert=None,
        flow=None,
    ):
        if _id not in _UART_PINS:
            raise ValueError("UART(%s) doesn't exist" % (_id,))
        self.id = _id
        self._pins = _UART_PINS[_id]
        self.baudrate = 115200
        self._timeout = 0
        self.init(baudrate, bits, parity, stop, tx=tx, rx=rx, timeout=timeout)

    # baudrate 0 keeps the rate the UART has, as on the chip
    def init(
        self,
        baudrate=0,
        bits=8,
        parity=None,
        stop=1,
        *,
        tx=None,
        rx=None,
        rts=None,
        cts=None,
        txbuf=None,
        rxbuf=None,
        timeout=None,
        timeout_char=None,
        invert=None,
        flow=None,
    ):
        if baudrate:
            self.baudrate = baudrate
        if timeout is not None:
            self._timeout = max(0, int(timeout))  # ms a read waits for its bytes
        self._pins = (
            self._pins[0] if tx is None else _pin_id(tx),
            self._pins[1] if rx is None else _pin_id(rx),
        )
        p = 0 if parity is None else parity + 1
        _js.polekitHw.uartConfig(self.id, self.baudrate, bits, p, stop)
        wired = _wiring("uart").get(self.id)
        # whether the TX pin reaches the bus (0) and the RX pin hears it (1), found once: a
        # chip's read or write allocates nothing, and the VM collects no garbage while
        # firmware code runs
        self._wires = tuple(wired is not None and wired[end] == self._pins[end] for end in (0, 1))

    def _wired(self, end):
        return self._wires[end]

    def deinit(self):
        pass

    def any(self):
        if not self._wired(1):
            return 0
        _board.pull_uart(self.id)
        return len(_board.uart_rx.get(self.id, b""))

    def _wait(self, nbytes, line=False):
        # the chip's read blocks up to `timeout` ms for what it asks: n bytes, or a line
        _board.pull_uart(self.id)
        if not self._timeout or not self._wires[1]:
            return
        deadline = _time.ticks_add(_time.ticks_ms(), self._timeout)
        while True:
            buf = _board.uart_rx.get(self.id, b"")
            if (line and b"\n" in buf) or (not line and len(buf) >= nbytes):
                return
            left = _time.ticks_diff(deadline, _time.ticks_ms())
            if left <= 0:
                return
            _board.wait_uart(self.id, left)

    def read(self, _nbytes=None):
        self._wait(1 if _nbytes is None else _nbytes)
        buf = _board.uart_rx.get(self.id) if self._wired(1) else None
        if not buf:
            return None
        n = len(buf) if _nbytes is None else min(_nbytes, len(buf))
        data = bytes(buf[:n])
        _board.uart_rx[self.id] = buf[n:]  # MicroPython's bytearray has no slice deletion
        return data

    def readinto(self, _buf, _nbytes=None):
        data = self.read(len(_buf) if _nbytes is None else _nbytes)
        if not data:
            return None
        _buf[: len(data)] = data
        return len(data)

    def readline(self):
        self._wait(0, True)
        buf = _board.uart_rx.get(self.id) if self._wired(1) else None
        if not buf:
            return None
        end = buf.find(b"\n")
        return self.read(len(buf) if end < 0 else end + 1)

    def write(self, _buf):
        if self._wired(0):  # else the bytes leave on a pin nothing listens to
            _board.uart_write(self.id, bytes(_buf))
        return len(_buf)

    def flush(self):
        pass

    def txdone(self):
        return True


class WDT:
    def __init__(self, *, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        _js.polekitHw.wdtStart(timeout)

    def feed(self):
        _js.polekitHw.wdtFeed()


class RTC:
    # ports/esp32/machine_rtc.c v1.27.0 machine_rtc_datetime_helper: read (year, month, day,
    # weekday, hours, minutes, seconds, microseconds) from the clock; set from such a tuple
    # of exactly 8 (the weekday is not used); init() takes (year, month, day, hours, minutes,
    # seconds, microseconds, tzinfo)
    def datetime(self, _datetimetuple=None):
        import time

        if _datetimetuple is None:
            ns = time.time_ns()
            t = time.gmtime(ns // 1000000000)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], ns // 1000 % 1000000)
        self._set(_datetimetuple, 4)
        return None

    def init(self, _datetime):
        self._set(_datetime, 3)

    def _set(self, items, hour):
        import time

        items = tuple(items)
        if len(items) != 8:
            raise ValueError("tuple/list has wrong length")
        secs = time.mktime(
            (items[0], items[1], items[2], items[hour], items[hour + 1], items[hour + 2], 0, 0)
        )
        _board.set_rtc(secs * 1000 + items[7] // 1000)

    # RTC slow memory: kept across deep sleep and resets, lost when the power goes
    # (ports/esp32/machine_rtc.c: at most MICROPY_HW_RTC_USER_MEM_MAX = 2048 bytes)
    def memory(self, _data=None):
        if _data is None:
            return bytes(_board.rtc_memory)
        data = bytes(_data)
        if len(data) > 2048:
            raise ValueError("buffer too long")
        _board.rtc_memory = data
        _js.polekitHw.rtcMemory(_board.hex_of(data))


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, _id, *, mode=PERIODIC, period=None, callback=None, freq=None):
        self._cb = None
        if period is not None or freq is not None or callback is not None:
            self.init(mode=mode, period=period, callback=callback, freq=freq)

    def init(self, *, mode=PERIODIC, period=None, callback=None, freq=None):
        self.deinit()
        self._mode = mode
        if freq:
            period = int(1000 / freq)
        self._period = 0xFFFFFFFF if period is None else period
        self._cb = callback
        self._next = _board.ticks_ms + self._period
        _board.timers.append(self)

    def _due(self, now):
        if self._cb is not None and now >= self._next:
            if self._mode == self.PERIODIC:
                self._next += self._period
            else:
                self.deinit()
            self._cb(self)

    def deinit(self):
        if self in _board.timers:
            _board.timers.remove(self)


def reset():
    _js.polekitHw.reset("hard")


def soft_reset():
    _js.polekitHw.reset("soft")


def reset_cause():
    return _board.reset_cause


def unique_id():
    return bytes.fromhex(_board.DEFINITION["unique_id"])


def freq(_hz=None):
    return (160000000 if _CHIP == "esp32c3" else 240000000) if _hz is None else None


# never returns, as on the chip: the board powers the CPU down (the VM is thrown away) and
# starts a new one on the timer or on a wake source (esp32.wake_on_ext0/ext1)
# (ports/esp32/modmachine.c machine_sleep_helper: a time given, even 0, arms the timer; none
# given, only the wake pins wake it)
def deepsleep(_time_ms=None):
    _board.deep_sleep(_time_ms)


def wake_reason():
    return _board.DEFINITION.get("wake_reason", 0)


# the CPU paused for the time given (the VM blocks; timers and wake pins do not end it early
# here, a difference the chip would not show a firmware that sleeps by time)
def lightsleep(_time_ms=None):
    if _time_ms is not None and _time_ms > 0:
        _js.polekitHw.sleepMs(int(_time_ms))


def idle():
    pass


def disable_irq():
    return 0


def enable_irq(_state):
    pass
