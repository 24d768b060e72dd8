# The emulated board's hardware registry, inside the MicroPython VM.
#
# Built from the board definition at boot. Virtual peripherals register here by name; the
# host sets their physical values (set/get by "device.quantity") through the emulator's
# control channel, and the `machine` module finds devices by pin, I2C address or UART id.
# JS in the worker calls the functions at the bottom: set(), get(), tick(). Bytes from the
# host's end of a UART wait in the hardware's FIFO (shared memory, hil/js/board.mjs) until
# the firmware reads: pull_uart() moves them into uart_rx, wait_uart() blocks for them.
import json
from binascii import hexlify

import js  # the worker's globals: polekitHw.uartWrite, .wdtStart, .wdtFeed, .reset, .log

DEFINITION = json.load(open("/rom/_board_def.json"))
devices = {}  # name -> virtual device
pins = {}  # GPIO number -> value the outside world drives (inputs) or the firmware set
pin_listeners = {}  # GPIO number -> [callback(value)]
i2c_devices = {}  # (bus id, address) -> device
uart_rx = {}  # UART id -> bytearray of bytes waiting to be read
uart_devices = {}  # UART id -> device that answers writes (a sensor on that UART)
timers = []  # running machine.Timer objects
main_tasks = []  # tasks started by asyncio.run() (the firmware's main loop)
pwm = {}  # GPIO number -> duty (0..65535) the firmware set
adc = {}  # GPIO number -> raw reading (0..65535) the outside world drives
ticks_ms = 0
reset_cause = DEFINITION.get("reset_cause", 1)
rtc_memory = bytes.fromhex(DEFINITION.get("rtc_memory", ""))  # kept by the board across deep sleep
# deep-sleep wake sources as the chip keeps them (machine_rtc_config): "ext0": (pin or None,
# level), "ext1": ([pins], level); none at boot
# the RTC: its time (ms since 2000-01-01) is the host's Unix ms plus this; the board keeps it
rtc_offset_ms = DEFINITION.get("rtc_offset_ms", 0)
wake = {"ext0": (None, 0), "ext1": ([], 0)}


def hex_of(data):
    # one string, not one a byte: a chip's UART write allocates nothing, and the VM cannot
    # collect garbage while firmware code runs (only between runs)
    return hexlify(data).decode()


def deep_sleep(ms):
    # what the board watches while the chip sleeps: the timer, the wake pins and their
    # levels now, and how each device on a wake pin moves it (its wake_rule)
    ext0 = wake["ext0"] if wake["ext0"][0] is not None else None
    ext1 = wake["ext1"] if wake["ext1"][0] else None
    pins = []
    if ext0:
        pins.append(ext0[0])
    if ext1:
        pins += ext1[0]
    rules = []
    for dev in devices.values():
        rule = getattr(dev, "wake_rule", None)
        if rule is not None and getattr(dev, "pin", None) in pins:
            rules.append(rule())
    spec = {
        "ms": ms,  # None: no timer; 0 wakes at once (a 0 us timer), as on the chip
        "ext0": ext0,
        "ext1": ext1,
        "levels": {str(p): pins_level(p) for p in pins},
        "rules": rules,
    }
    js.polekitHw.deepsleep(json.dumps(spec))
    while True:  # the chip never returns from deep sleep: the board ends this VM
        pass


def pins_level(pin):
    return pins.get(pin, 0)


def uart_write(uart_id, data):
    dev = uart_devices.get(uart_id)
    if dev is not None:
        dev.on_write(data)
    else:
        js.polekitHw.uartWrite(uart_id, hex_of(data))


def adc_u16(pin):
    v = adc.get(pin, 0)
    return v() if callable(v) else v  # a device that answers at the moment of conversion


def set_pin(pin, value):
    value = 1 if value else 0
    if pins.get(pin) == value:
        return
    pins[pin] = value
    js.polekitHw.pinOut(pin, value)  # the host sees the level (a modem's PWRKEY)
    for cb in pin_listeners.get(pin, ()):
        cb(value)


# ---- called from the host (through the worker) ------------------------------------


def set(path, value):  # noqa: A001 - the control channel's verb
    name, _, quantity = path.partition(".")
    dev = devices.get(name)
    if dev is None:
        raise KeyError(
            "no device %r on this board; devices: %s" % (name, ", ".join(sorted(devices)))
        )
    dev.set(quantity or "value", value)
    return True


def get(path):
    name, _, quantity = path.partition(".")
    dev = devices.get(name)
    if dev is None:
        raise KeyError(
            "no device %r on this board; devices: %s" % (name, ", ".join(sorted(devices)))
        )
    return dev.get(quantity or "value")


RX_BUFFER = 1024  # bytes a UART holds unread; older ones are lost, as in the chip's FIFO


def receive(uart_id, data):
    buf = uart_rx.setdefault(uart_id, bytearray())
    buf.extend(data)
    if len(buf) > RX_BUFFER:
        uart_rx[uart_id] = buf[len(buf) - RX_BUFFER :]


def pull_uart(uart_id):
    # what the UART's FIFO took in from the wire since the last look
    hex_text = js.polekitHw.uartTake(uart_id)
    if hex_text:
        receive(uart_id, bytes.fromhex(hex_text))


def wait_uart(uart_id, ms):
    # block (the VM, as a read blocks its task on the chip) until bytes arrive or ms pass
    pull_uart(uart_id)
    if not uart_rx.get(uart_id) and ms > 0:
        js.polekitHw.uartWait(uart_id, ms)
        pull_uart(uart_id)


def tick(now_ms):
    global ticks_ms
    ticks_ms = now_ms
    for t in list(timers):
        t._due(now_ms)
    for dev in devices.values():
        if hasattr(dev, "tick"):
            dev.tick(now_ms)


def interrupt():
    # Ctrl-C while the firmware runs: its main tasks end with KeyboardInterrupt, as
    # asyncio.run() would on the chip, and the REPL is there
    alive = [t for t in main_tasks if not t.done()]
    for t in alive:
        t.cancel()
    main_tasks.clear()
    if alive:
        print("Traceback (most recent call last):\r\nKeyboardInterrupt: ")
    return len(alive)


def set_rtc(ms_since_2000):
    # machine.RTC().datetime(...): the board keeps the new offset across deep sleep and resets
    global rtc_offset_ms
    import time as _t  # the port's, or _rtc_time: both give host ms plus the offset

    rtc_offset_ms = ms_since_2000 - (_t.time_ns() // 1000000 - rtc_offset_ms)
    js.polekitHw.rtcSet(rtc_offset_ms)
