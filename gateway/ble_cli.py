"""``polekit ble``: what the gateway would hear, for installers checking a site; and the
virtual air for emulated setups."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Column, Table


@click.group()
def ble() -> None:
    """BLE tools: scan for BTHome devices, run the virtual air."""


async def _scan(
    duration: float, kwargs: dict[str, Any], keys: dict[str, tuple[str, bytes | None]]
) -> list[dict[str, Any]]:
    from bleak import BleakScanner

    from polekit.gateway.sources.ble import BTHOME_UUID
    from polekit.protocols import bthome
    from polekit.protocols.errors import ProtocolError

    heard: dict[str, dict[str, Any]] = {}

    def seen(device: Any, adv: Any) -> None:
        address = device.address.upper()
        row = heard.setdefault(
            address,
            {"address": address, "code": keys.get(address, ("", None))[0], "adverts": 0},
        )
        row["adverts"] += 1
        row["rssi"] = adv.rssi
        row["name"] = adv.local_name or row.get("name")
        sd = adv.service_data.get(BTHOME_UUID)
        if sd is None:
            row.setdefault("values", "(not BTHome)")
            return
        key = keys.get(address, ("", None))[1]
        mac = bytes.fromhex(address.replace(":", ""))
        try:
            if sd[0] & bthome.INFO_ENCRYPTED:
                if key is None:
                    row["values"] = "(encrypted: give the gateway config with its bindkey)"
                    return
                sd = bthome.decrypt(sd, key, mac)[0]
            values = bthome.decode(sd)
            values.pop("packet_id", None)
            row["values"] = values
        except ProtocolError as exc:
            row["values"] = f"(undecodable: {exc})"

    scanner = BleakScanner(seen, **kwargs)
    await scanner.start()
    await asyncio.sleep(duration)
    await scanner.stop()
    return sorted(heard.values(), key=lambda r: -(r.get("rssi") or -999))


@ble.command()
@click.option(
    "--duration",
    "-d",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to listen.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON list on stdout.")
@click.option(
    "--virtual",
    "air",
    type=click.Path(dir_okay=False),
    help="Listen on the virtual air at this socket instead of the adapter.",
)
@click.option("--adapter", default="hci0", show_default=True, help="The BlueZ adapter.")
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A gateway config: devices are named by their code and decrypted with their keys.",
)
def scan(
    duration: float, as_json: bool, air: str | None, adapter: str, config_path: Path | None
) -> None:
    """List the BLE devices in range: address, device code (with --config), RSSI, decoded
    BTHome values. Run it where the gateway will stand to check every device is heard well
    (RSSI above about -85 dBm).

    \b
    Example:
      polekit ble scan --duration 20 -c /etc/polekit/gateway.toml
    """
    from polekit.gateway.config import BleConfig, ConfigError, load_config
    from polekit.gateway.sources.ble import scanner_kwargs

    keys: dict[str, tuple[str, bytes | None]] = {}
    if config_path is not None:
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        keys = {d.address: (d.code, d.bindkey) for d in cfg.ble_devices}
        air = air or cfg.ble.air
    try:
        rows = asyncio.run(_scan(duration, scanner_kwargs(BleConfig(adapter, air)), keys))
    except Exception as exc:  # noqa: BLE001 - bleak/BlueZ/D-Bus errors, said plainly
        hint = (
            f"Is a virtual air running there (polekit ble air --socket {air})?"
            if air
            else "Is Bluetooth on (bluetoothctl power on) and may you use it (member of the "
            "bluetooth group)?"
        )
        raise click.ClickException(f"cannot scan on {air or adapter}: {exc}. {hint}") from None
    if as_json:
        click.echo(json.dumps(rows))
        return
    # codes and addresses are never cut: the other columns wrap first
    table = Table(
        Column("address", no_wrap=True),
        Column("device code", no_wrap=True),
        "RSSI",
        "adverts",
        Column("name", overflow="fold"),
        Column("values", overflow="fold"),
    )
    for r in rows:
        values = r.get("values", "")
        shown = (
            ", ".join(f"{k}={v}" for k, v in values.items())
            if isinstance(values, dict)
            else str(values)
        )
        table.add_row(
            r["address"],
            r["code"],
            str(r.get("rssi")),
            str(r["adverts"]),
            r.get("name") or "",
            shown,
        )
    Console().print(table)
    click.echo(f"{len(rows)} device(s) heard in {duration:.0f} s")


@ble.command()
@click.option(
    "--socket",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to put the air's Unix socket (gateways and emulated boards connect to it).",
)
def air(path: str) -> None:
    """Run the virtual BLE air in the foreground, for emulated boards
    (`polekit emulate --air SOCKET`) and gateways (`[ble] air = "SOCKET"`) in separate
    processes. Ctrl-C stops it."""
    from polekit.hil.air import VirtualAir

    try:
        the_air = VirtualAir(path)
    except OSError as exc:
        raise click.ClickException(
            f"cannot put the air at {path}: {exc.strerror}; give a path for a new socket"
        ) from None
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with the_air:
        click.echo(f"virtual air on {path}")
        try:
            while not done.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        click.echo(f"air closed: {the_air.counters}")
    time.sleep(0)
