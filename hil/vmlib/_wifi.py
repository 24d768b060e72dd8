# The emulated board's Wi-Fi link, as the host's faults set it: `wifi.up` 1 (the access point
# is in reach, the default) or 0 (it is gone). The TCP connections live in the board's main
# thread (hil/js/sockets.mjs), which drops them itself when the link goes; here the VM's side
# of the same fact: network.WLAN(STA_IF) is connected only while the link is up.
import _board


class Wifi:
    def __init__(self):
        self.up = 1

    def set(self, quantity, value):
        if quantity != "up":
            raise KeyError("wifi has: up (1: the access point is in reach, 0: it is gone)")
        if value not in (0, 1):
            raise ValueError("wifi.up takes 0 or 1, not %r" % (value,))
        self.up = int(value)

    def get(self, quantity):
        if quantity != "up":
            raise KeyError("wifi has: up")
        return self.up


LINK = Wifi()
_board.devices["wifi"] = LINK
