"""``polekit emulate``: an emulated board in the foreground, ports printed for other tools."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import click

from polekit.boards import BoardError, names


@click.command()
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
    help="Host folder that holds the board's flash (kept across runs). Default: a fresh "
    "temporary folder.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON line with the ports (for scripts), nothing else.",
)
def emulate(board_name: str, fs_dir: Path | None, as_json: bool) -> None:
    """Start an emulated board and keep it running until Ctrl-C or SIGTERM.

    \b
    The board's REPL is a pseudo-terminal: connect with
      mpremote connect /dev/pts/N      (exec, run, fs cp/ls, soft-reset, repl)
      python -m serial.tools.miniterm /dev/pts/N 115200
    The flash persists across soft resets, and across runs with --fs DIR.
    """
    from polekit.hil.emulator import EmulatedBoard, EmulatorError
    from polekit.hil.mpvm import MicroPythonNotFoundError

    try:
        board = EmulatedBoard(board_name, fs_dir=fs_dir).start()
    except (BoardError, EmulatorError, MicroPythonNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    ports = {"repl": board.repl, "uarts": {}, "control": None, "fs": str(board.fs_dir)}
    if as_json:
        click.echo(json.dumps(ports))
    else:
        click.echo(
            f"emulated {board.board.name} ({board.board.chip}, heap {board.board.heap_bytes} bytes)"
        )
        click.echo(f"  REPL   {board.repl}    (mpremote connect {board.repl})")
        click.echo(f"  flash  {board.fs_dir}")
        click.echo("Ctrl-C to power it off.")
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
