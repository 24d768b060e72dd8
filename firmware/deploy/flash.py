"""Write a MicroPython image to a board with esptool (as a library), verified.

The offset comes from the board definition (0x1000 on an ESP32, 0x0 on the C3/S3). The
image is checked before anything is sent (an ESP image, for this board's chip, fitting its
flash). esptool verifies the written data by MD5.

On a real port (or an ``rfc2217://`` one) esptool resets the board into its bootloader
through DTR/RTS, loads its flasher stub, raises the baud rate and resets the board after.
A pseudo-terminal has no DTR/RTS: the board must already wait in its bootloader (an
emulated board started with ``--bootloader``), the ROM's own loader writes the image and
"runs user code" at the end; ``--erase`` then takes a short stub session of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polekit.boards import Board, load

CHIP_IDS = {"esp32": 0, "esp32c3": 5, "esp32s3": 9}
DOWNLOADS = {
    "esp32": "ESP32_GENERIC",
    "esp32c3": "ESP32_GENERIC_C3",
    "esp32s3": "ESP32_GENERIC_S3",
}
Progress = Callable[[int, int], None]  # (done, total) in percent of the write


class FlashError(RuntimeError):
    """Flashing failed or cannot start; the message names the port or file and the fix."""


def where_to_get(chip: str, given: str = "with --image") -> str:
    name = DOWNLOADS.get(chip, chip.upper())
    return (
        f"Get MicroPython for {chip.upper()} on a machine with internet: "
        f"https://micropython.org/download/{name}/ (the .bin file, v1.22 or later), copy it "
        f"to this laptop and give its path {given}."
    )


def check_image(image: Path, board: Board, given: str = "with --image") -> bytes:
    """The image's bytes, or FlashError saying what is wrong and where to get a good one
    (``given``: where the person gives the path, for the hint)."""
    try:
        data = image.read_bytes()
    except FileNotFoundError:
        raise FlashError(f"{image}: no such file. {where_to_get(board.chip, given)}") from None
    except OSError as exc:
        raise FlashError(f"{image}: {exc.strerror}") from None
    if len(data) < 24 or data[0] != 0xE9:
        raise FlashError(
            f"{image}: not an ESP firmware image (it starts {data[:4].hex() or 'empty'}, "
            f"an image starts e9). {where_to_get(board.chip, given)}"
        )
    chip_id = int.from_bytes(data[12:14], "little")
    if chip_id != CHIP_IDS[board.chip]:
        other = next((c for c, i in CHIP_IDS.items() if i == chip_id), f"chip id {chip_id}")
        raise FlashError(
            f"{image}: this image is for {other.upper()}, but {board.name} is an "
            f"{board.chip.upper()}. {where_to_get(board.chip, given)}"
        )
    room = board.flash_size_mb * 1024 * 1024 - board.firmware_offset
    if len(data) > room:
        raise FlashError(f"{image}: {len(data)} bytes do not fit the board's flash ({room})")
    return data


class _Sink:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.lines: list[str] = []
        self.percent = 0


_sinks: dict[int, _Sink] = {}
_installed = threading.Lock()
_logger: Any = None


def _install_logger() -> None:
    """One esptool logger for the process, routing each thread's output to its own sink,
    so several boards can be flashed at once (provision --jobs)."""
    global _logger
    with _installed:
        if _logger is not None:
            return
        from esptool.logger import TemplateLogger, log

        class Router(TemplateLogger):
            def _sink(self) -> _Sink | None:
                return _sinks.get(threading.get_ident())

            def print(self, *args: Any, **kwargs: Any) -> None:
                sink = self._sink()
                if sink is not None:
                    sink.lines.append(" ".join(str(a) for a in args))

            def note(self, message: str) -> None:
                self.print("NOTE:", message)

            def warning(self, message: str) -> None:
                self.print("WARNING:", message)

            def error(self, message: str) -> None:
                self.print("ERROR:", message)

            def stage(self, finish: bool = False) -> None:
                pass

            def progress_bar(
                self,
                cur_iter: int,
                total_iters: int,
                prefix: str = "",
                suffix: str = "",
                bar_length: int = 30,
            ) -> None:
                sink = self._sink()
                if sink is not None and total_iters:
                    sink.percent = int(100 * cur_iter / total_iters)
                    if sink.progress:
                        sink.progress(cur_iter, total_iters)

            def set_verbosity(self, verbosity: str) -> None:
                pass

        _logger = Router()
        log.set_logger(_logger)


@dataclass
class FlashReport:
    port: str
    chip: str
    mac: str
    size: int
    seconds: float
    log: list[str]


def flash_image(
    port: str,
    image: Path | str,
    board: str | Board,
    erase: bool = False,
    baud: int = 460800,
    progress: Progress | None = None,
) -> FlashReport:
    """Write ``image`` at the board's firmware offset, verified by MD5, and start it."""
    from esptool.cmds import attach_flash, detect_chip, erase_flash, reset_chip, run_stub
    from esptool.cmds import write_flash as esptool_write_flash
    from esptool.util import FatalError

    board = board if isinstance(board, Board) else load(board)
    data = check_image(Path(image), board)
    _install_logger()
    sink = _Sink(progress)
    _sinks[threading.get_ident()] = sink
    pty = port.startswith("/dev/pts/")
    connect = "no-reset" if pty else "default-reset"
    started = time.monotonic()
    step = "connect"
    try:
        if erase and pty:
            step = "erase"
            with detect_chip(port, 115200, connect, connect_attempts=3) as esp:
                esp = run_stub(esp)
                erase_flash(esp)
                reset_chip(esp, "no-reset")  # back to the ROM's loader
        step = "connect"
        with detect_chip(port, 115200, connect, connect_attempts=3) as esp:
            chip = esp.CHIP_NAME
            if chip.replace("-", "").lower() != board.chip:
                raise FlashError(
                    f"{port}: the board answering is an {chip}, but {board.name} is an "
                    f"{board.chip.upper()}: wrong --board, or another board on this port?"
                )
            mac = ":".join(f"{b:02X}" for b in esp.read_mac())
            if not pty:
                esp = run_stub(esp)
            if baud != 115200:
                esp.change_baud(baud)
            attach_flash(esp)
            if erase and not pty:
                step = "erase"
                erase_flash(esp)
            step = "write"
            esptool_write_flash(
                esp,
                [(board.firmware_offset, data)],
                flash_size=f"{board.flash_size_mb}MB",
            )
            step = "reset"
            reset_chip(esp, "soft-reset" if pty else "hard-reset")
    except FlashError:
        raise
    except (FatalError, OSError) as exc:
        at = f" at {sink.percent}%" if step == "write" else ""
        raise FlashError(
            f"{port}: flashing failed during {step}{at}: {' '.join(str(exc).split()).rstrip('.')}. "
            + (
                "The board holds a partial image now; check the cable, "
                if step == "write"
                else "Is the board on this port and in its bootloader (hold BOOT, tap EN)? "
            )
            + "then run the same command again (it rewrites the whole image)."
        ) from None
    finally:
        _sinks.pop(threading.get_ident(), None)
    return FlashReport(port, chip, mac, len(data), time.monotonic() - started, sink.lines)
