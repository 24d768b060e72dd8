"""``polekit monitor``: a board's serial log for people: timestamps, colours per level,
ESP32 reset causes explained, keys typed passed to the board (Ctrl-C too: it stops what runs
there and leaves the REPL), Ctrl-] to quit."""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import sys
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def raw_keys(keys: IO[bytes]) -> Iterator[None]:
    """Keys go to the board as the bytes typed while inside: no line editing, no echo (the
    REPL echoes), and no signals, so Ctrl-C reaches the board as 0x03 (a KeyboardInterrupt
    there) instead of stopping this process. Output keeps its newline handling (OPOST), so
    the log still starts each line at the left. The terminal is restored however we leave.
    Not a terminal (a pipe, a file): nothing to change."""
    if not keys.isatty():
        yield
        return
    import termios

    fd = keys.fileno()
    saved = termios.tcgetattr(fd)
    raw = termios.tcgetattr(fd)
    # cfmakeraw's input and local flags; the output flags are left as they are
    raw[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    raw[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    raw[6][termios.VMIN] = 1
    raw[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSAFLUSH, raw)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


class LogPrinter:
    """The board's output as stamped, coloured lines. A line the board leaves open (the
    REPL's ``>>> `` prompt, the echo of what is typed) is shown once the board pauses, so
    a person sees the prompt they are typing at; the rest of it follows on the same line."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.mid_line = False  # part of the current line is on the screen already

    def feed(self, data: bytes) -> None:
        self.pending += self.decoder.decode(data)
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._show(line.rstrip("\r"), end="\n")

    def pause(self) -> None:
        """The board is quiet: show the open line so far."""
        if self.pending:
            self._show(self.pending, end="")
            self.pending = ""

    def close(self) -> None:
        self.pending += self.decoder.decode(b"", final=True)
        self.pause()
        if self.mid_line:
            self.console.print()
            self.mid_line = False

    def _show(self, text: str, end: str) -> None:
        from rich.markup import escape

        style, text = annotate(text)
        body = f"[{style}]{escape(text)}[/{style}]" if style else escape(text)
        if not self.mid_line:
            stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
            body = f"[dim]{stamp}[/dim] {body}"
        self.console.print(body, end=end)
        self.mid_line = end == ""


def monitor(port: str, baud: int = 115200, stdin: IO[bytes] | None = None) -> None:
    """Print the board's output until Ctrl-] (or the end of ``stdin``); keys are sent on,
    Ctrl-C included. Raises OSError (serial.SerialException) when the port cannot be
    opened or goes away; the terminal is restored either way."""
    import serial
    from rich.console import Console

    console = Console(highlight=False)
    keys = stdin if stdin is not None else sys.stdin.buffer
    printer = LogPrinter(console)
    # open the port before touching the terminal: a wrong port is a plain error
    with serial.serial_for_url(port, baud, timeout=0) as link:
        console.print(
            f"[dim]--- {port} at {baud} baud; Ctrl-] quits, Ctrl-C goes to the board ---[/dim]"
        )
        try:
            with raw_keys(keys):
                _pump(link, keys, printer)
        finally:
            printer.close()
            console.print("[dim]--- monitor closed ---[/dim]")


def _pump(link: Any, keys: IO[bytes], printer: LogPrinter) -> None:
    fd = getattr(link, "fileno", lambda: None)()
    watch: list[Any] = [keys]
    if isinstance(fd, int):
        watch.append(fd)  # an rfc2217:// link has no descriptor: it is read every turn
    while True:
        ready, _, _ = select.select(watch, [], [], 0.05)
        if keys in ready:
            typed = os.read(keys.fileno(), 256)
            if not typed or QUIT in typed:
                typed = typed.split(QUIT)[0]
                if typed:
                    link.write(typed)
                return
            link.write(typed.replace(b"\n", b"\r"))
        data = link.read(4096)
        if data:
            printer.feed(data)
        else:
            printer.pause()
