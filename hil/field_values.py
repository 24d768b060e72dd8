"""Values that move as a field device's do, for simulated devices (``polekit simulate``).

A point of a register map is known by its name (the reference model's: voltage,
temperature...). Each known quantity wanders around a level, slowly (a sine over minutes,
at a phase of its own per device) with a little noise; power follows voltage and current;
energy and uptime only grow. Writable points are left alone: they hold what a master wrote.
A read-only point the tables do not know keeps its value (0). Seeded, so a test or a demo
can have the same day twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from polekit.protocols.modbus import RegisterMap

# name: (level, swing, period_s, noise), in the point's unit as the register maps give it
WANDER = {
    "voltage": (230.0, 3.0, 600.0, 0.3),
    "current": (2.5, 2.0, 300.0, 0.05),
    "frequency": (50.0, 0.03, 120.0, 0.005),
    "temperature": (21.0, 4.0, 1800.0, 0.05),
    "humidity": (55.0, 10.0, 1800.0, 0.3),
    "illuminance": (15000.0, 14000.0, 3600.0, 100.0),
    "pm1": (8.0, 5.0, 900.0, 1.0),
    "pm2_5": (15.0, 10.0, 900.0, 1.5),
    "pm10": (25.0, 15.0, 900.0, 2.0),
    "noise": (55.0, 10.0, 300.0, 1.5),
    "tilt": (0.3, 0.2, 600.0, 0.05),
}
POWER_FACTOR = 0.95  # power = voltage x current x this
# counters: name -> (first value, lowest and highest; how much a second adds, from the others)
COUNTERS: dict[str, tuple[float, float, Callable[[dict[str, Any]], float]]] = {
    "energy": (100.0, 5000.0, lambda values: values.get("power", 0.0) / 3.6e6),  # W*s -> kWh
    "uptime": (0.0, 0.0, lambda values: 1.0),
}


class FieldValues:
    """The moving values of one simulated device; ``at(t_s)`` gives them at time ``t_s``
    (seconds, from any monotonic clock; counters grow by the time between calls)."""

    def __init__(self, regmap: RegisterMap, rng: random.Random) -> None:
        self.points = {p.name: p for p in regmap if not p.writable}
        self._phase = {name: rng.uniform(0, 2 * math.pi) for name in self.points}
        self._rng = rng
        self._count = {
            name: rng.uniform(low, high)
            for name, (low, high, _) in COUNTERS.items()
            if name in self.points
        }
        self._last_t: float | None = None

    def at(self, t_s: float) -> dict[str, Any]:
        """Every value this device moves, by point name, in the points' units."""
        out: dict[str, Any] = {}
        for name in self.points.keys() & WANDER.keys():
            level, swing, period, noise = WANDER[name]
            wave = math.sin(2 * math.pi * t_s / period + self._phase[name])
            out[name] = level + swing * wave + self._rng.gauss(0, noise)
        if "power" in self.points and {"voltage", "current"} <= out.keys():
            out["power"] = out["voltage"] * out["current"] * POWER_FACTOR
        dt = 0.0 if self._last_t is None else max(0.0, t_s - self._last_t)
        self._last_t = t_s
        for name in self._count:
            self._count[name] += dt * COUNTERS[name][2](out)
            out[name] = self._count[name]
        # what the register can hold: no negative pm on an unsigned register
        return {
            name: max(0.0, value) if self.points[name].dtype.startswith("u") else value
            for name, value in out.items()
        }
