# `esp32` for the emulated board: OTA partitions and the rollback flag, enough for firmware
# that updates itself the way MicroPython on the ESP32 does. Partition contents live in RAM
# for the board's lifetime; the app-valid mark is kept by the board (see the field tools).
# Calls are held to the chip's (see machine.py): "_name" parameters are positional-only.
import _board

HEAP_DATA = 4
HEAP_EXEC = 1
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True

_state = _board.DEFINITION.setdefault("ota", {"running": "ota_0", "valid": False})
_blobs = {}


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1
    _SIZE = 0x180000  # 1.5 MiB app slots on a 4 MB flash

    def __init__(self, _id, _block_size=4096):
        if _id == Partition.RUNNING or _id == Partition.BOOT:
            _id = _state["running"]
        self.label = _id
        self.block_size = _block_size

    def info(self):
        offset = 0x10000 if self.label == "ota_0" else 0x190000
        return (
            Partition.TYPE_APP,
            0x10 + int(self.label[-1]),
            offset,
            Partition._SIZE,
            self.label,
            False,
        )

    def get_next_update(self):
        return Partition("ota_1" if self.label == "ota_0" else "ota_0")

    def _blob(self):
        return _blobs.setdefault(self.label, bytearray(b"\xff" * 0))

    def writeblocks(self, _block_num, _buf, _offset=0):
        blob = self._blob()
        start = _block_num * self.block_size + _offset
        if len(blob) < start + len(_buf):
            blob.extend(b"\xff" * (start + len(_buf) - len(blob)))
        blob[start : start + len(_buf)] = _buf

    def readblocks(self, block_num, buf, offset=0):
        blob = self._blob()
        start = block_num * self.block_size + offset
        data = bytes(blob[start : start + len(buf)])
        buf[: len(data)] = data

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return Partition._SIZE // self.block_size
        if op == 5:  # block size
            return self.block_size
        return 0

    def set_boot(self):
        _state["running"] = self.label
        _state["valid"] = False

    @staticmethod
    def mark_app_valid_cancel_rollback():
        _state["valid"] = True


# the chip's own temperature sensor: the ESP32 has raw_temperature() (degrees Fahrenheit,
# uncalibrated), the C3 mcu_temperature() (Celsius): ports/esp32/modesp32.c
if _board.DEFINITION.get("chip", "esp32") == "esp32":

    def raw_temperature():
        return 113

    # deep-sleep wake sources on RTC GPIOs (ports/esp32/modesp32.c; RTC_IS_VALID_EXT_PIN):
    # the board (hil/js/board.mjs) watches these pins while the chip sleeps
    _RTC_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)

    def _rtc_pin(pin):
        n = pin.id if hasattr(pin, "id") else pin
        if n not in _RTC_PINS:
            raise ValueError("invalid pin")
        return n

    # ports/esp32/modesp32.c v1.27.0 (esp32_wake_on_ext0/ext1): both arguments optional, by
    # position or by name, each left out keeps what it was (their defaults are the current
    # setting); ext0's pin None ends EXT0, ext1's pins None keeps the pins (only an empty
    # list ends EXT1)
    def wake_on_ext0(pin=..., level=...):
        old_pin, old_level = _board.wake["ext0"]
        if pin is ...:
            pin = old_pin
        elif pin is not None:
            pin = _rtc_pin(pin)
        _board.wake["ext0"] = (pin, old_level if level is ... else (1 if level else 0))

    def wake_on_ext1(pins=None, level=...):
        old_pins, old_level = _board.wake["ext1"]
        if pins is not None:
            old_pins = [_rtc_pin(p) for p in pins]
        _board.wake["ext1"] = (old_pins, old_level if level is ... else (1 if level else 0))

else:

    def mcu_temperature():
        return 45
