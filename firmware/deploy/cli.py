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
from rich.table import Column, Table

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


@click.command()
@click.option(
    "--manifest",
    "-m",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV with columns port, board, device_code [, site, image, config.KEY ...].",
)
@click.option("--jobs", "-j", default=2, show_default=True, help="Ports worked in parallel.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Report base path (.json and .csv are written). Default: <manifest>-report.",
)
@click.option("--retry-passed", is_flag=True, help="Redo boards the report has as passed.")
def provision(manifest: Path, jobs: int, report: Path | None, retry_passed: bool) -> None:
    """Flash (rows with an image), deploy and self-test every board of a manifest, several
    ports at a time, with one progress display. A failing board is recorded and the batch
    goes on; run the same command again and only the boards not yet passed are redone.
    A port of `next` means the next board plugged in: plug them one after another and each
    is worked on while you plug the next.

    \b
    poles.csv:
      port,board,device_code,site,config.unit
      /dev/ttyUSB0,pole-env-esp32,371600PL000001C,Main St 1,1
      /dev/ttyUSB1,pole-env-esp32,371600PL000002A,Main St 3,2
    \b
    Example:
      polekit provision --manifest poles.csv --jobs 4     # -> poles-report.json and .csv
    """
    from polekit.firmware.deploy.provision import (
        ManifestError,
        load_report,
        read_manifest,
        report_paths,
    )
    from polekit.firmware.deploy.provision import provision as run

    console = Console()
    try:
        rows = read_manifest(manifest)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    with Progress(
        TextColumn("{task.fields[code]} {task.fields[port]}"),
        TextColumn("{task.description:<9}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        console=console,
    ) as bar:
        tasks = {
            r.device_code: bar.add_task("waiting", total=1, code=r.device_code, port=r.port)
            for r in rows
        }

        def step(row: Any, what: str, done: int, total: int) -> None:
            colour = {"pass": "green", "fail": "red"}.get(what)
            bar.update(
                tasks[row.device_code],
                description=f"[{colour}]{what}[/{colour}]" if colour else what,
                completed=done,
                total=total or 1,
            )

        earlier = {} if retry_passed else load_report(report_paths(manifest, report)[0])
        for code, task in tasks.items():
            if earlier.get(code, {}).get("result") == "pass":
                bar.update(task, description="[green]passed earlier[/green]", completed=1)
        results, ran, skipped = run(manifest, jobs, report, step, retry_passed)
    # the code is never cut; a port or MAC too long for its column folds, whole
    table = Table(
        Column("device code", no_wrap=True),
        Column("port", overflow="fold"),
        "result",
        Column("chip MAC", overflow="fold"),
        "firmware",
        "s",
        Column("error", overflow="fold"),
    )
    for r in results:
        ok = r["result"] == "pass"
        table.add_row(
            r["device_code"],
            r["port"],
            "[green]pass[/green]" if ok else "[red]fail[/red]",
            r["chip_mac"],
            r["firmware_version"],
            str(r["duration_s"]),
            r["error"],
        )
    console.print(table)
    json_path, csv_path = report_paths(manifest, report)
    failed = sum(r["result"] != "pass" for r in results)
    console.print(
        f"{len(results) - failed} passed, {failed} failed ({ran} run now, {skipped} already "
        f"passed). Report: {json_path}, {csv_path}"
    )
    if failed:
        sys.exit(1)


COMMANDS.append(provision)


@click.command()
@PORT
@click.option(
    "--image",
    "-i",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The MicroPython .bin for the board's chip (a local file: nothing is downloaded).",
)
@BOARD
@click.option("--erase", is_flag=True, help="Erase the whole flash first (files on it too).")
@click.option(
    "--baud", default=460800, show_default=True, help="Baud rate while writing the image."
)
def flash(port: str, image: Path, board_name: str, erase: bool, baud: int) -> None:
    """Write MicroPython to a board with esptool, at the board's offset, verified by MD5.

    The board is put in its bootloader through DTR/RTS (hold BOOT and tap EN if your
    adapter has no auto-reset); a pseudo-terminal (an emulated board started with
    `polekit emulate --bootloader`) must already be waiting in it.

    \b
    Example:
      polekit flash --port /dev/ttyUSB0 --image ESP32_GENERIC-v1.27.0.bin --board pole-env-esp32
      polekit deploy --port /dev/ttyUSB0 --board pole-env-esp32 -c 371600PL000001C
    """
    from polekit.firmware.deploy.flash import FlashError, flash_image

    console = Console()
    with Progress(
        TextColumn(f"{port}: writing {image.name}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("write", total=100)
        try:
            report = flash_image(
                port,
                image,
                board_name,
                erase=erase,
                baud=baud,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (BoardError, FlashError) as exc:
            raise click.ClickException(str(exc)) from None
    console.print(
        f"{port}: {report.chip} {report.mac}: {report.size} bytes written and verified (MD5) "
        f"in {report.seconds:.1f} s; the board is starting MicroPython. Next: polekit deploy"
    )


COMMANDS.append(flash)


@click.command()
@PORT
@click.option("--baud", default=115200, show_default=True, help="The board's console rate.")
def monitor(port: str, baud: int) -> None:
    """Watch a board's serial console: timestamps, errors in red and warnings in yellow,
    ESP32 reset causes explained (brownout, watchdog, power on). What you type goes to the
    board (its REPL). Ctrl-] quits.

    \b
    Example:
      polekit monitor --port /dev/ttyUSB0
    """
    from polekit.firmware.deploy.monitor import monitor as run_monitor

    try:
        run_monitor(port, baud)
    except OSError as exc:
        raise click.ClickException(
            f"{port}: {exc}. Is the board plugged in and the port free (`polekit doctor`)?"
        ) from None


@click.command()
def doctor() -> None:
    """Check this machine for field work: Python, esptool, mpy-cross, mpremote, Node for
    the emulator, serial ports and their permissions. Each problem comes with its fix.
    Exit status 1 when something required is missing."""
    from polekit.firmware.deploy.doctor import run_checks

    console = Console()
    table = Table("check", "status", "detail", "fix")
    bad = 0
    for c in run_checks():
        if c.ok:
            status = "[green]ok[/green]"
        elif c.required:
            status = "[red]FAIL[/red]"
            bad += 1
        else:
            status = "[yellow]warn[/yellow]"
        table.add_row(c.name, status, c.detail, "" if c.ok else c.fix)
    console.print(table)
    if bad:
        console.print(f"[red]{bad} problem(s) to fix before field work.[/red]")
        sys.exit(1)
    console.print("Ready: polekit flash, deploy and provision can run here.")


COMMANDS += [monitor, doctor]
