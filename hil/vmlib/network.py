# `network` for the emulated board: a WLAN interface that is connected to the host network.
# The WebAssembly port has no sockets; what firmware needs to see is the ESP32 API and a
# station that comes up when asked to.
STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 1010


class WLAN:
    _active = {}
    _connected = {}

    def __init__(self, interface_id=STA_IF):
        self.id = interface_id

    def active(self, is_active=None):
        if is_active is None:
            return WLAN._active.get(self.id, False)
        WLAN._active[self.id] = bool(is_active)
        return None

    def connect(self, ssid=None, key=None, **kw):
        if not self.active():
            raise OSError("Wifi Not Started")
        WLAN._connected[self.id] = ssid

    def disconnect(self):
        WLAN._connected.pop(self.id, None)

    def isconnected(self):
        return self.id in WLAN._connected

    def status(self, param=None):
        if param == "rssi":
            return -55
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

    def ifconfig(self, config=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, name=None, **kw):
        if name == "mac":  # the station has the base MAC, the soft-AP the next one
            import _board

            macs = _board.DEFINITION["macs"]
            return bytes.fromhex(macs["wifi_ap" if self.id == AP_IF else "wifi_sta"])
        return None

    def scan(self):
        return []
