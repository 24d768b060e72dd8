# Corrections to micropython-esp32-stubs 1.27.0.post1's bluetooth.pyi: tests/chipapi.py puts
# each method here in place of the stub's. Each was checked against MicroPython v1.27.0,
# extmod/modbluetooth.c (line numbers at that tag). A MP_DEFINE_CONST_FUN_OBJ_N or _VAR_BETWEEN
# function takes positional arguments only; a _KW one parses its table with mp_arg_parse_all,
# where an argument without MP_ARG_KW_ONLY may be given by position or by name.
from _mpy_shed import AnyReadableBuf

class BLE:
    # lines 454-458 (bluetooth_ble_gap_advertise's table):
    #   { MP_QSTR_interval_us, MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_SMALL_INT(500000)} },
    #   { MP_QSTR_adv_data, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    #   { MP_QSTR_resp_data, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_rom_obj = MP_ROM_NONE} },
    #   { MP_QSTR_connectable, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_rom_obj = MP_ROM_TRUE} },
    # The stub makes interval_us required and interval_us, adv_data positional-only; the chip
    # defaults interval_us to 500000 and takes both by name too. interval_us=None stops.
    def gap_advertise(
        self,
        interval_us: int | None = 500000,
        adv_data: AnyReadableBuf | None = None,
        *,
        resp_data: AnyReadableBuf | None = None,
        connectable: bool = True,
    ) -> None: ...
    # lines 621-628: the handles are small ints (MP_OBJ_NEW_SMALL_INT), not memoryviews
    def gatts_register_services(
        self, services_definition: tuple, /
    ) -> tuple[tuple[int, ...], ...]: ...
    # line 733: bluetooth_ble_gatts_read(self_in, value_handle_in), mp_obj_get_int(handle)
    def gatts_read(self, value_handle: int, /) -> bytes: ...
    # lines 742-752: VAR_BETWEEN 3..4, returns the length written (MP_OBJ_NEW_SMALL_INT)
    def gatts_write(
        self, value_handle: int, data: AnyReadableBuf, send_update: bool = False, /
    ) -> int: ...
    # bluetooth_ble_gatts_set_buffer: VAR_BETWEEN 3..4 = self, value_handle, len[, append],
    # each read with mp_obj_get_int / mp_obj_is_true; the stub types the handle as a memoryview
    def gatts_set_buffer(self, value_handle: int, len: int, append: bool = False, /) -> None: ...
    # lines 754-772: VAR_BETWEEN 3..4 = self, conn_handle, value_handle[, data]; the stub
    # leaves out conn_handle (the chip's first argument) and makes data required
    def gatts_notify(
        self, conn_handle: int, value_handle: int, data: AnyReadableBuf | None = None, /
    ) -> None: ...
    # lines 774-777: as gatts_notify; the stub leaves out data
    def gatts_indicate(
        self, conn_handle: int, value_handle: int, data: AnyReadableBuf | None = None, /
    ) -> None: ...
