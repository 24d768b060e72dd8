# Corrections to micropython-esp32-stubs 1.27.0.post1's machine.pyi: tests/chipapi.py puts each
# method here in place of all the stub's definitions of that name. Checked against MicroPython
# v1.27.0 (file and line at that tag). A MP_DEFINE_CONST_FUN_OBJ_N or _VAR_BETWEEN function
# takes positional arguments only; in a mp_arg_t table an entry without MP_ARG_KW_ONLY may be
# given by position or by name. Where the stub is stricter than the chip and no firmware needs
# the difference, the stub stands (the emulator follows it): docs/hil.md lists those.
from collections.abc import Callable
from typing import Any, overload

from _typeshed import Incomplete

PinLike = Any

class Pin:
    # ports/esp32/machine_pin.c lines 309-313: handler, trigger, wake; the ESP32 has no
    # `priority` or `hard` (the stub offers both: Pin.irq(hard=True) raises TypeError on the
    # chip). trigger's default is GPIO_INTR_POSEDGE | GPIO_INTR_NEGEDGE = 3.
    def irq(
        self,
        handler: Callable[[Pin], None] | None = None,
        trigger: int = 3,
        *,
        wake: int | None = None,
    ) -> Callable[..., Incomplete]: ...

class Signal:
    # extmod/machine_signal.c lines 109-123: given a Pin object, Signal takes it alone and
    # invert only by name (n_args == 2 raises TypeError); the stub's Signal(pin, True) form
    # is refused by the chip. Given pin arguments, they go to Pin() (lines 55-88).
    @overload
    def __init__(self, pin_obj: PinLike, /, *, invert: bool = False) -> None: ...
    @overload
    def __init__(
        self,
        id: PinLike,
        /,
        mode: int = -1,
        pull: int = -1,
        *,
        value: Any = None,
        drive: int | None = None,
        invert: bool = False,
    ) -> None: ...

class I2C:
    # ports/esp32/machine_i2c.c lines 342-348: id (default I2C_NUM_0) by position or name,
    # scl, sda, freq, timeout by name only; the stub has no timeout. Without scl/sda the
    # pins are the port's defaults (machine_i2c.h lines 36-37, 44-45: I2C0 SCL 18 SDA 19, I2C1
    # SCL 25 SDA 26 on the ESP32), not the board's wiring.
    def __init__(
        self,
        id: int = 0,
        /,
        *,
        scl: PinLike | None = None,
        sda: PinLike | None = None,
        freq: int = 400000,
        timeout: int = 50000,
    ) -> None: ...

class ADC:
    # ports/esp32/machine_adc.c lines 180 and 195: atten is keyword-only, and without it the
    # chip sets ADC_ATTEN_MAX (ATTN_11DB, about 0..3.1 V), not ATTN_0DB as the stub says
    def __init__(self, pin: PinLike, /, *, atten: int = 3) -> None: ...

class UART:
    # ports/esp32/machine_uart.c lines 238-251 (the init table) and 314, 363: a new UART runs
    # at 115200 baud (the stub says 9600); baudrate=0 or leaving it out keeps the current
    # rate in init(). rts, cts and flow exist on the chip (the stub leaves them out). Without
    # tx/rx a UART uses the port's default pins (lines 276-288: UART1 RX 9 TX 10, the ESP32's
    # flash pins; UART2 RX 16 TX 17), not the board's wiring.
    def __init__(
        self,
        id: int,
        /,
        baudrate: int = ...,
        bits: int = 8,
        parity: int | None = None,
        stop: int = 1,
        *,
        tx: PinLike | None = None,
        rx: PinLike | None = None,
        rts: PinLike | None = None,
        cts: PinLike | None = None,
        txbuf: int | None = None,
        rxbuf: int | None = None,
        timeout: int | None = None,
        timeout_char: int | None = None,
        invert: int | None = None,
        flow: int | None = None,
    ) -> None: ...
    def init(
        self,
        baudrate: int = ...,
        bits: int = 8,
        parity: int | None = None,
        stop: int = 1,
        *,
        tx: PinLike | None = None,
        rx: PinLike | None = None,
        rts: PinLike | None = None,
        cts: PinLike | None = None,
        txbuf: int | None = None,
        rxbuf: int | None = None,
        timeout: int | None = None,
        timeout_char: int | None = None,
        invert: int | None = None,
        flow: int | None = None,
    ) -> None: ...

class RTC:
    # ports/esp32/machine_rtc.c line 164: MP_DEFINE_CONST_FUN_OBJ_2, so init takes exactly
    # one argument, the date-time tuple; the stub also offers init() with none
    def init(self, datetime: tuple[int, ...], /) -> None: ...

class PWM:
    # ports/esp32/machine_pwm.c lines 644-649 and 720: PWM(dest, freq) takes freq by position
    # too (mp_arg_check_num(n_args, n_kw, 1, 2, true)); duty (0..1023), invert and lightsleep
    # are keyword-only and exist on the chip, which the stub leaves out
    def __init__(
        self,
        dest: PinLike,
        /,
        freq: int = ...,
        *,
        duty: int = ...,
        duty_u16: int = ...,
        duty_ns: int = ...,
        invert: bool = False,
        lightsleep: bool = False,
    ) -> None: ...
