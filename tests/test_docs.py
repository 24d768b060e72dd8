"""docs/protocols.md keeps up with the tables in protocols/ (every name the code defines)."""

from __future__ import annotations

from polekit.protocols import bthome, identity, modbus, model

from conftest import ROOT

DOC = (ROOT / "docs" / "protocols.md").read_text()


def test_reference_lists_every_quantity_device_type_point_and_bthome_object() -> None:
    names = [line.split()[0] for line in model.QUANTITIES.strip().splitlines()]
    names += [line.split()[0] for line in identity.DEVICE_TYPES.strip().splitlines()]
    names += [p.name for m in modbus.map_names() for p in modbus.register_map(m)]
    names += [line.split()[1] for line in bthome.TABLE.strip().splitlines()]
    missing = sorted({n for n in names if f"`{n}`" not in DOC})
    assert not missing, f"docs/protocols.md does not mention: {missing}"
