"""The docs keep up with the code: docs/protocols.md lists every name the tables in protocols/
define, and the quickstart never polls a board whose firmware its previous step stopped."""

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


def test_quickstart_restarts_the_firmware_mpremote_stopped_before_the_gateway_polls() -> None:
    # mpremote's exec/run/repl stop the node's firmware; a gateway step after them, with no
    # reset in between, meets a silent board ("no answer")
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    stopped = False
    for line in quickstart.splitlines():
        if line.startswith(".venv/bin/mpremote connect") and " reset" not in line:
            stopped = True
        elif "polekit emulate reset" in line:
            stopped = False
        elif line.startswith(".venv/bin/polekit gateway"):
            assert not stopped, f"the board's firmware is stopped when the quickstart says {line}"
