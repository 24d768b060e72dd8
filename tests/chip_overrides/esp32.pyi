# Corrections to micropython-esp32-stubs 1.27.0.post1's esp32.pyi (see machine.pyi here for
# the conventions), checked against MicroPython v1.27.0 ports/esp32/modesp32.c.
from typing import Any

# esp32_wake_on_ext0 (lines 67-100): a mp_arg_t table, both entries without MP_ARG_KW_ONLY
# and with defaults (the current pin and level): by position or by name, both optional;
# level is MP_ARG_BOOL: any object, taken for its truth
def wake_on_ext0(pin: Any = ..., level: int | bool = ...) -> None: ...

# esp32_wake_on_ext1 (lines 104-138): the same; pins None (its default) keeps the pins set
# before, so only an empty list ends EXT1
def wake_on_ext1(pins: Any = None, level: int | bool = ...) -> None: ...
