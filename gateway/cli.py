"""``polekit gateway ...``: run, check (and probe) a config, show a running gateway's status."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Column, Table

from polekit.gateway.config import (
    BusConfig,
    Config,
    ConfigError,
    config_mode_problem,
    data_dir_problem,
    load_config,
)
from polekit.gateway.status import exposure_warning

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's TOML file (see docs/gateway.md for every key).",
)


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str) -> None:
    """Structured (JSON lines) or plain logs on stderr; pymodbus's own chatter kept quiet."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # we log per device, once


@click.group()
def gateway() -> None:
    """Run the gateway: Modbus and BLE devices in, SenML over MQTT out."""


@gateway.command()
@CONFIG_OPTION
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    default="json",
    show_default=True,
    type=click.Choice(["json", "text"]),
    help="json: one JSON object a line (for journald/Loki); text: for people.",
)
def run(config_path: Path, log_level: str, log_format: str) -> None:
    """Run in the foreground until SIGTERM or Ctrl-C, then stop cleanly (queue flushed,
    offline state published). Readings wait on disk while the broker is away."""
    from polekit.gateway.app import Gateway, StartError

    config = _load(config_path)
    _exit_if_data_dir_unusable(config)
    setup_logging(log_level, log_format)
    for warning in _warnings(config, listening=False):
        logging.getLogger("polekit.gateway").warning("%s", warning)

    async def main() -> None:
        gw = Gateway(config)
        gw.install_signal_handlers()
        await gw.run()

    try:
        asyncio.run(main())
    except StartError as exc:
        click.echo(f"{config_path}: {exc}", err=True)
        sys.exit(2)


def _warnings(config: Config, listening: bool = True) -> list[str]:
    """What is unsafe but works: said by ``check`` and logged by ``run`` at start (where
    the status server says itself where it listens: ``listening=False``)."""
    found = [config_mode_problem(config.path)]
    if listening and config.status.enabled:
        found.append(exposure_warning(config.status.host))
    return [w for w in found if w is not None]


def _exit_if_data_dir_unusable(config: Config) -> None:
    problem = data_dir_problem(config)
    if problem is not None:
        click.echo(f"{config.path}: {problem}", err=True)
        sys.exit(2)


@gateway.command()
@CONFIG_OPTION
@click.option("--probe", is_flag=True, help="Also poll each device once and show what it answered.")
def check(config_path: Path, probe: bool) -> None:
    """Validate a config file; exit status 2 and every problem (file, key, value, what is
    allowed) if it is wrong. With --probe, try each device once and print a table."""
    config = _load(config_path)
    _exit_if_data_dir_unusable(config)
    click.echo(
        f"{config_path}: ok: {len(config.buses)} bus(es), {len(config.devices)} device(s), "
        f"{len(config.ble_devices)} BLE device(s), broker {config.mqtt.shown_url}"
    )
    if config.platforms and not (
        len(config.platforms) == 1 and config.platforms[0].kind == "senml"
    ):
        from polekit.gateway.platforms.settings import shown_where

        for p in config.platforms:
            click.echo(f"  platform {p.name}: {p.kind} at {shown_where(p)}, queue {p.queue_file}")
    for warning in _warnings(config):
        click.echo(f"warning: {warning}", err=True)
    if probe:
        ok = asyncio.run(_probe(config))
        sys.exit(0 if ok else 1)


async def _probe(config: Config) -> bool:
    from polekit.gateway.sources.modbus_bus import ModbusBus

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # device codes are never cut: the other columns wrap first (80 columns and up), and a
    # word too long for its column folds rather than losing its end
    table = Table(
        Column("device", no_wrap=True),
        Column("bus", overflow="fold"),
        "unit",
        Column("result", overflow="fold"),
        Column("values", overflow="fold"),
        title="probe",
    )
    all_ok = True
    silent: list[BusConfig] = []  # buses with a device that did not answer at all
    for name, bus_config in config.buses.items():
        devices = [d for d in config.devices if d.bus == name]

        async def ignore(*_: Any) -> None:
            return None

        bus = ModbusBus(bus_config, devices, ignore)
        try:
            await asyncio.wait_for(bus.connect(), timeout=3)
        except TimeoutError:
            for d in devices:
                table.add_row(
                    d.code, name, str(d.unit), f"[red]cannot open: {bus.last_error}[/red]", ""
                )
            all_ok = False
            continue
        for state in bus.devices.values():
            unanswered = bus.counters.no_response
            try:
                values = await bus.poll(state)
            except Exception as exc:  # noqa: BLE001 - every failure is a table row
                table.add_row(
                    state.config.code, name, str(state.config.unit), f"[red]{exc}[/red]", ""
                )
                all_ok = False
                if bus.counters.no_response > unanswered and bus_config not in silent:
                    silent.append(bus_config)
                continue
            shown = ", ".join(
                f"{p.name}={v}{' ' + p.unit if p.unit else ''}" for p, v in values[:6]
            )
            more = f" (+{len(values) - 6})" if len(values) > 6 else ""
            table.add_row(
                state.config.code, name, str(state.config.unit), "[green]ok[/green]", shown + more
            )
        bus.close()
    console = Console()
    console.print(table)
    for hint in _no_answer_hints(silent):
        console.print(hint, highlight=False)
    return all_ok


def _no_answer_hints(silent: list[BusConfig]) -> list[str]:
    """What to check when a device stayed silent. On a pseudo-terminal the other end is
    most likely an emulated board (polekit emulate), whose firmware stops the moment
    mpremote or a Ctrl-C in its REPL takes the board over, exactly as a real board's
    does: the usual reason it is silent after the quickstart's mpremote step."""
    if not silent:
        return []
    hints = [
        "No answer: check each device's unit id, the bus's baud rate and parity, and the "
        "wiring (A/B swapped? terminated?)."
    ]
    for bus in silent:
        if bus.type == "rtu" and bus.port and _is_pseudo_terminal(bus.port):
            hints.append(
                f"{bus.port} is a pseudo-terminal, as an emulated board's RS-485 port is: its "
                "firmware answers only while it runs, and mpremote (exec, run, repl) or Ctrl-C "
                "in its REPL stops it. Restart it with `polekit emulate reset --control "
                "SOCKET` (or `mpremote connect REPL-PORT reset`), then probe again."
            )
    return hints


def _is_pseudo_terminal(port: str) -> bool:
    return os.path.realpath(port).startswith("/dev/pts/")


@gateway.command()
@click.option(
    "--url",
    default="http://127.0.0.1:8463",
    show_default=True,
    help="The gateway's status endpoint ([status] listen/port in its config).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw /health JSON.")
def status(url: str, as_json: bool) -> None:
    """Show a running gateway's health: broker, queue, buses and devices."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as resp:
            health = json.load(resp)
    except ValueError as exc:  # not a URL (or not JSON: something else answers there)
        click.echo(
            f"{url}: {exc}; give the gateway's status URL, e.g. http://127.0.0.1:8463", err=True
        )
        sys.exit(1)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(
            f"cannot reach the gateway at {url}: {exc}. Is it running? Is [status] enabled?",
            err=True,
        )
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(health, indent=1))
        return
    console = Console()
    mqtt, queue = health["mqtt"], health["queue"]
    console.print(
        f"[bold]{health['gateway']}[/bold] up {health['uptime_s']} s, "
        f"broker {'[green]connected' if mqtt['connected'] else '[red]disconnected'}[/] "
        f"({mqtt['url']}), queue {queue['depth']} messages / {queue['bytes']} bytes, "
        f"dropped {queue['dropped']}"
    )
    buses = Table(
        "bus", "where", "connected", "transactions", "no answer", "bad answer", "last error"
    )
    for b in health["buses"]:
        c = b["counters"]
        buses.add_row(
            b["name"],
            b["where"],
            str(b["connected"]),
            str(c["transactions"]),
            str(c["no_response"]),
            str(c["bad_response"]),
            b["last_error"] or "",
        )
    console.print(buses)
    devices = Table(
        Column("device", no_wrap=True),
        Column("bus", overflow="fold"),
        "unit",
        Column("state", no_wrap=True),
        "polls",
        "failures",
        "seq",
        Column("last error", overflow="fold"),
    )
    for d in health["devices"]:
        state = {True: "[green]online", False: "[red]offline", None: "waiting"}[d["online"]]
        devices.add_row(
            d["code"],
            d["bus"],
            str(d["unit"]),
            state,
            str(d["polls"]),
            str(d["failures"]),
            str(d["seq"]),
            d["last_error"] or "",
        )
    console.print(devices)
    _print_rollout(console, health.get("ota"), health["buses"])


def _print_rollout(console: Console, ota: dict[str, Any] | None, buses: list[Any]) -> None:
    # an update rollout in progress: its devices' progress, and the buses polled slower
    rollout = (ota or {}).get("rollout")
    if rollout is None:
        return
    console.print(
        f"[bold]update rollout {rollout['rollout']}[/bold]: {rollout['board']} "
        f"{rollout['version']}, {rollout['state']}, {len(rollout['devices'])} device(s) in "
        f"{rollout['stages']} stage(s)",
        highlight=False,
    )
    for b in buses:
        if b.get("poll_floor_s"):
            console.print(
                f"  bus {b['name']} carries a transfer: its devices are polled every "
                f"{b['poll_floor_s']:g} s at most until it ends",
                highlight=False,
            )
    table = Table(Column("device", no_wrap=True), "stage", "state", "progress", "result")
    for d in rollout["devices"]:
        share = f"{100 * d['have'] // d['total']}%" if d["total"] else ""
        table.add_row(
            d["device"],
            "canary" if d["stage"] == 0 else str(d["stage"]),
            d["state"],
            f"{d['have']}/{d['total']} {share}" if d["total"] else "",
            d["result"] or "",
        )
    console.print(table)
