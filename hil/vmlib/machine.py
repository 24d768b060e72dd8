# `machine` for the emulated board: the ESP32 port's API, backed by virtual peripherals.
#
# Errors behave like the chip's: an I2C transfer to an address nobody answers raises
# OSError(ENODEV) (errno 19), a write to an input pin does nothing, WDT cannot be stopped.
# time.sleep() busy-waits in the WebAssembly port: firmware must sleep with asyncio.
import errno

import _board
import js

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


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

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._mode = self.IN
        self._pull = None
        self._irq = None
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            if self.id in _board.pins:
                return _board.pins[self.id]
            return 1 if self._pull == self.PULL_UP else 0
        if self._mode in (self.OUT, self.OPEN_DRAIN):
            _board.set_pin(self.id, v)
        return None

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, wake=None):
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
    def __init__(self, pin, invert=False):
        self.pin = pin if isinstance(pin, Pin) else Pin(pin, Pin.OUT)
        self.invert = invert

    def value(self, v=None):
        if v is None:
            return self.pin.value() ^ self.invert
        self.pin.value(bool(v) ^ self.invert)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


def _pin_id(p):
    return p.id if isinstance(p, Pin) else p


class I2C:
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id
        self.freq = freq

    def _dev(self, addr):
        dev = _board.i2c_devices.get((self.id, addr))
        if dev is None or dev.absent:
            raise OSError(errno.ENODEV)
        return dev

    def scan(self):
        return sorted(
            a for (bus, a), d in _board.i2c_devices.items() if bus == self.id and not d.absent
        )

    def writeto(self, addr, buf, stop=True):
        self._dev(addr).i2c_write(bytes(buf))
        return len(buf)

    def readfrom(self, addr, nbytes, stop=True):
        return bytes(self._dev(addr).i2c_read(nbytes))

    def readfrom_into(self, addr, buf, stop=True):
        buf[:] = self.readfrom(addr, len(buf))

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self._dev(addr).i2c_write(bytes((memaddr,)) + bytes(buf))

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        dev = self._dev(addr)
        dev.i2c_write(bytes((memaddr,)))
        return bytes(dev.i2c_read(nbytes))

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        buf[:] = self.readfrom_mem(addr, memaddr, len(buf))


SoftI2C = I2C


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=ATTN_11DB):
        self.pin = _pin_id(pin)

    def atten(self, value):
        pass

    def width(self, value):
        pass

    def read_u16(self):
        return int(_board.adc_u16(self.pin))

    def read(self):
        return self.read_u16() >> 4

    def read_uv(self):
        return int(self.read_u16() * 3300000 // 65535)


class PWM:
    def __init__(self, pin, freq=5000, duty=None, duty_u16=None, duty_ns=None):
        self.pin = _pin_id(pin)
        self._freq = freq
        _board.pwm[self.pin] = 0
        if duty is not None:
            self.duty(duty)
        if duty_u16 is not None:
            self.duty_u16(duty_u16)

    def freq(self, value=None):
        if value is None:
            return self._freq
        self._freq = value

    def duty_u16(self, value=None):
        if value is None:
            return _board.pwm.get(self.pin, 0)
        if not 0 <= value <= 65535:
            raise ValueError("duty_u16 must be 0..65535")
        _board.pwm[self.pin] = int(value)

    def duty(self, value=None):
        if value is None:
            return self.duty_u16() >> 6
        self.duty_u16(min(1023, int(value)) * 65535 // 1023)

    def deinit(self):
        _board.pwm[self.pin] = 0


class UART:
    INV_TX = 1
    INV_RX = 2

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, **kw):
        self.id = id
        self.init(baudrate, bits, parity, stop, **kw)

    def init(self, baudrate=115200, bits=8, parity=None, stop=1, **kw):
        self.baudrate = baudrate
        js.polekitHw.uartConfig(self.id, baudrate, bits, 0 if parity is None else parity + 1, stop)

    def deinit(self):
        pass

    def any(self):
        return len(_board.uart_rx.get(self.id, b""))

    def read(self, nbytes=None):
        buf = _board.uart_rx.get(self.id)
        if not buf:
            return None
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        data = bytes(buf[:n])
        _board.uart_rx[self.id] = buf[n:]  # MicroPython's bytearray has no slice deletion
        return data

    def readinto(self, buf, nbytes=None):
        data = self.read(len(buf) if nbytes is None else nbytes)
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self):
        buf = _board.uart_rx.get(self.id)
        if not buf:
            return None
        end = buf.find(b"\n")
        return self.read(len(buf) if end < 0 else end + 1)

    def write(self, buf):
        _board.uart_write(self.id, bytes(buf))
        return len(buf)

    def flush(self):
        pass

    def txdone(self):
        return True


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        js.polekitHw.wdtStart(timeout)

    def feed(self):
        js.polekitHw.wdtFeed()


class RTC:
    def datetime(self, value=None):
        import time

        if value is None:
            t = time.localtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        return None

    def init(self, value=None):
        pass


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, *args, **kw):
        self._cb = None
        if args or kw:
            self.init(*args, **kw)

    def init(self, mode=PERIODIC, period=-1, callback=None, freq=None):
        self.deinit()
        self._mode = mode
        self._period = int(1000 / freq) if freq else period
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
    js.polekitHw.reset("hard")


def soft_reset():
    js.polekitHw.reset("soft")


def reset_cause():
    return _board.reset_cause


def unique_id():
    return bytes.fromhex(_board.DEFINITION["unique_id"])


def freq(hz=None):
    return 240000000 if hz is None else None


def deepsleep(time_ms=0):
    js.polekitHw.deepsleep(time_ms)


def lightsleep(time_ms=0):
    pass


def idle():
    pass


def disable_irq():
    return 0


def enable_irq(state=0):
    pass
