"""The field device library (protocols/devices.py): every device is read end to end, from
its simulator (hil/fieldbus.py, laid out by the same table) through the gateway's bus and
pack encoder, in the reference model's units; every map is well formed and cited; and
`polekit devices list/show` show them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from click.testing import CliRunner

from polekit.cli import main
from polekit.gateway.config import parse_config
from polekit.gateway.pipeline import PackEncoder
from polekit.gateway.sources.modbus_bus import ModbusBus
from polekit.hil.fieldbus import SimulatedBus, SimulatedMeter
from polekit.hil.line import VirtualLine
from polekit.protocols import devices as library
from polekit.protocols import dlt645, identity, model, senml

MODBUS = [n for n in library.names() if library.protocol(n) == "modbus"]
METERS = [n for n in library.names() if library.protocol(n) == "dlt645"]
EXPECTED = {
    "sdm120",
    "sdm630",
    "chint-dtsu666",
    "acrel-adl400",
    "dfrobot-sen0483",
    "dfrobot-sen0482",
    "sonbest-sm7901b",
    "scion-thp",
    "deltaohm-pmsense",
    "dlt645-1p",
    "dlt645-3p",
}


def _sample(point: Any) -> float:
    # a value the point holds exactly: 123 raw counts of an integer register, 12.5 of a float
    return 12.5 if point.dtype == "f32" else round(123 * point.scale, 9)


def test_the_library_has_the_devices_a_pole_deployment_buys() -> None:
    assert set(library.names()) >= EXPECTED


@pytest.mark.parametrize("name", library.names())
def test_every_device_is_cited_and_its_map_is_well_formed(name: str) -> None:
    title, proto, line, source = library.about(name)
    assert title and line and ("http" in source or "DL/T 645-2007" in source)
    if proto == "dlt645":
        assert [i.name for i in library.data_set(name)][0] == "energy"
        return
    regmap = library.register_map(name)
    seen: dict[tuple[str, int], str] = {}
    for p in regmap:
        for a in range(p.address, p.address + p.count):
            assert (p.table, a) not in seen, f"{p.name} overlaps {seen[(p.table, a)]}"
            seen[(p.table, a)] = p.name
        base = p.name.rsplit("_l", 1)[0] if p.name[-3:-1] == "_l" else p.name
        q = model.quantity(base)
        if q is not None and q[1] is not None:  # a model quantity: its unit converts
            assert model.primary_unit(p.unit) == q[1], (p.name, p.unit)


def test_every_modbus_device_is_read_end_to_end_from_its_simulator() -> None:
    units = {name: i + 1 for i, name in enumerate(MODBUS)}
    codes = {name: identity.make("371600", "EN", i + 1) for i, name in enumerate(MODBUS)}

    async def run() -> dict[str, Any]:
        sim = SimulatedBus(
            {units[n]: library.register_map(n) for n in MODBUS}, tcp=("127.0.0.1", 0)
        )
        await sim.start()
        for name in MODBUS:
            for p in library.register_map(name):
                await sim.set(units[name], p.name, _sample(p))
        config = parse_config(
            {
                "gateway": {"id": "gw-lib"},
                "bus": [{"name": "tcp", "type": "tcp", "host": "127.0.0.1", "port": sim.tcp_port}],
                "device": [
                    {"code": codes[n], "bus": "tcp", "unit": units[n], "map": n} for n in MODBUS
                ],
            }
        )
        encoder = PackEncoder("senml+json")
        packs: dict[str, Any] = {}

        async def sink(device: Any, values: list[tuple[Any, Any]], t: float) -> None:
            packs[device.code] = (
                values,
                encoder.decode(encoder.packer(device.code, encoder.readings(values), t)(1)),
            )

        bus = ModbusBus(config.buses["tcp"], config.devices, sink)
        task = asyncio.create_task(bus.run())
        deadline = time.monotonic() + 20
        while len(packs) < len(MODBUS) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        bus.close()
        await sim.stop()
        return packs

    packs = asyncio.run(run())
    for name in MODBUS:
        values, pack = packs[codes[name]]
        got = {p.name: v for p, v in values}
        want = {p.name: _sample(p) for p in library.register_map(name)}
        assert got == pytest.approx(want), name
        resolved = {r["n"].rsplit(":", 1)[1]: r for r in senml.resolve(pack)}
        for p in library.register_map(name):  # in the model's primary units on the wire
            rec = resolved[p.name]
            want_unit = model.primary_unit(p.unit) if p.unit else None
            assert rec.get("u") == want_unit, (name, p.name, rec)


@pytest.mark.parametrize("name", METERS)
def test_every_meter_data_set_is_read_end_to_end_from_its_simulator(name: str) -> None:
    items = library.data_set(name)
    values = {i.name: round(1.5 if i.decimals else 7, 4) for i in items}
    code = identity.make("371600", "EM", 9)

    async def run() -> dict[str, Any]:
        with VirtualLine(baudrate=9600) as line:
            gw, port = line.endpoint(), line.endpoint()
            meter = await SimulatedMeter(port, "000000000042", values).start()
            config = parse_config(
                {
                    "gateway": {"id": "gw-lib"},
                    "bus": [
                        {"name": "m", "type": "rtu", "port": gw, "baudrate": 9600, "parity": "N"}
                    ],
                    "device": [
                        {
                            "code": code,
                            "bus": "m",
                            "protocol": "dlt645",
                            "map": name,
                            "address": "000000000042",
                        }
                    ],
                }
            )
            got: dict[str, Any] = {}

            async def sink(_d: Any, vals: list[tuple[Any, Any]], _t: float) -> None:
                got.update({i.name: v for i, v in vals})

            bus = ModbusBus(config.buses["m"], config.devices, sink)
            task = asyncio.create_task(bus.run())
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            bus.close()
            await meter.stop()
            return got

    assert asyncio.run(run()) == pytest.approx(values)
    assert all(dlt645.item(n) for n in values)


def test_devices_list_and_show() -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["devices", "list"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    for name in EXPECTED:
        assert name in listed.output
    shown = runner.invoke(main, ["devices", "show", "chint-dtsu666"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "8198 (0x2006)" in shown.output and "easymanua.ls/chint/dtsu666" in shown.output
    meter = runner.invoke(main, ["devices", "show", "dlt645-3p"], terminal_width=200)
    assert "02800002" in meter.output and "XX.XX" in meter.output
    wrong = runner.invoke(main, ["devices", "show", "chint-dtsu66"])
    assert wrong.exit_code == 2 and "did you mean 'chint-dtsu666'?" in wrong.output
