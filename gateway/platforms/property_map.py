"""From our reference model's names and units to a cloud thing model's identifiers.

Cloud platforms (IoTDA, OneNET, Alibaba Cloud IoT) each define a product's properties in
their console: an identifier, a data type and a unit shown next to the value. Our readings
carry the reference model's names (``protocols/model.py``) in SenML units, which are not
what a person types into a console (``kg/m3`` for PM2.5, ``J`` for energy). So each
adapter sends a reading through a :class:`PropertyMap`: a table from our name to the
platform's identifier and the unit the product defines, with the value converted.

The default row for a quantity keeps our name as the identifier (letters, digits and
``_``: accepted by all three consoles) and picks the human-scale unit: the model's
secondary unit when it has one (``hPa``, ``ug/m3``, ``ppm``, ``kWh``, ``dBm``, ``cm``),
else the primary one. A config overrides any row (``[platform.properties]``); a reading
whose name is neither in the model nor in the table keeps its name and unit as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from polekit.protocols.errors import SenMLError
from polekit.protocols.model import QUANTITIES, convert, primary_unit, quantity


@dataclass(frozen=True)
class Property:
    """One row: the platform's identifier for a quantity and the unit it is sent in
    (None: the reading's own unit, e.g. for booleans)."""

    identifier: str
    unit: str | None


def default_rows() -> dict[str, Property]:
    """The default table: every quantity of the reference model, by our name."""
    rows = {}
    for line in QUANTITIES.strip().splitlines():
        name = line.split()[0]
        q = quantity(name)
        assert q is not None
        kind, primary, secondary = q
        rows[name] = Property(name, None if kind == "vb" else secondary or primary)
    return rows


class PropertyMap:
    """Maps (name, value, unit) readings to (identifier, value) for one platform.

    ``overrides`` maps our name to a :class:`Property`; it replaces the default row.
    Raises :class:`SenMLError` at construction when an override's unit cannot be
    reached from the quantity's unit (``temperature`` in ``kWh``)."""

    def __init__(self, overrides: Mapping[str, Property] | None = None) -> None:
        self.rows = default_rows()
        for name, row in (overrides or {}).items():
            q = quantity(name)
            if q is not None and row.unit is not None and q[1] is not None:
                if primary_unit(row.unit) != q[1]:
                    raise SenMLError(
                        f"{name} is measured in {q[1]}; {row.unit} is not a unit of it"
                    )
            self.rows[name] = row
        self._by_identifier = {row.identifier: name for name, row in self.rows.items()}

    def value(self, name: str, value: Any, unit: str | None) -> tuple[str, Any]:
        """The identifier and the value in the row's unit (booleans and text as they are)."""
        row = self.rows.get(name)
        if row is None:
            return name, value
        if row.unit is None or unit is None or isinstance(value, bool | str):
            return row.identifier, value
        if unit != row.unit:
            value = convert(value, unit, row.unit)
        return row.identifier, value

    def unit(self, name: str, unit: str | None) -> str | None:
        """The unit a reading of ``name`` in ``unit`` is sent in."""
        row = self.rows.get(name)
        return unit if row is None or row.unit is None else row.unit

    def reference_name(self, identifier: str) -> str:
        """Our name for a platform identifier (a downlink's property): the inverse map."""
        return self._by_identifier.get(identifier, identifier)

    def command_value(self, identifier: str, value: Any, unit: str | None) -> tuple[str, Any]:
        """A downlink's (identifier, value) back to (our name, value in ``unit``), the
        unit the device's point is written in (None: as it came)."""
        name = self.reference_name(identifier)
        row = self.rows.get(name)
        if row is None or row.unit is None or unit is None or isinstance(value, bool | str):
            return name, value
        return name, convert(value, row.unit, unit) if row.unit != unit else value
