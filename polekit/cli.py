"""The ``polekit`` command: one entry point, one group per area.

Areas add their groups here as they land (gateway, emulate, build/flash/deploy, ble).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from polekit import __version__
from polekit.demo.faults import FAULTS
from polekit.protocols import identity, modbus, model
from polekit.protocols.errors import IdentityError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="polekit")
def main() -> None:
    """polekit: smart pole and community device toolkit.

    \b
    Firmware for ESP32 sensor nodes, a gateway that carries Modbus and BLE readings to
    the city platform over MQTT, the wire formats both share, and an emulated board to
    test all of it without hardware. Run `polekit COMMAND --help` for each command.
    """


@main.command()
@click.option("--poles", default=3, show_default=True, help="Emulated pole boards on the line.")
@click.option(
    "--community", default=2, show_default=True, help="Emulated community kits on the BLE air."
)
@click.option("--duration", default=60.0, show_default=True, help="Seconds the day lasts.")
@click.option("--broker", help="An MQTT broker URL to use instead of the embedded amqtt one.")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(list(FAULTS)),
    help="Break something on purpose and see the verdict catch it (repeatable): "
    + "; ".join(f"{name}: {what}" for name, what in FAULTS.items())
    + ".",
)
@click.option(
    "--water",
    is_flag=True,
    help="Add a battery water node by the river (an emulated water-esp32 on Wi-Fi MQTT "
    "straight to the broker, asleep between reports) and a storm: rain, the river rising "
    "past its alarm level, a manhole cover lifted.",
)
@click.option("--json", "as_json", is_flag=True, help="Only the summary, as one JSON object.")
def demo(
    poles: int,
    community: int,
    duration: float,
    broker: str | None,
    faults: tuple[str, ...],
    water: bool,
    as_json: bool,
) -> None:
    """Run a whole emulated street for a minute: pole boards with the real firmware on one
    RS-485 line with a third-party energy meter, community SOS kits and a third-party
    thermometer on a virtual BLE air, the gateway, a broker and the city platform. A truck
    tilts a pole, water rises, a resident presses SOS, smoke fills a room, the platform dims
    a lamp, and the broker dies for a while: watch the queue fill and drain, nothing lost.

    Ends with a summary whose last line is the verdict: PASS, or FAIL and what went wrong
    (a reading lost, an alarm not seen at the platform, a command not acknowledged); the
    exit status is 0 or 1 to match. --json: the summary as one JSON object on stdout, the
    verdict in "verdict".
    """
    import asyncio
    import json as json_module

    from polekit.demo.dashboard import summary_text
    from polekit.demo.street import Options, Street

    if not 1 <= poles <= 8 or not 0 <= community <= 4 or duration < 10:
        raise click.UsageError("--poles 1..8, --community 0..4, --duration at least 10 s")
    if "dead-radio" in faults and community == 0:
        raise click.UsageError("--fault dead-radio needs a community kit (--community 1 or more)")
    if broker is not None:
        _check_broker(broker)
    # log_path=False: rich's log() would end every line with its caller (cli.py:NN)
    console = Console(stderr=as_json, log_path=False)
    live_ok = console.is_terminal and not as_json
    live = None
    if live_ok:
        from rich.live import Live

        from polekit.demo.dashboard import view

        live = Live(console=console, refresh_per_second=4)

        def render(street: object, gw: object, platform: object, note: str) -> None:
            assert live is not None
            live.update(view(street, gw, platform, note))

        def log(text: str) -> None:
            live.console.log(text, markup=False, highlight=False) if live is not None else None

    else:

        def render(street: object, gw: object, platform: object, note: str) -> None:
            pass

        def log(text: str) -> None:
            if not as_json:
                console.print(text, markup=False, highlight=False)

    _demo_logging(log)
    street = Street(Options(poles, community, duration, broker, faults, water), log=log)
    try:
        if live is not None:
            with live:
                summary = asyncio.run(street.run(render))
        else:
            summary = asyncio.run(street.run(render))
    except KeyboardInterrupt:
        raise click.ClickException("interrupted") from None
    except TimeoutError:
        raise click.ClickException(
            "the demo stopped: the platform could not subscribe to the broker in time; the "
            "machine may be too busy: run it again"
        ) from None
    except (RuntimeError, OSError) as exc:  # a part would not start (broker, board, VM)
        raise click.ClickException(f"the demo stopped: {exc}") from None
    passed = summary["verdict"] == "PASS"
    if as_json:
        click.echo(json_module.dumps(summary))
    else:
        body, verdict = summary_text(summary).rsplit("\n", 1)
        console.print()
        console.print(body, markup=False, highlight=False, soft_wrap=True)
        console.print(
            "Next: docs/quickstart.md walks from here to a gateway on a real bus "
            "(polekit gateway check, polekit emulate, polekit ble scan).",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        style = "bold green" if passed else "bold red"
        console.print(verdict, style=style, markup=False, soft_wrap=True)
    sys.exit(0 if passed else 1)


def _check_broker(url: str) -> None:
    """Refuse a --broker the demo cannot use, at once rather than after its 15 s wait for
    the platform's subscription: a plain MQTT URL of a broker that accepts connections."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port or 1883
    except ValueError:
        port = 0
    if parts.scheme != "mqtt" or not parts.hostname or not port:
        raise click.BadParameter(
            f"{url!r}: give a plain MQTT broker URL, e.g. mqtt://127.0.0.1:1883",
            param_hint="--broker",
        )
    try:
        socket.create_connection((parts.hostname, port), timeout=3).close()
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the broker at {url}: {exc.strerror or exc}; start it, or leave "
            "--broker out to use the embedded one"
        ) from None


def _demo_logging(log: Callable[[str], None]) -> None:
    # the gateway's own warnings (broker unreachable, device offline) are part of the show;
    # the libraries' chatter (pymodbus frame dumps, MQTT client noise) is not
    import logging

    class ToDemo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log(f"gateway: {record.getMessage()}")

    root = logging.getLogger()
    root.handlers[:] = []
    root.setLevel(logging.CRITICAL)
    gateway = logging.getLogger("polekit.gateway")
    gateway.setLevel(logging.WARNING)
    gateway.addHandler(ToDemo())
    gateway.propagate = False
    for noisy in ("pymodbus", "amqtt", "aiomqtt", "mqtt", "paho", "bleak", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


@main.group()
def code() -> None:
    """Make and check device codes (region + type + serial + check character)."""


@code.command("make")
@click.argument("region")
@click.argument("dtype", metavar="TYPE")
@click.argument("serial", type=int)
@click.option(
    "-n",
    "--count",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Codes for this many serials.",
)
def code_make(region: str, dtype: str, serial: int, count: int) -> None:
    """Print the device code(s) for REGION (6 digits, e.g. 371600), TYPE (e.g. PL) and
    SERIAL, one a line; with --count, for SERIAL, SERIAL+1, ... (labels for a batch)."""
    try:
        for n in range(serial, serial + count):
            click.echo(identity.make(region, dtype.upper(), n))
    except IdentityError as exc:
        raise click.UsageError(f"{exc} (`polekit code types` says what each is)") from None


@code.command("check")
@click.argument("codes", nargs=-1, required=True)
def code_check(codes: tuple[str, ...]) -> None:
    """Check device codes; exit status 1 if any is invalid, saying why."""
    bad = 0
    for c in codes:
        try:
            region, dtype, serial = identity.parse(c)
        except IdentityError as exc:
            click.echo(f"{c}: INVALID: {exc}")
            bad += 1
        else:
            click.echo(f"{c}: ok (region {region}, type {dtype}, serial {serial})")
    sys.exit(1 if bad else 0)


@code.command("types")
def code_types() -> None:
    """List the device type letters."""
    table = Table("type", "device")
    for line in identity.DEVICE_TYPES.strip().splitlines():
        key, text = line.split(" ", 1)
        table.add_row(key, text)
    Console().print(table)


@main.group()
def protocols() -> None:
    """Look up the shared wire formats: register maps and the reference model."""


@protocols.command("maps")
@click.argument("name", required=False)
def protocols_maps(name: str | None) -> None:
    """List the register maps, or show the points of map NAME."""
    if name is None:
        for n in modbus.map_names():
            click.echo(n)
        return
    try:
        regmap = modbus.register_map(name)
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None
    table = Table("point", "table", "address", "type", "scale", "unit", "access", title=name)
    for p in regmap:
        table.add_row(
            p.name,
            p.table,
            str(p.address),
            p.dtype,
            str(p.scale),
            p.unit or "",
            f"rw {p.low}..{p.high}" if p.writable else "ro",
        )
    Console().print(table)


@protocols.command("quantities")
def protocols_quantities() -> None:
    """List the reference model: SenML names with their primary and secondary units."""
    table = Table("name", "value", "primary unit", "secondary unit")
    for line in model.QUANTITIES.strip().splitlines():
        name = line.split()[0]
        kind, primary, secondary = model.quantity(name)
        table.add_row(name, kind, primary or "", secondary or "")
    Console().print(table)


@main.group()
def devices() -> None:
    """The field device library: register maps and DL/T 645 data sets of devices a pole
    deployment buys (meters, wind, noise, weather, particulates), each cited from its
    manual. Use a name in the gateway config: map = "chint-dtsu666"."""


@devices.command("list")
def devices_list() -> None:
    """List the library's devices: name, protocol, factory line settings, what it is."""
    from polekit.protocols import devices as library

    table = Table("name", "protocol", "line (factory)", "device")
    for name in library.names():
        title, proto, line, _source = library.about(name)
        table.add_row(name, proto, line, title)
    Console().print(table)


@devices.command("show")
@click.argument("device")
def devices_show(device: str) -> None:
    """Show what DEVICE's map reads (registers or DL/T 645 identifiers) and its source."""
    import difflib

    from polekit.protocols import devices as library

    if device not in library.names():
        near = difflib.get_close_matches(device, library.names(), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise click.UsageError(
            f"no device {device!r} in the library; {hint}`polekit devices list` lists them"
        )
    title, proto, line, source = library.about(device)
    if proto == "dlt645":
        table = Table("value", "DI", "format", "unit", "signed", title=f"{device}: {title}")
        for item in library.data_set(device):
            table.add_row(
                item.name, f"{item.di:08X}", item.fmt, item.unit, "yes" if item.signed else ""
            )
    else:
        table = Table(
            "value", "table", "address", "type", "scale", "unit", title=f"{device}: {title}"
        )
        for p in library.register_map(device):
            table.add_row(
                p.name,
                p.table,
                f"{p.address} (0x{p.address:04X})",
                p.dtype,
                str(p.scale),
                p.unit or "",
            )
    console = Console()
    console.print(table)
    console.print(f"protocol: {proto}; factory line settings: {line}")
    console.print(f"source: {source}", soft_wrap=True)


@main.group()
def boards() -> None:
    """Board definitions: chip, heap budget, pins, buses and attached sensors."""


@boards.command("list")
def boards_list() -> None:
    """List the boards polekit knows."""
    import polekit.boards as defs

    table = Table("board", "chip", "heap", "uplink", "description")
    for name in defs.names():
        b = defs.load(name)
        table.add_row(b.name, b.chip, f"{b.heap_bytes // 1024} KiB", b.uplink, b.description)
    Console().print(table)


@boards.command("show")
@click.argument("name")
def boards_show(name: str) -> None:
    """Show board NAME (or a TOML file): buses, pins and sensors."""
    import polekit.boards as defs

    try:
        b = defs.load(name)
    except defs.BoardError as exc:
        raise click.UsageError(str(exc)) from None
    console = Console()
    console.print(f"[bold]{b.name}[/bold]: {b.description}")
    console.print(
        f"chip {b.chip}, flash {b.flash_size_mb} MB (MicroPython at {b.firmware_offset:#x}), "
        f"heap budget {b.heap_bytes} bytes, uplink {b.uplink}"
        + (f", register map {b.register_map}" if b.register_map else "")
    )
    buses = Table("bus", "type", "settings")
    for bus in b.buses.values():
        buses.add_row(bus.name, bus.type, ", ".join(f"{k}={v}" for k, v in bus.params.items()))
    console.print(buses)
    sensors = Table("sensor", "type", "bus", "settings")
    for s in b.sensors.values():
        sensors.add_row(s.name, s.type, s.bus or "", ", ".join(map(_setting, s.params.items())))
    console.print(sensors)


def _setting(item: tuple[str, object]) -> str:
    # I2C addresses as datasheets and i2cdetect print them: 0x44, not 68
    key, value = item
    if key == "address" and isinstance(value, int):
        return f"{key}={value:#04x}"
    return f"{key}={value}"


def _add_area_commands() -> None:
    from polekit.firmware.deploy.cli import COMMANDS
    from polekit.gateway.ble_cli import ble
    from polekit.gateway.cli import gateway
    from polekit.gateway.ota.cli import ota
    from polekit.gateway.platform_cli import platform
    from polekit.hil.cli import emulate
    from polekit.hil.simulate_cli import simulate

    main.add_command(gateway)
    main.add_command(ble)
    main.add_command(platform)
    main.add_command(ota)
    main.add_command(emulate)
    main.add_command(simulate)
    for command in COMMANDS:
        main.add_command(command)


_add_area_commands()


if __name__ == "__main__":
    main()
