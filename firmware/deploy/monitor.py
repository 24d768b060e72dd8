"""``polekit monitor``: a board's serial log for people: timestamps, colours per level,
ESP32 reset causes explained, keys typed passed to the board, Ctrl-] to quit."""

from __future__ import annotations

import os
import re
import select
import sys
import time
from typing import IO, Any

QUIT = b"\x1d"  # Ctrl-]
# ESP32 ROM reset reasons ("rst:0x.. (NAME)"): what they usually mean on a pole
RESET_CAUSES = {
    0x01: "power on (or the EN button)",
    0x03: "software reset (machine.reset)",
    0x04: "legacy watchdog",
    0x05: "woke from deep sleep",
    0x07: "timer group 0 watchdog: a task hung (the node's watchdog)",
    0x08: "timer group 1 watchdog: an interrupt hung",
    0x09: "RTC watchdog",
    0x0C: "software CPU reset: a panic, machine.reset or esptool",
    0x0F: "brownout: the supply dipped (check the pole's power)",
    0x10: "RTC watchdog (boot stage)",
}
_RST = re.compile(r"rst:0x([0-9a-fA-F]+)")
LEVELS = (  # first match wins: (pattern, rich style)
    (re.compile(r"Traceback|Error|error|failed|FAIL|safe mode"), "bold red"),
    (re.compile(r"[Ww]arning|WARN"), "yellow"),
    (re.compile(r"rst:0x|boot:0x|soft reboot"), "magenta"),
    (re.compile(r" up, |passed|\bok\b"), "green"),
)


def annotate(line: str) -> tuple[str, str]:
    """(rich style, line with any reset cause explained) for one line of the log."""
    m = _RST.search(line)
    if m:
        cause = RESET_CAUSES.get(int(m.group(1), 16))
        if cause:
            line = f"{line}   <- {cause}"
    for pattern, style in LEVELS:
        if pattern.search(line):
            return style, line
    return "", line


def monitor(port: str, baud: int = 115200, stdin: IO[bytes] | None = None) -> None:
    """Print the board's output until Ctrl-] (or the end of ``stdin``); keys are sent on."""
    import serial
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    keys = stdin if stdin is not None else sys.stdin.buffer
    raw_tty = None
    if keys.isatty():
        import termios
        import tty

        raw_tty = termios.tcgetattr(keys.fileno())
        tty.setcbreak(keys.fileno())
    console.print(f"[dim]--- {port} at {baud} baud; Ctrl-] quits ---[/dim]")
    pending = b""
    try:
        with serial.serial_for_url(port, baud, timeout=0) as link:
            fd = getattr(link, "fileno", lambda: None)()
            while True:
                watch: list[Any] = [keys]
                if isinstance(fd, int):
                    watch.append(fd)
                ready, _, _ = select.select(watch, [], [], 0.05)
                if keys in ready:
                    typed = os.read(keys.fileno(), 256)
                    if not typed or QUIT in typed:
                        typed = typed.split(QUIT)[0]
                        if typed:
                            link.write(typed)
                        break
                    link.write(typed.replace(b"\n", b"\r"))
                data = link.read(4096)
                if not data:
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    style, text = annotate(raw.decode(errors="replace").rstrip("\r"))
                    stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
                    body = f"[{style}]{escape(text)}[/{style}]" if style else escape(text)
                    console.print(f"[dim]{stamp}[/dim] {body}")
    finally:
        if raw_tty is not None:
            import termios

            termios.tcsetattr(keys.fileno(), termios.TCSADRAIN, raw_tty)
        if pending:
            console.print(escape(pending.decode(errors="replace")))
        console.print("[dim]--- monitor closed ---[/dim]")
