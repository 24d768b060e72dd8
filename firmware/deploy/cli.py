"""Field commands: ``polekit build``, ``deploy``, ``provision``, ``flash``, ``monitor``,
``doctor`` (docs/field-guide.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from polekit.boards import BoardError, names

BOARD = click.option(
    "--board",
    "board_name",
    required=True,
    help=f"Board definition: {', '.join(names())} (polekit boards list).",
)
PORT = click.option(
    "--port",
    "-p",
    required=True,
    help="The board's serial port (/dev/ttyUSB0, /dev/ttyACM0) or an rfc2217://host:port URL.",
)


def _config_option(value: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in value:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: give KEY=VALUE, e.g. unit=3", param_hint="--set")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def print_selftest(console: Console, report: Any) -> None:
    table = Table("check", "result", "detail", title=f"self-test on {report.port}")
    for name, ok, detail in report.selftest:
        table.add_row(name, "[green]pass[/green]" if ok else "[red]FAIL[/red]", detail)
    console.print(table)


@click.command()
@BOARD
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the bundle to. Default: build/<board>.",
)
@click.option(
    "--mpy",
    default="6.3",
    show_default=True,
    help="The target's .mpy version: 6.3 for MicroPython 1.23 and later, 6.2 for 1.22.",
)
@click.option("--source", is_flag=True, help="Keep Python sources instead of .mpy.")
def build(board_name: str, out: Path | None, mpy: str, source: bool) -> None:
    """Build the deployable bundle of a board: the node firmware and protocols/ compiled with
    mpy-cross, main.py, the board map, its reference config, and manifest.json with each
    file's sha256 and the firmware version. The same inputs give the same bytes.

    \b
    Example:
      polekit build --board pole-env-esp32            # -> build/pole-env-esp32/
    """
    from polekit.firmware.deploy.bundle import BundleError
    from polekit.firmware.deploy.bundle import build as build_bundle

    try:
        bundle = build_bundle(board_name, None if source else mpy)
    except (BoardError, BundleError) as exc:
        raise click.ClickException(str(exc)) from None
    folder = bundle.write(out or Path("build") / board_name)
    m = bundle.manifest
    click.echo(
        f"{folder}: {len(bundle.files)} files, {bundle.size()} bytes, firmware "
        f"{m['firmware_version']}, mpy {m['mpy']}"
    )


@click.command()
@PORT
@BOARD
@click.option("--device-code", "-c", help="The node's device code (polekit code make).")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A config setting laid over the board's reference config (repeatable), e.g. unit=3.",
)
@click.option("--source", is_flag=True, help="Deploy Python sources instead of .mpy.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def deploy(
    port: str,
    board_name: str,
    device_code: str | None,
    settings: tuple[str, ...],
    source: bool,
    as_json: bool,
) -> None:
    """Put the node firmware on a board with MicroPython, configure it and self-test it.

    Only files whose sha256 differs are copied, so a second deploy takes a second. The
    self-test reads every sensor of the board through its driver and checks the config and
    the uplink; the node is then started and must report itself up. Exit status 1 when any
    check fails.

    \b
    Example:
      polekit deploy --port /dev/ttyUSB0 --board pole-env-esp32 -c 371600PL000001F --set unit=3
    """
    from polekit.firmware.deploy.deploy import DeployError
    from polekit.firmware.deploy.deploy import deploy as run_deploy
    from polekit.firmware.deploy.link import LinkError

    console = Console(stderr=as_json)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{port}: connecting", total=None)

        def note(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"{port}: {what}", completed=done, total=total or None)

        try:
            report = run_deploy(
                port,
                board_name,
                device_code,
                _config_option(settings),
                source=source,
                progress=note,
            )
        except (BoardError, DeployError, LinkError) as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "passed": report.passed}))
    else:
        console.print(
            f"{port}: {report.board} firmware {report.firmware_version} (mpy {report.mpy}) on "
            f"MicroPython {report.micropython}, chip {report.unique_id}: "
            f"{len(report.copied)} files copied ({report.bytes_copied} bytes), "
            f"{report.unchanged} unchanged, {len(report.removed)} removed, "
            f"{report.seconds:.1f} s"
        )
        print_selftest(console, report)
    if not report.passed:
        sys.exit(1)


COMMANDS = [build, deploy]
