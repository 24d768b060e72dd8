"""Field commands: ``polekit build``, ``deploy``, ``provision``, ``flash``, ``monitor``,
``doctor`` (docs/field-guide.md)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
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


KEY = click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Install this update key (the NAME.pub of polekit keys new) on the node as "
    "/ota.pub: it then accepts updates signed with NAME.key only.",
)


def _ota_key(key_path: Path | None) -> bytes | None:
    if key_path is None:
        return None
    from polekit.firmware.deploy.signing import SigningKeyError, public_key_raw

    try:
        return public_key_raw(key_path)
    except SigningKeyError as exc:
        raise click.ClickException(str(exc)) from None


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


def stopped(console: Console, what_was_done: str, resume: list[str] | None = None) -> NoReturn:
    """Ctrl-C: say what was done and the command that carries on (each field command is
    safe to run again: deploy copies only what differs, flash writes the whole image,
    provision skips the boards its report has as passed), and exit 130, the shell's status
    for an interrupt, without a traceback. ``resume``: the arguments that carry on, when
    they are not the ones given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the summary
    command = shlex.join(["polekit", *(sys.argv[1:] if resume is None else resume)])
    # soft wrap: the command must stay one line to be copied, however narrow the terminal
    console.print(f"[yellow]Stopped (Ctrl-C):[/yellow] {escape(what_was_done)}", soft_wrap=True)
    console.print(f"To resume, run: {command}", markup=False, soft_wrap=True)
    sys.exit(130)


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
@click.option(
    "--march",
    type=click.Choice(["xtensawin", "rv32imc"]),
    help="Also compile for a chip's native code emitter (ESP32: xtensawin, C3: rv32imc); "
    "such a bundle runs on that chip only. Default: bytecode for any chip.",
)
@click.option(
    "--sign",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sign the bundle as an update with this NAME.key (polekit keys new): writes "
    "manifest.cbor and manifest.sig.",
)
@click.option(
    "--version",
    "version",
    metavar="X.Y",
    help="The version the bundle reports once it runs. Default: node/version.py's VERSION.",
)
@click.option(
    "--min-version",
    metavar="X.Y",
    help="With --sign: the oldest running version this update may replace. Default: 0.0.",
)
@click.option(
    "--downgrade",
    is_flag=True,
    help="With --sign: allow this update to replace a newer version.",
)
def build(
    board_name: str,
    out: Path | None,
    mpy: str,
    source: bool,
    march: str | None,
    key_path: Path | None,
    version: str | None,
    min_version: str | None,
    downgrade: bool,
) -> None:
    """Build the deployable bundle of a board: the node firmware and protocols/ compiled with
    mpy-cross, main.py, the board map, its reference config, and manifest.json with each
    file's sha256 and the firmware version. The same inputs give the same bytes.

    With --sign the bundle is an over-the-air update as well: manifest.cbor names the
    board, the version, the oldest version it may replace and every file under lib/ with
    its size and sha256; manifest.sig is its Ed25519 signature (docs/ota.md).

    \b
    Example:
      polekit build --board pole-env-esp32            # -> build/pole-env-esp32/
      polekit build --board pole-env-esp32 --march xtensawin
      polekit build --board pole-env-esp32 --sign city.key --version 0.2 -o build/v0.2
    """
    from polekit.firmware.deploy.bundle import BundleError, parse_version
    from polekit.firmware.deploy.bundle import build as build_bundle

    try:
        if source and march:
            raise click.UsageError("--march compiles .mpy files; leave out --source")
        if key_path is None and (min_version or downgrade):
            raise click.UsageError(
                "--min-version and --downgrade describe a signed update: add --sign"
            )
        if min_version is not None:
            min_version = "%d.%d" % parse_version(min_version)
        bundle = build_bundle(board_name, None if source else mpy, march, version)
    except (BoardError, BundleError) as exc:
        raise click.ClickException(str(exc)) from None
    target = out or Path("build") / board_name
    try:
        folder = bundle.write(target)
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the bundle to {target}: {exc.strerror} ({exc.filename}); give "
            "--out a folder you can write"
        ) from None
    m = bundle.manifest
    click.echo(
        f"{folder}: {len(bundle.files)} files, {bundle.size()} bytes, firmware "
        f"{m['firmware_version']}, mpy {m['mpy']}" + (f" for {march}" if march else "")
    )
    if key_path is not None:
        from polekit.firmware.deploy.signing import ManifestError, SigningKeyError, sign_bundle

        try:
            raw, _sig = sign_bundle(
                folder,
                key_path,
                bundle.board.name,
                m["firmware_version"],
                min_version or "0.0",
                downgrade,
            )
        except (SigningKeyError, ManifestError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(
                f"cannot write the signature to {folder}: {exc.strerror}"
            ) from None
        click.echo(
            f"{folder}: signed with {key_path}: update {m['firmware_version']} for "
            f"{bundle.board.name}, replaces {min_version or '0.0'} and later"
            + (", downgrade allowed" if downgrade else "")
            + f"; manifest.cbor ({len(raw)} bytes), manifest.sig"
        )


@click.group()
def keys() -> None:
    """Update signing keys (docs/ota.md, "Keys and signing")."""


@keys.command("new")
@click.argument("name")
def keys_new(name: str) -> None:
    """Make an Ed25519 key pair for signing updates: NAME.key (PEM PKCS#8, readable by you
    only: keep it off the gateway and out of version control) and NAME.pub (PEM), which
    `polekit deploy --key NAME.pub` installs on each node and the gateway's config names.

    \b
    Example:
      polekit keys new city            # -> city.key, city.pub
    """
    from polekit.firmware.deploy.signing import SigningKeyError, new_key

    try:
        key_path, pub_path = new_key(name)
    except SigningKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{key_path}: the signing key (mode 0600: back it up, keep it secret)")
    click.echo(f"{pub_path}: the public key for nodes (polekit deploy --key) and gateways")


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
@KEY
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def deploy(
    port: str,
    board_name: str,
    device_code: str | None,
    settings: tuple[str, ...],
    source: bool,
    key_path: Path | None,
    as_json: bool,
) -> None:
    """Put the node firmware on a board with MicroPython, configure it and self-test it.

    Only files whose sha256 differs are copied, so a second deploy takes a second. The
    self-test reads every sensor of the board through its driver and checks the config and
    the uplink; the node is then started and must report itself up. Exit status 1 when any
    check fails.

    \b
    Example:
      polekit deploy --port /dev/ttyUSB0 --board pole-env-esp32 -c 371600PL000001C --set unit=3
      polekit deploy --port /dev/ttyUSB0 --board pole-env-esp32 --key city.pub
    """
    ota_key = _ota_key(key_path)
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
        step: tuple[str, int, int] = ("connect", 0, 0)  # what deploy is doing, for Ctrl-C

        def note(what: str, done: int, total: int) -> None:
            nonlocal step
            step = (what, done, total)
            bar.update(task, description=f"{port}: {what}", completed=done, total=total or None)

        try:
            report = run_deploy(
                port,
                board_name,
                device_code,
                _config_option(settings),
                source=source,
                progress=note,
                ota_key=ota_key,
            )
        except (BoardError, DeployError, LinkError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            bar.stop()
            stopped(console, _deploy_stopped(port, *step))
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "passed": report.passed}))
    else:
        console.print(
            f"{port}: {report.board} firmware {report.firmware_version} (mpy {report.mpy}) on "
            f"MicroPython {report.micropython}, chip {report.unique_id}: "
            f"{len(report.copied)} files copied ({report.bytes_copied} bytes), "
            f"{report.unchanged} unchanged, {len(report.removed)} removed, "
            f"{report.seconds:.1f} s" + (f"; update key {key_path} installed" if ota_key else "")
        )
        print_selftest(console, report)
    if not report.passed:
        sys.exit(1)


def _deploy_stopped(port: str, what: str, done: int, total: int) -> str:
    """What an interrupted deploy had done, from the last step it reported."""
    if what == "connect":
        return f"{port}: stopped while connecting to the board; nothing was copied."
    kept = "the node stays stopped (its /maintenance flag) until a deploy finishes."
    if what == "copy":
        return f"{port}: stopped while copying files, {done} of {total} bytes sent; {kept}"
    if what == "selftest":
        return f"{port}: stopped during the self-test; the files are on the board; {kept}"
    return f"{port}: stopped while the node was starting; the files and config are on the board."


COMMANDS = [build, deploy, keys]


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
@KEY
def provision(
    manifest: Path, jobs: int, report: Path | None, retry_passed: bool, key_path: Path | None
) -> None:
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
        BatchInterrupted,
        ManifestError,
        load_report,
        read_manifest,
        report_paths,
    )
    from polekit.firmware.deploy.provision import provision as run

    ota_key = _ota_key(key_path)
    console = Console()
    try:
        rows = read_manifest(manifest)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    for out in report_paths(manifest, report):
        _check_writable(out, "--report")
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
        try:
            results, ran, skipped = run(manifest, jobs, report, step, retry_passed, ota_key=ota_key)
        except BatchInterrupted as stop:
            bar.stop()
            cut = stop.cut_off
            if stop.finished:
                _print_boards(console, stop.finished)
            passed = sum(r["result"] == "pass" for r in stop.finished)
            stopped(
                console,
                (
                    f"{len(stop.finished)} board(s) finished in this run ({passed} passed, "
                    f"{len(stop.finished) - passed} failed)"
                    if stop.finished
                    else "no board finished in this run"
                )
                + f", {len(cut)} cut off mid-way"
                + (f" ({', '.join(f'{c} in {what}' for c, what in cut.items())})" if cut else "")
                + f", {len(stop.not_started)} not started. Report: {stop.report[0]}, "
                f"{stop.report[1]}. The boards not passed are done by the next run.",
                resume=[a for a in sys.argv[1:] if a != "--retry-passed"],
            )
        except KeyboardInterrupt:  # before any board was started
            bar.stop()
            stopped(console, "no board was started.")
    _print_boards(console, results)
    json_path, csv_path = report_paths(manifest, report)
    failed = sum(r["result"] != "pass" for r in results)
    console.print(
        f"{len(results) - failed} passed, {failed} failed ({ran} run now, {skipped} already "
        f"passed). Report: {json_path}, {csv_path}"
    )
    if failed:
        sys.exit(1)


def _print_boards(console: Console, results: list[dict[str, Any]]) -> None:
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


COMMANDS.append(provision)


def _check_writable(path: Path, option: str) -> None:
    """Refuse, before any board is touched, a file the command could not write at the end
    (a folder in its place, a parent that is a file, no permission): the boards' work would
    be lost with it. Tries for real, changing nothing."""
    import tempfile

    try:
        if path.exists():
            path.open("a").close()
        else:
            tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as exc:
        raise click.ClickException(
            f"cannot write {path}: {exc.strerror}; give {option} a path in a folder you can write"
        ) from None


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
    "--baud",
    default=460800,
    show_default=True,
    type=click.IntRange(min=1),
    help="Baud rate while writing the image.",
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
        written = [0, 0]  # (done, total) blocks of the write, for Ctrl-C

        def note(done: int, total: int) -> None:
            written[:] = [done, total]
            bar.update(task, completed=done, total=total)

        try:
            report = flash_image(port, image, board_name, erase=erase, baud=baud, progress=note)
        except (BoardError, FlashError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            bar.stop()
            done, total = written
            stopped(
                console,
                f"{port}: stopped while writing {image.name} at {100 * done // total}%: the "
                "board holds a partial image and will not start MicroPython until it is "
                "flashed whole."
                if total
                else f"{port}: stopped before writing {image.name}"
                + (
                    ": --erase may have wiped the flash already."
                    if erase
                    else ": nothing was written."
                ),
            )
    console.print(
        f"{port}: {report.chip} {report.mac}: {report.size} bytes written and verified (MD5) "
        f"in {report.seconds:.1f} s; the board is starting MicroPython. Next: polekit deploy"
    )


COMMANDS.append(flash)


@click.command()
@PORT
@click.option(
    "--baud",
    default=115200,
    show_default=True,
    type=click.IntRange(min=1),
    help="The board's console rate.",
)
def monitor(port: str, baud: int) -> None:
    """Watch a board's serial console: timestamps, errors in red and warnings in yellow,
    ESP32 reset causes explained (brownout, watchdog, power on). What you type goes to the
    board, Ctrl-C too: it stops the node and leaves you at its REPL (machine.reset() starts
    it again). Ctrl-] quits.

    \b
    Example:
      polekit monitor --port /dev/ttyUSB0
    """
    from polekit.firmware.deploy.monitor import monitor as run_monitor

    try:
        run_monitor(port, baud)
    except KeyboardInterrupt:  # only when keys come from a pipe: a terminal sends Ctrl-C on
        sys.exit(130)
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
    colours = {"ok": "green", "note": "cyan", "warn": "yellow", "FAIL": "red"}
    for c in run_checks():
        bad += c.status == "FAIL"
        status = f"[{colours[c.status]}]{c.status}[/{colours[c.status]}]"
        table.add_row(c.name, status, c.detail, "" if c.status == "ok" else c.fix)
    console.print(table)
    if bad:
        console.print(f"[red]{bad} problem(s) to fix before field work.[/red]")
        sys.exit(1)
    console.print("Ready: polekit flash, deploy and provision can run here.")


COMMANDS += [monitor, doctor]
