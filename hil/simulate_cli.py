"""``polekit simulate``: simulated Modbus field devices on TCP or a serial line, so an
integrator can try a gateway config without hardware.

The devices are hil.fieldbus's (real pymodbus servers, as in the tests and the demo), laid
out by the register maps in protocols/ (the node's, and the device library's), with values
that move (hil/field_values.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from polekit.protocols import devices as library
from polekit.protocols import identity

# the device type letter of a map's device, for the config snippet it prints
DEVICE_TYPE_OF_MAP = {"sdm120": "EM", "pole-env": "PL"}


@click.command()
@click.option(
    "--map",
    "maps",
    multiple=True,
    required=True,
    metavar="NAME",
    help=f"Register map of the device(s): {', '.join(library.map_names())} (polekit devices "
    "show NAME lists its points). Once for every unit, or once per --unit, in order.",
)
@click.option(
    "--unit",
    "units",
    multiple=True,
    type=click.IntRange(1, 247),
    help="Modbus unit id of a device (repeat for several). Default: 1, 2, ... one per --map.",
)
@click.option(
    "--tcp", metavar="HOST:PORT", help="Serve Modbus TCP here; port 0 takes a free one (printed)."
)
@click.option(
    "--rtu",
    metavar="PORT|pty",
    help="Serve Modbus RTU on this serial port (an RS-485 adapter), or on a new "
    "pseudo-terminal with `pty` (printed: the gateway opens it).",
)
@click.option(
    "--link",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --rtu pty: also a symlink to it at this path, a stable name for a config.",
)
@click.option("--baudrate", default=9600, show_default=True, help="RTU: bits per second.")
@click.option(
    "--parity",
    type=click.Choice(["N", "E", "O"]),
    help="RTU: parity (N means 2 stop bits). Default: E (Modbus's), N on a pty (ptys refuse E).",
)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between value updates.")
@click.option("--seed", type=int, help="Make the moving values repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line (for scripts).")
def simulate(
    maps: tuple[str, ...],
    units: tuple[int, ...],
    tcp: str | None,
    rtu: str | None,
    link: Path | None,
    baudrate: int,
    parity: str | None,
    interval: float,
    seed: int | None,
    as_json: bool,
) -> None:
    """Simulate Modbus field devices (energy meters, pole nodes) until Ctrl-C or SIGTERM,
    on Modbus TCP or on a serial line, with values that move as a real device's do.

    \b
    Try a gateway config without hardware:
      polekit simulate --map sdm120 --tcp 127.0.0.1:5020
      polekit simulate --map sdm120 --unit 1 --unit 2 --unit 3 --tcp 127.0.0.1:5020
      polekit simulate --map sdm120 --unit 5 --map pole-env --unit 9 --rtu pty
    then point a [[bus]] at it (the command prints one) and run
      polekit gateway check -c gateway.toml --probe
    """
    if (tcp is None) == (rtu is None):
        raise click.UsageError("give --tcp HOST:PORT or --rtu PORT|pty, e.g. --tcp 127.0.0.1:5020")
    devices = _devices(maps, units)
    if rtu is not None and not rtu.strip():
        raise click.UsageError("--rtu: give a serial port (e.g. /dev/ttyUSB0) or pty")
    address = _tcp_address(tcp) if tcp is not None else None
    if link is not None and rtu != "pty":
        raise click.UsageError("--link names a pseudo-terminal: use it with --rtu pty")
    if rtu == "pty" and parity == "E":
        raise click.UsageError("pseudo-terminals refuse parity E: use --parity N (or O)")
    try:
        asyncio.run(_serve(devices, address, rtu, link, baudrate, parity, interval, seed, as_json))
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


def _devices(maps: tuple[str, ...], units: tuple[int, ...]) -> dict[int, str]:
    if len(maps) > 1 and units and len(units) != len(maps):
        raise click.UsageError(
            f"{len(maps)} --map and {len(units)} --unit: give one --unit per --map, or one "
            "--map for all the units"
        )
    if not units:
        units = tuple(range(1, len(maps) + 1))
    if len(set(units)) != len(units):
        raise click.UsageError(f"--unit {units}: each device needs a unit id of its own")
    names = maps if len(maps) == len(units) else maps * len(units)
    for name in set(names):
        try:
            library.register_map(name)
        except KeyError as exc:
            raise click.UsageError(f"--map: {exc.args[0]}") from None
    return dict(zip(units, names, strict=True))


def _tcp_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise click.UsageError(f"--tcp {text}: give HOST:PORT, e.g. 127.0.0.1:5020 (port 0: any)")
    return host, int(port)


async def _serve(
    devices: dict[int, str],
    tcp: tuple[str, int] | None,
    rtu: str | None,
    link: Path | None,
    baudrate: int,
    parity: str | None,
    interval: float,
    seed: int | None,
    as_json: bool,
) -> None:
    import logging

    from polekit.hil.field_values import FieldValues
    from polekit.hil.fieldbus import SimulatedBus
    from polekit.hil.line import VirtualLine

    # pymodbus's own log lines (a frame it did not like) are not for the integrator
    logging.getLogger("pymodbus").addHandler(logging.NullHandler())
    logging.getLogger("pymodbus").propagate = False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    maps = {unit: library.register_map(name) for unit, name in devices.items()}
    line = None
    serial: dict[str, Any] = {}
    try:
        if tcp is not None:
            bus = await SimulatedBus(maps, tcp=tcp).start()
            where: dict[str, Any] = {"tcp": f"{tcp[0]}:{bus.tcp_port}"}
        else:
            port = rtu
            if rtu == "pty":
                line = VirtualLine(baudrate=baudrate, bits_per_char=11)
                port = line.endpoint()
                parity = parity or "N"
            parity = parity or "E"
            stopbits = 2 if parity == "N" else 1
            serial = {"baudrate": baudrate, "parity": parity, "stopbits": stopbits}
            assert port is not None
            bus = await SimulatedBus(maps, serial_port=port, **serial).start()
            user_port = line.endpoint(str(link) if link else None) if line else port
            where = {"rtu": user_port, **serial}
        _announce(devices, where, as_json)
        rng = random.Random(seed)
        moving = {unit: FieldValues(regmap, rng) for unit, regmap in maps.items()}
        try:
            while not stop.is_set():
                now = time.monotonic()
                for unit, values in moving.items():
                    for name, value in values.at(now).items():
                        await bus.set(unit, name, value)
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass
        finally:
            await bus.stop()
    finally:
        if line is not None:
            line.close()


def _announce(devices: dict[int, str], where: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**where, "units": {str(u): m for u, m in devices.items()}}))
        sys.stdout.flush()
        return
    if "tcp" in where:
        host, _, port = where["tcp"].rpartition(":")
        place = f"Modbus TCP {where['tcp']}"
        bus = f'type = "tcp"\nhost = "{host}"\nport = {port}'
    else:
        place = f"Modbus RTU {where['rtu']} ({where['baudrate']} 8{where['parity']}"
        place += f"{where['stopbits']})"
        bus = (
            f'type = "rtu"\nport = "{where["rtu"]}"\nbaudrate = {where["baudrate"]}\n'
            f'parity = "{where["parity"]}"'
        )
    click.echo(f"simulating {len(devices)} device(s) on {place}")
    for unit, name in devices.items():
        points = ", ".join(p.name for p in library.register_map(name) if not p.writable)
        click.echo(f"  unit {unit:<3} {name:<9} {points}")
    click.echo("\nIn a gateway config (polekit gateway check -c FILE --probe):\n")
    click.echo(f'[[bus]]\nname = "simulated"\n{bus}')
    for serial, (unit, name) in enumerate(devices.items(), start=1):
        code = identity.make("371600", DEVICE_TYPE_OF_MAP.get(name, "EN"), serial)
        click.echo(
            f'\n[[device]]\ncode = "{code}"\nbus = "simulated"\nunit = {unit}\nmap = "{name}"'
        )
    click.echo("\nCtrl-C to stop.")
    sys.stdout.flush()
