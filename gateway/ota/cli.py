"""``polekit ota push`` and ``polekit ota status``: the field tool's side of a rollout.

``push`` checks the bundle against the gateway's key here first (a bundle the gateway would
refuse is refused before anything is queued), keeps the verified copy in the gateway's
``data_dir/ota`` and adds the rollout to the gateway's database as pending; the running
gateway takes it up within a second, checks the bundle again itself and rolls it out.
Both commands read the rollout from that database, so they work on the gateway's machine
(or wherever its data_dir is), with or without its status port, and a rollout goes on when
the tool is closed.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn
from rich.table import Column, Table

from polekit.gateway.cli import CONFIG_OPTION, _load
from polekit.gateway.config import Config
from polekit.gateway.delivery import Delivery, platforms_of
from polekit.gateway.ota.bundle import BundleError, load_bundle, load_public_key
from polekit.gateway.ota.rollout import RolloutRefused, check_devices, new_rollout
from polekit.gateway.ota.store import (
    ACTIVE,
    SUCCESS,
    RolloutRow,
    read_rollout,
    read_rollouts,
    submit_rollout,
)
from polekit.gateway.ota.transports import UPDATABLE_MAPS

WATCH_EVERY_S = 0.5
PENDING_NOTE_S = 10.0  # a rollout still pending after this: say the gateway may not run

_COLOURS = {
    "updated": "green",
    "already": "green",
    "rolled_back": "red",
    "refused": "red",
    "failed": "red",
    "skipped": "yellow",
}


def database_of(config: Config) -> Path:
    """The gateway's SQLite file that holds its rollouts (its first platform's queue)."""
    return Delivery.queue_path(config, platforms_of(config)[0])


def updatable_devices(config: Config) -> dict[str, str]:
    """Device code -> its link, for the devices of ``config`` an update can reach."""
    out = {
        d.code: f"bus {d.bus}"
        for d in config.devices
        if d.protocol == "modbus" and d.map_name in UPDATABLE_MAPS
    }
    out.update({d.code: "ble" for d in config.ble_devices})
    return out


def _fail(text: str, status: int = 1) -> None:
    click.echo(text, err=True)
    sys.exit(status)


@click.group()
def ota() -> None:
    """Over-the-air updates: roll a signed bundle out to nodes through their gateway."""


@ota.command()
@CONFIG_OPTION
@click.option(
    "--bundle",
    "source",
    required=True,
    help="The folder `polekit build --sign KEY -o DIR` wrote, or an http(s) URL of one.",
)
@click.option(
    "--devices",
    required=True,
    help="Device codes to update, comma-separated, the canary first.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    help="Nodes per stage after the canary (default: [ota] batch_size).",
)
@click.option("--no-wait", is_flag=True, help="Queue the rollout and return at once.")
def push(
    config_path: Path, source: str, devices: str, batch_size: int | None, no_wait: bool
) -> None:
    """Check a signed bundle and roll it out: one canary, then batches; the rollout stops
    at the first node that fails or rolls back. Shows a progress bar per device and a
    final table; exit status 0 when every node runs the new version.

    \b
    Example:
      polekit ota push -c gateway.toml --bundle pole-0.2/ --devices 371600PL000001C,371600PL000002A
    """
    config = _load(config_path)
    names = [d.strip() for d in devices.split(",") if d.strip()]
    try:
        wanted = check_devices(names, updatable_devices(config))
        key = load_public_key(config.ota.public_key)
    except (RolloutRefused, BundleError) as exc:
        _fail(f"{config_path}: {exc}", 2)
        return
    try:
        bundle = load_bundle(
            source,
            key,
            config.data_dir / "ota",
            config.ota.max_bundle_bytes,
            config.ota.fetch_timeout_s,
        )
    except BundleError as exc:
        _fail(f"{source}: {exc}")
        return
    except OSError as exc:
        _fail(f"cannot keep the bundle in {config.data_dir / 'ota'}: {exc.strerror}")
        return
    database = database_of(config)
    if not database.exists():
        _fail(
            f"no gateway database at {database}: start the gateway first "
            f"(polekit gateway run -c {config_path})"
        )
    row = new_rollout(bundle, source, batch_size or config.ota.batch_size, "cli", time.time())
    try:
        row = submit_rollout(database, row, wanted)
    except ValueError as exc:
        _fail(str(exc))
    except sqlite3.Error as exc:
        _fail(f"cannot add the rollout to {database}: {exc}")
    console = Console()
    console.print(
        f"rollout {row.id}: {bundle.board} {bundle.version} ({bundle.size} bytes, signature "
        f"ok) to {len(wanted)} device(s) in {row.summary()['stages']} stage(s), queued",
        highlight=False,
    )
    if no_wait:
        console.print(f"follow it with: polekit ota status -c {config_path} --follow")
        return
    sys.exit(_follow(console, database, row.id, config_path))


@ota.command()
@CONFIG_OPTION
@click.option("--rollout", "rollout_id", type=int, help="A rollout's number (default: the last).")
@click.option("--follow", is_flag=True, help="Show progress until the rollout ends.")
@click.option("--json", "as_json", is_flag=True, help="The rollout as JSON.")
def status(config_path: Path, rollout_id: int | None, follow: bool, as_json: bool) -> None:
    """Show a rollout: each device's state, progress and result (versions before and
    after, duration, bytes). Works with or without the gateway running."""
    import json

    config = _load(config_path)
    database = database_of(config)
    if not database.exists():
        _fail(f"no gateway database at {database}: this gateway has not run yet")
    try:
        row = (
            read_rollout(database, rollout_id)
            if rollout_id is not None
            else next(iter(read_rollouts(database, 1)), None)
        )
    except sqlite3.Error as exc:
        _fail(f"cannot read {database}: {exc}")
        return
    if row is None:
        _fail("no such rollout" if rollout_id is not None else "no rollout yet on this gateway")
        return
    if as_json:
        click.echo(json.dumps(row.summary(), indent=1))
        return
    console = Console()
    if follow and row.state in ACTIVE:
        sys.exit(_follow(console, database, row.id, config_path))
    _print_rollout(console, row)
    sys.exit(0 if row.state == "done" else 1 if row.state == "stopped" else 0)


def _follow(console: Console, database: Path, rollout_id: int, config_path: Path) -> int:
    """Progress bars until the rollout ends; its final table; the exit status."""
    started = time.monotonic()
    noted = False
    row: RolloutRow | None = None
    with Progress(
        TextColumn("{task.fields[code]}", table_column=Column(no_wrap=True)),
        TextColumn("{task.description:<12}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        console=console,
    ) as bars:
        tasks: dict[str, TaskID] = {}
        try:
            while True:
                try:
                    row = read_rollout(database, rollout_id)
                except sqlite3.OperationalError:  # the gateway is writing: look again
                    row = None
                if row is not None:
                    _show(bars, tasks, row)
                    if row.state not in ACTIVE:
                        break
                    if (
                        row.state == "pending"
                        and not noted
                        and time.monotonic() - started > PENDING_NOTE_S
                    ):
                        bars.console.print(
                            "the gateway has not taken the rollout up yet: is it running? "
                            f"(polekit gateway run -c {config_path})"
                        )
                        noted = True
                time.sleep(WATCH_EVERY_S)
        except KeyboardInterrupt:
            bars.stop()
            console.print(
                f"stopped watching; rollout {rollout_id} goes on in the gateway: "
                f"polekit ota status -c {config_path} --follow"
            )
            return 130
    assert row is not None
    _print_rollout(console, row)
    return 0 if row.state == "done" else 1


def _show(bars: Progress, tasks: dict[str, TaskID], row: RolloutRow) -> None:
    for d in row.devices:
        if d.device not in tasks:
            tasks[d.device] = bars.add_task("waiting", total=max(d.total, 1), code=d.device)
        label = d.result or d.state
        colour = _COLOURS.get(label)
        bars.update(
            tasks[d.device],
            description=f"[{colour}]{label}[/{colour}]" if colour else label,
            completed=d.bytes if d.result is None else max(d.total, d.bytes, 1),
            total=max(d.total, 1),
        )


def _print_rollout(console: Console, row: RolloutRow) -> None:
    colour = {"done": "green", "stopped": "red"}.get(row.state, "yellow")
    console.print(
        f"rollout {row.id}: {row.board} {row.version} from {row.source}: "
        f"[{colour}]{row.state}[/{colour}]" + (f": {row.reason}" if row.reason else ""),
        highlight=False,
    )
    table = Table(
        Column("device", no_wrap=True),
        "stage",
        Column("result", no_wrap=True),
        "before",
        "after",
        "duration",
        "bytes",
        Column("reason", overflow="fold"),
    )
    for d in row.devices:
        report: dict[str, Any] = d.report()
        label = d.result or f"{d.state} {_percent(d.bytes, d.total)}"
        colour = _COLOURS.get(label, "")
        table.add_row(
            d.device,
            "canary" if d.stage == 0 else str(d.stage),
            f"[{colour}]{label}[/{colour}]" if colour else label,
            d.version_before or "",
            d.version_after or "",
            f"{report['duration_s']} s" if report["duration_s"] is not None else "",
            str(d.sent),
            d.reason or "",
        )
    console.print(table)
    done = sum(d.result in SUCCESS for d in row.devices)
    console.print(f"{done} of {len(row.devices)} device(s) on {row.version}", highlight=False)


def _percent(have: int, total: int) -> str:
    return f"{100 * have // total}%" if total else ""
