# `time` on the emulated board, as the ESP32 port has it (MicroPython v1.27.0: the port keeps
# py/mpconfig.h's default epoch, 2000-01-01; ports/esp32/modtime.c: time() is an int from
# gettimeofday()). The WebAssembly port's own `time` counts Unix time from the host's clock,
# which would give a board just powered on the right time: a chip has no clock until it is
# set (NTP, the network's time). So the RTC here counts from 2000-01-01 at power-on, keeps
# running across deep sleep and resets (the board keeps its offset, as the ESP32's RTC timer
# runs on), is lost with the power, and machine.RTC().datetime(...) sets it. The VM's
# startup puts this module in sys.modules as `time`; ticks_*() and sleep*() are the port's.
import time as _host
from time import *  # noqa: F403 - ticks_ms, sleep_ms... as the port has them

import _board

_EPOCH_2000 = 946684800  # Unix seconds at 2000-01-01


def time_ns():
    return _host.time_ns() + _board.rtc_offset_ms * 1000000


def time():
    return time_ns() // 1000000000


def gmtime(_secs=None):
    return _host.gmtime((time() if _secs is None else int(_secs)) + _EPOCH_2000)


localtime = gmtime  # no time zones on the chip either


def mktime(_local_time):
    return _host.mktime(_local_time) - _EPOCH_2000
