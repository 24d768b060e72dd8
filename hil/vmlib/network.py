# `network` for the emulated board: a WLAN interface that is connected to the host network.
# The WebAssembly port has no sockets; what firmware needs to see is the ESP32 API and a
# station that comes up when asked to. Calls are held to the chip's (see machine.py):
# "_name" parameters are positional-only.
STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010


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
        return self.id in WLAN._connected

    def status(self, _param=None):
        if _param == "rssi":
            return -55
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

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
