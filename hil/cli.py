"""``polekit emulate``: an emulated board in the foreground, and its control channel."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from polekit.boards import BoardError, names
from polekit.hil import socket_path

CONTROL = click.option(
    "--control",
    "control",
    required=True,
    type=click.Path(dir_okay=False),
    help="The board's control socket (printed by `polekit emulate`).",
)


def _unique_id(value: str | None) -> str | None:
    """--unique-id checked as the chip would have it (12 hex digits, not multicast)."""
    if value is None:
        return None
    from polekit.hil.chip_id import parse_unique_id

    try:
        return parse_unique_id(value).hex()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--unique-id") from None


@click.group(invoke_without_command=True)
@click.option(
    "--board",
    "board_name",
    default="pole-env-esp32",
    show_default=True,
    help=f"Board definition: {', '.join(names())}.",
)
@click.option(
    "--fs",
    "fs_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Host folder that holds the board's flash (kept across runs, and with it the "
    "board's MAC). Default: a temporary folder, removed when the board powers off.",
)
@click.option(
    "--control",
    "control_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to put the control socket. Default: in a temporary folder.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON line with the ports (for scripts), nothing else.",
)
@click.option(
    "--bare",
    is_flag=True,
    help="Boot MicroPython alone, without installing the polekit node firmware.",
)
@click.option(
    "--bootloader",
    is_flag=True,
    help="Start held in the ROM bootloader, as if BOOT were held at reset: esptool (polekit "
    "flash) talks to it on the REPL port; after flashing the board boots the image.",
)
@click.option(
    "--rfc2217",
    "rfc2217",
    is_flag=True,
    help="Also serve the serial port as rfc2217://127.0.0.1:PORT, with DTR/RTS wired to "
    "EN/IO0 like a dev board, so esptool's default reset enters the bootloader.",
)
@click.option(
    "--air",
    "air",
    type=click.Path(dir_okay=False),
    help="Put the board's radio on the virtual BLE air at this socket; if nothing serves it "
    "yet, this process starts the air there (for other boards and gateways to join).",
)
@click.option(
    "--unique-id",
    "unique_id",
    callback=lambda ctx, param, value: _unique_id(value),
    help="The chip's id, 12 hex digits: its base MAC, as machine.unique_id() and esptool "
    "read-mac give it (Wi-Fi uses it, Bluetooth it + 2). Default: one of the board's own, "
    "locally administered (02:...), the same again with the same --fs.",
)
@click.pass_context
def emulate(
    ctx: click.Context,
    board_name: str,
    fs_dir: Path | None,
    control_path: Path | None,
    as_json: bool,
    bare: bool,
    bootloader: bool,
    rfc2217: bool,
    air: str | None,
    unique_id: str | None,
) -> None:
    """Start an emulated board and keep it running until Ctrl-C or SIGTERM.

    \b
    The board's REPL is a pseudo-terminal: connect with
      mpremote connect /dev/pts/N      (exec, run, fs cp/ls, soft-reset, repl)
    Its RS-485 UART is another one, at the line's baud rate (a Modbus master opens it).
    The polekit node firmware is installed and runs (unit 1, register map pole-env), unless
    --bare.
    Set the physical world while the firmware runs:
      polekit emulate set --control SOCKET sht3x.temperature=31.5 adxl345.tilt=12
      polekit emulate get --control SOCKET lamp.level
    The flash persists across soft resets, and across runs with --fs DIR.
    Flash MicroPython the way a field engineer does:
      polekit emulate --bootloader --rfc2217
      polekit flash --port rfc2217://127.0.0.1:PORT --image ESP32_GENERIC.bin --board ...
      polekit emulate flash-read --control SOCKET 0x1000 32
    """
    if ctx.invoked_subcommand is not None:
        return
    from polekit.hil.control import ControlServer
    from polekit.hil.emulator import EmulatedBoard, EmulatorError
    from polekit.hil.mpvm import MicroPythonNotFoundError

    try:  # join the air served there, or start one (a stale socket is taken over)
        start_air = air is not None and not socket_path.serving(air)
    except OSError as exc:
        raise click.ClickException(
            f"--air {air}: {exc.strerror}; give the socket of a running air (polekit ble "
            "air), or a new path to start an air there"
        ) from None
    if fs_dir is not None:
        try:
            fs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(
                f"--fs {fs_dir}: {exc.strerror}; give a folder for the board's flash"
            ) from None
    if control_path is not None:
        try:
            socket_path.claim(control_path)
        except OSError as exc:
            raise click.ClickException(
                f"--control {control_path}: {exc.strerror}; give a path for a new socket"
            ) from None
    # SIGTERM and a closed terminal stop the board as Ctrl-C does, from the first moment:
    # every way out powers it off and removes what it made in the temporary folder
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    board = server = bridge = hosted_air = None
    control_dir = None
    try:
        if start_air:
            from polekit.hil.air import VirtualAir

            try:
                hosted_air = VirtualAir(air)
            except OSError as exc:
                raise click.ClickException(
                    f"--air {air}: {exc.strerror}; give the socket of a running air (polekit "
                    "ble air), or a new path to start an air there"
                ) from None
        try:
            board = EmulatedBoard(
                board_name, fs_dir=fs_dir, bootloader=bootloader, air=air, unique_id=unique_id
            )
            if not bare and not bootloader:
                from polekit.firmware.install import install

                install(board.fs_dir, board.board)  # the node firmware; its config is kept
            board.start()
        except (BoardError, EmulatorError, MicroPythonNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        if control_path is None:
            control_dir = Path(tempfile.mkdtemp(prefix="polekit-control-"))
            control = control_dir / "control.sock"
        else:
            control = control_path
        try:
            server = ControlServer(board, control)
        except OSError as exc:
            raise click.ClickException(
                f"--control {control}: {exc.strerror}; give a path for a new socket"
            ) from None
        if rfc2217:
            from polekit.hil.rfc2217 import Rfc2217Server

            bridge = Rfc2217Server(board)
        _print_ports(board, control, air, bridge.url if bridge else None, bootloader, as_json)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        if bridge is not None:
            bridge.close()
        if server is not None:
            server.close()
        if board is not None:
            board.stop()
        if hosted_air is not None:
            hosted_air.close()
        if control_dir is not None:
            shutil.rmtree(control_dir)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_ports(
    board: Any, control: Path, air: str | None, rfc2217: str | None, bootloader: bool, as_json: bool
) -> None:
    if as_json:
        ports: dict[str, Any] = {
            "repl": board.repl,
            "uarts": board.uarts,
            "control": str(control),
            "fs": str(board.fs_dir),
            "mac": board.mac,
            "base_mac": board.base_mac,
        }
        if air is not None:
            ports["air"] = air
        if rfc2217 is not None:
            ports["rfc2217"] = rfc2217
        click.echo(json.dumps(ports))
    else:
        click.echo(
            f"emulated {board.board.name} ({board.board.chip}, heap {board.board.heap_bytes} bytes)"
        )
        state = "  (in its ROM bootloader)" if bootloader else ""
        click.echo(f"  REPL     {board.repl}    (mpremote connect {board.repl}){state}")
        if rfc2217 is not None:
            click.echo(f"  rfc2217  {rfc2217}    (esptool/mpremote --port; DTR/RTS reset)")
        for role, port in board.uarts.items():
            click.echo(f"  {role:<8} {port}")
        click.echo(f"  control  {control}")
        click.echo(f"  flash    {board.fs_dir}")
        click.echo(f"  MAC      {board.base_mac}    (Bluetooth {board.mac})")
        click.echo("Ctrl-C to power it off.")
    sys.stdout.flush()


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _call(control: str, request: dict[str, Any]) -> dict[str, Any]:
    from polekit.hil.control import call

    try:
        reply = call(control, request)
    except OSError as exc:
        raise click.ClickException(
            f"cannot reach the board at {control}: {exc}. Is `polekit emulate` running?"
        ) from None
    if "error" in reply:
        raise click.ClickException(reply["error"])
    return reply


@emulate.command("set")
@CONTROL
@click.argument("assignments", nargs=-1, required=True, metavar="DEVICE.QUANTITY=VALUE...")
def set_values(control: str, assignments: tuple[str, ...]) -> None:
    """Set physical values (or faults: .absent=1, .stuck=1, .noise=0.5,
    '.spike={"temperature": 45}' for one wild measurement) on the board."""
    values = {}
    for a in assignments:
        path, sep, value = a.partition("=")
        if not sep:
            raise click.UsageError(
                f"{a!r}: write DEVICE.QUANTITY=VALUE, e.g. sht3x.temperature=31.5"
            )
        values[path] = _value(value)
    _call(control, {"op": "set", "values": values})


@emulate.command("get")
@CONTROL
@click.argument("paths", nargs=-1, required=True, metavar="DEVICE.QUANTITY...")
def get_values(control: str, paths: tuple[str, ...]) -> None:
    """Print values or actuator states, one a line (lamp.level is the lamp's percent)."""
    reply = _call(control, {"op": "get", "paths": list(paths)})
    for path in paths:
        value = reply["values"][path]
        click.echo(value if len(paths) == 1 else f"{path}={value}")


@emulate.command("log")
@CONTROL
@click.option(
    "--tail",
    default=4000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Bytes from the end of the log.",
)
def serial_log(control: str, tail: int) -> None:
    """Print what the board wrote on its serial port (REPL and prints)."""
    click.echo(_call(control, {"op": "log", "tail": tail})["text"])


@emulate.command("reset")
@CONTROL
@click.option(
    "--power-cycle",
    "off_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Cut the power for this many seconds instead of pressing reset.",
)
@click.option(
    "--bootloader",
    is_flag=True,
    help="Reset with BOOT held: the board waits in its ROM bootloader for esptool.",
)
def reset(control: str, off_s: float | None, bootloader: bool) -> None:
    """Reset the board (the flash is kept)."""
    if bootloader:
        _call(control, {"op": "strap-reset", "download": True})
        return
    _call(control, {"op": "reset"} if off_s is None else {"op": "power-cycle", "off_s": off_s})


@emulate.command("flash-read")
@CONTROL
@click.argument("offset", type=lambda s: int(s, 0))
@click.argument("length", type=lambda s: int(s, 0))
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the raw bytes to this file instead of a hex dump.",
)
def flash_read(control: str, offset: int, length: int, out: Path | None) -> None:
    """Dump LENGTH bytes of the board's raw SPI flash from OFFSET (0x1000 is fine): what
    esptool wrote there."""
    data = bytes.fromhex(
        _call(control, {"op": "flash-read", "offset": offset, "length": length})["hex"]
    )
    if out is not None:
        try:
            out.write_bytes(data)
        except OSError as exc:
            raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
        return
    for i in range(0, len(data), 16):
        row = data[i : i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        click.echo(f"{offset + i:08x}  {row.hex(' '):<47}  {text}")
