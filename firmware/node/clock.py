# The node's clock. An ESP32 powered on counts from 2000-01-01 (MicroPython's epoch on the
# port) until something sets it, and a pack made meanwhile has no base time: the platform
# stamps it on arrival, which is wrong for a backlog. The uplink knows the time once it is
# connected: NB-IoT from the network (AT+CCLK?), Wi-Fi from NTP (micropython-lib's ntptime).
import time

import machine

_EPOCH_2000 = 946684800  # Unix seconds at 2000-01-01


def set_clock(transport):
    """Set the RTC from ``transport.clock()`` (Unix seconds, or None when it has no time);
    call it while the transport is connected. True if the clock was set. Never raises for
    a link fault: a node without the time sends packs without a base time."""
    try:
        unix = transport.clock()
    except OSError:
        return False
    if unix is None:
        return False
    secs = int(unix) - (_EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0)
    tm = time.gmtime(secs)
    micros = int((unix - int(unix)) * 1000000)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], micros))
    return True
