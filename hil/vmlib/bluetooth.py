# `bluetooth` for the emulated board: advertising and a GATT server, on the virtual air.
#
# Adverts and notifications are pushed to the host (js.polekitHw.radio, a JSON line), which
# puts them on the shared virtual air (hil/air.py) when the board is on one; the latest
# adverts are also kept for the control channel: get("ble.adverts") -> [[time_ms, hex]...].
# Centrals on the air reach the GATT server through the control channel:
#   set("ble.connect", conn)  set("ble.disconnect", conn)  set("ble.write", "conn:handle:hex")
#   get("ble.services") -> [{"uuid", "chars": [{"uuid", "handle", "flags"}]}]
#   get("ble.value.HANDLE") -> hex
# and the firmware's irq handler sees the same events as on the chip.
# Calls are held to the chip's (see machine.py): "_name" parameters are positional-only.
import json as _json

import _board
import js as _js

FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
# a value's buffer until gatts_set_buffer (MP_BLUETOOTH_DEFAULT_ATTR_LEN): as on the chip
# (extmod/nimble/modbluetooth_nimble.c), a central's longer write is cut to it, silently
_DEFAULT_ATTR_LEN = 20


def _hex(data):
    return "".join("%02x" % b for b in data)


def _push(msg):
    try:
        _js.polekitHw.radio(_json.dumps(msg))
    except AttributeError:  # an older host without the radio path: adverts stay local
        pass


class UUID:
    def __init__(self, _value):
        self.value = _value

    def __str__(self):
        if isinstance(self.value, int):
            return "0000%04x-0000-1000-8000-00805f9b34fb" % self.value
        return str(self.value).lower()

    def __eq__(self, other):
        return isinstance(other, UUID) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


class _Radio:
    # the board's radio, registered as device "ble" for the control channel
    KEEP = 32

    def __init__(self):
        self.adverts = []
        self.count = 0
        self.absent = False
        self.resp = ""  # the scan response, hex
        self.ble = None  # the BLE object the firmware made (its irq handler, its services)
        self.services = []
        self.values = {}  # attribute handle -> bytes
        self.buffers = {}  # attribute handle -> what a write may put there (bytes)

    def set(self, quantity, value):
        if quantity == "absent":
            self.absent = bool(value)
            return
        if quantity == "clear":  # forget the adverts kept so far
            self.adverts = []
            return
        ble = self.ble
        if quantity in ("connect", "disconnect"):
            if ble is not None and ble._irq:
                event = _IRQ_CENTRAL_CONNECT if quantity == "connect" else _IRQ_CENTRAL_DISCONNECT
                ble._irq(event, (int(value), 0, b"\x00" * 6))
            return
        if quantity == "write":
            conn, handle, data = str(value).split(":")
            handle = int(handle)
            if handle not in self.values:
                raise KeyError("no attribute handle %d" % handle)
            self.values[handle] = bytes.fromhex(data)[: self.buffers[handle]]
            if ble is not None and ble._irq:
                ble._irq(_IRQ_GATTS_WRITE, (int(conn), handle))
            return
        raise KeyError("ble has: adverts, count, resp, absent, clear, connect, write, disconnect")

    def get(self, quantity):
        if quantity == "adverts":
            return [list(a) for a in self.adverts]
        if quantity == "count":
            return self.count
        if quantity == "absent":
            return self.absent
        if quantity == "resp":
            return self.resp
        if quantity == "services":
            return self.services
        if quantity.startswith("value."):
            return _hex(self.values[int(quantity[6:])])
        raise KeyError("ble has: adverts, count, resp, absent, services, value.HANDLE")


_radio = _board.devices.setdefault("ble", _Radio())


class BLE:
    # One radio: BLE() gives the same object every time, as on the chip (extmod/
    # modbluetooth.c bluetooth_ble_make_new keeps it in MP_STATE_VM), so a second BLE() (a
    # self-test's) keeps the firmware's irq handler and its GATT server answering
    def __new__(cls):
        if _radio.ble is None:
            ble = object.__new__(cls)
            ble._active = False
            ble._irq = None
            ble._adv = None  # the advert being sent: [interval_us, adv_data]
            _radio.ble = ble
        return _radio.ble

    def active(self, _active=None):
        if _active is None:
            return self._active
        self._active = bool(_active)
        return self._active

    def config(self, _param=None, **kw):
        if _param == "mac":  # a public address: the base MAC + 2
            if not self._active:
                raise OSError(1)  # as the chip: EPERM (ERRNO_BLUETOOTH_NOT_ACTIVE)
            return (0, bytes.fromhex(_board.DEFINITION["macs"]["bt"]))
        return None

    def irq(self, _handler):
        self._irq = _handler

    # extmod/modbluetooth.c: resp_data and connectable by name only; interval_us=None stops,
    # adv_data (or resp_data) None keeps what the last call gave
    def gap_advertise(self, interval_us=500000, adv_data=None, *, resp_data=None, connectable=True):
        if not self._active:
            raise OSError(19)  # as the chip: advertising needs an active radio
        if interval_us is None:
            self._adv = None
            _push({"op": "adv_stop"})
            return
        if adv_data is None:
            if self._adv is None:
                adv_data = b""
            else:
                adv_data = self._adv[1]
        self._adv = [interval_us, bytes(adv_data)]
        _radio.count += 1
        _radio.adverts.append((_board.ticks_ms, _hex(adv_data)))
        if resp_data is not None:
            _radio.resp = _hex(resp_data)
        if len(_radio.adverts) > _Radio.KEEP:
            _radio.adverts.pop(0)
        if not _radio.absent:
            _push(
                {"op": "adv", "data": _hex(adv_data), "resp": _radio.resp, "every_us": interval_us}
            )

    def gatts_register_services(self, _services_definition):
        handles = []
        table = []
        handle = 0
        for uuid, chars in _services_definition:
            handle += 1
            entry = {"uuid": str(uuid), "chars": []}
            mine = []
            for char in chars:
                handle += 1
                entry["chars"].append({"uuid": str(char[0]), "handle": handle, "flags": char[1]})
                _radio.values[handle] = b""
                _radio.buffers[handle] = _DEFAULT_ATTR_LEN
                mine.append(handle)
            table.append(entry)
            handles.append(tuple(mine))
        _radio.services = table
        return tuple(handles)

    def gatts_read(self, _value_handle):
        return _radio.values[_value_handle]

    def gatts_set_buffer(self, _value_handle, _len, _append=False):
        if _value_handle not in _radio.values:
            raise ValueError("invalid handle")
        if _append:
            raise NotImplementedError("append mode is not emulated")
        _radio.buffers[_value_handle] = _len

    def gatts_write(self, _value_handle, _data, _send_update=False):
        _radio.values[_value_handle] = bytes(_data)
        return len(_data)

    def gatts_notify(self, _conn_handle, _value_handle, _data=None):
        if _data is not None:
            _radio.values[_value_handle] = bytes(_data)
        _push(
            {
                "op": "notify",
                "conn": _conn_handle,
                "handle": _value_handle,
                "data": _hex(_radio.values[_value_handle]),
            }
        )

    def gap_disconnect(self, _conn_handle):
        _push({"op": "disconnect", "conn": _conn_handle})
        return True
