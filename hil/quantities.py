"""What a test, the demo or ``polekit emulate set`` may put into the emulated board's world.

Each virtual peripheral's physical quantities, by device kind, with the range the real part
can report (its datasheet's measuring range) or the world can hold; the board checks every
value here before it reaches the VM, so ``sht3x.temperature=1e999``, ``=nan`` or ``=hot`` is
one clear error, never a dead board or a crashed firmware loop.
"""

from __future__ import annotations

import math
from typing import Any

# kind -> quantity -> (lowest, highest, unit); None for highest: no upper bound
RANGES: dict[str, dict[str, tuple[float, float | None, str]]] = {
    "sht3x": {"temperature": (-40, 125, "Cel"), "humidity": (0, 100, "%RH")},  # SHT3x-DIS
    "bh1750": {"illuminance": (0, 65535, "lx")},  # BH1750FVI: 1..65535 lx
    "adxl345": {"tilt": (-180, 180, "degrees")},
    "pms5003": {"pm1": (0, 1000, "ug/m3"), "pm2_5": (0, 1000, "ug/m3"), "pm10": (0, 1000, "ug/m3")},
    "contact": {"active": (0, 1, "0 or 1")},
    "button": {"active": (0, 1, "0 or 1"), "press": (0, 600000, "ms")},
    "adc": {"voltage": (0, 50, "V")},  # at the divider's input
    "loop_4_20": {"metres": (-1, 100, "m"), "open": (0, 1, "0 or 1")},
    "rain_gauge": {
        "tips": (0, 1000, "tips"),
        "rate_mm_h": (0, 500, "mm/h"),  # the wettest hour on record is ~300 mm
        "fill_mm": (0, 10, "mm"),
        "bounce": (0, 20, "chatters"),
    },
    "flow_meter": {"l_min": (0, 10000, "L/min")},
    "cover": {"open": (0, 1, "0 or 1"), "tilt": (-180, 180, "degrees")},
}
# faults any device takes (spike is checked against the device's own quantities)
FAULTS: dict[str, tuple[float, float | None, str]] = {
    "absent": (0, 1, "0 or 1"),
    "stuck": (0, 1, "0 or 1"),
    "noise": (0, None, "amplitude"),
}


class BadValueError(ValueError):
    """A value the emulated world cannot hold, with the path, the value and what is allowed."""


def _check(path: str, value: Any, allowed: tuple[float, float | None, str]) -> None:
    low, high, unit = allowed
    if isinstance(value, bool) and unit == "0 or 1":
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValueError(f"{path}={value!r}: a number is needed ({_span(allowed)})")
    if not math.isfinite(value):
        raise BadValueError(f"{path}={value}: not a finite number ({_span(allowed)})")
    if value < low or (high is not None and value > high):
        raise BadValueError(f"{path}={value}: out of range ({_span(allowed)})")


def _span(allowed: tuple[float, float | None, str]) -> str:
    low, high, unit = allowed
    if unit == "0 or 1":
        return "0 or 1"
    return f"{low}..{high} {unit}" if high is not None else f">= {low}, {unit}"


def check(kind: str | None, path: str, value: Any) -> None:
    """Raise BadValueError unless ``value`` fits ``path`` (``device.quantity``) on a device of
    ``kind`` (a board definition's sensor type; None: a device this table does not know, such
    as the radio, checked by the board itself)."""
    quantities = RANGES.get(kind or "")
    if quantities is None:
        return
    name, _, quantity = path.partition(".")
    quantity = quantity or "value"
    if quantity in FAULTS:
        _check(path, value, FAULTS[quantity])
    elif quantity == "spike":
        if not isinstance(value, dict):
            raise BadValueError(
                f'{path}: give {{quantity: value}}, e.g. {{"{next(iter(quantities))}": 1}}'
            )
        for q, v in value.items():
            if q not in quantities:
                raise BadValueError(f"{path}: {name} has no {q!r}; it has: {', '.join(quantities)}")
            _check(f"{path}.{q}", v, quantities[q])
    elif quantity in quantities:
        _check(path, value, quantities[quantity])
