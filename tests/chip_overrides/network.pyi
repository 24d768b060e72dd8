# Corrections to micropython-esp32-stubs 1.27.0.post1's network.pyi (see machine.pyi here for
# how they apply). Checked against MicroPython v1.27.0, ports/esp32/network_wlan.c.

class WLAN:
    # line 258: mp_arg_check_num(n_args, n_kw, 0, 1, false): the interface is optional
    # (STA_IF) and by position only; the stub makes it required
    def __init__(self, interface_id: int = 0, /) -> None: ...
    # lines 313-315: ssid and key have the empty name (MP_QSTR_), so the chip takes them by
    # position only (connect(ssid="x") raises TypeError there); bssid by name only
    def connect(
        self, ssid: str | None = None, key: str | None = None, /, *, bssid: bytes | None = None
    ) -> None: ...
