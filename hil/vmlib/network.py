# `network` for the emulated board: a WLAN interface that is connected to the host network.
# What firmware needs to see is the ESP32 API and a station that comes up when asked to, and
# goes when the host takes the Wi-Fi link down (`wifi.up` = 0, hil/vmlib/_wifi.py); sockets
# are in socket.py. Calls are held to the chip's (see machine.py): "_name" parameters are
# positional-only.
import _wifi

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201


class WLAN:
    _active = {}
    _connected = {}

    def __init__(self, _interface_id=STA_IF):
        self.id = _interface_id

    def active(self, _is_active=None):
        if _is_active is None:
            return WLAN._active.get(self.id, False)
        WLAN._active[self.id] = bool(_is_active)
        return None

    def connect(self, _ssid=None, _key=None, *, bssid=None):
        if not self.active():
            raise OSError("Wifi Not Started")
        WLAN._connected[self.id] = _ssid

    def disconnect(self):
        WLAN._connected.pop(self.id, None)

    def isconnected(self):
        # the station stays associated while the access point is in reach; the chip
        # reconnects by itself when it comes back (WLAN.config(reconnects=-1), the default)
        return self.id in WLAN._connected and (self.id != STA_IF or _wifi.LINK.up == 1)

    def status(self, _param=None):
        if _param == "rssi":
            return -55
        if self.isconnected():
            return STAT_GOT_IP
        return STAT_NO_AP_FOUND if self.id in WLAN._connected else STAT_IDLE

    def ifconfig(self, _configtuple=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, _name=None, **kw):
        if _name == "mac":  # the station has the base MAC, the soft-AP the next one
            import _board

            macs = _board.DEFINITION["macs"]
            return bytes.fromhex(macs["wifi_ap" if self.id == AP_IF else "wifi_sta"])
        return None

    def scan(self):
        return []
