# `bluetooth` for the emulated board: the BLE API's advertising side.
#
# Until the virtual air (shared with the gateway through bleak) exists, adverts stay on
# the board: the host reads the latest ones through the control channel, get("ble.adverts"),
# as [[time_ms, hex payload], ...], newest last.
import _board

FLAG_READ = 0x0002
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010


class UUID:
    def __init__(self, value):
        self.value = value


class _Radio:
    # the board's radio, registered as device "ble" for the control channel
    KEEP = 32

    def __init__(self):
        self.adverts = []
        self.count = 0
        self.absent = False
        self.resp = ""  # the scan response, hex

    def set(self, quantity, value):
        if quantity == "absent":
            self.absent = bool(value)
            return
        if quantity == "clear":  # forget the adverts kept so far
            self.adverts = []
            return
        raise KeyError("ble has: adverts, count (read only), absent, clear")

    def get(self, quantity):
        if quantity == "adverts":
            return [list(a) for a in self.adverts]
        if quantity == "count":
            return self.count
        if quantity == "resp":
            return self.resp
        if quantity == "absent":
            return self.absent
        raise KeyError("ble has: adverts, count, resp, absent")


_radio = _board.devices.setdefault("ble", _Radio())


class BLE:
    def __init__(self):
        self._active = False
        self._irq = None

    def active(self, value=None):
        if value is None:
            return self._active
        self._active = bool(value)
        return self._active

    def config(self, *names, **kw):
        if names and names[0] == "mac":
            import machine

            return (0, machine.unique_id()[:6])
        return None

    def irq(self, handler):
        self._irq = handler

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        if not self._active:
            raise OSError(19)  # as the chip: advertising needs an active radio
        if interval_us is None or adv_data is None:
            return
        _radio.count += 1
        if resp_data is not None:
            _radio.resp = "".join("%02x" % b for b in resp_data)
        _radio.adverts.append((_board.ticks_ms, "".join("%02x" % b for b in adv_data)))
        if len(_radio.adverts) > _Radio.KEEP:
            _radio.adverts.pop(0)
