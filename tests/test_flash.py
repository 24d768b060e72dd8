"""Flashing MicroPython with the real esptool into the emulated ROM bootloader: over a
pseudo-terminal (ROM loader) and over RFC 2217 (DTR/RTS reset, flasher stub, 460800 baud),
byte-for-byte checks of the flash, the board booting the image, and failures (a garbled
block, a bad flash cell, a board gone mid-write, wrong or missing images) reported with the
port and what to do."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from polekit.firmware.deploy.flash import FlashError, flash_image
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.rfc2217 import Rfc2217Server
from polekit.hil.rom import make_app_image

from boardkit import Terminal, polekit, polekit_emulate

OFFSET = 0x1000  # where an ESP32 boots MicroPython from


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ESP32 application image (esptool's own writer), 96 KiB of random segments."""
    path = tmp_path_factory.mktemp("img") / "ESP32_GENERIC-test.bin"
    make_app_image(str(path), os.urandom(96 * 1024))
    return path


def wait_booted(board: EmulatedBoard, timeout_s: float = 20) -> None:
    """Wait until MicroPython has booted since the board last entered its bootloader (a
    board running before esptool reset it has an older ``booted`` event)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = [e.get("event") for e in board.events]
        rom = max((i for i, n in enumerate(names) if n == "bootloader"), default=-1)
        if not board.in_bootloader and "booted" in names[rom + 1 :]:
            return
        assert time.monotonic() < deadline, board.events[-5:]
        time.sleep(0.05)


def test_polekit_flash_writes_verifies_and_the_board_boots(tmp_path: Path, image: Path) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs", bootloader=True) as board:
        assert board.in_bootloader and b"waiting for download" in board.serial_log
        result = polekit(
            "flash", "--port", board.repl, "--image", str(image), "--board", "pole-env-esp32"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "written and verified (MD5)" in result.stdout
        data = image.read_bytes()
        wait_booted(board)
        assert board.read_spi_flash(OFFSET, len(data)) == data
        assert board.read_spi_flash(0, OFFSET) == b"\xff" * OFFSET  # nothing else touched
        assert "SPI_FAST_FLASH_BOOT" in board.wait_output(">>> ")
    # the flash outlives the board: it is a file beside its filesystem folder
    assert board.spi_flash_path.read_bytes()[OFFSET : OFFSET + len(data)] == data


def test_esptool_default_reset_over_rfc2217_enters_the_bootloader(
    tmp_path: Path, image: Path
) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs") as board:
        assert not board.in_bootloader  # running MicroPython, as a board on the desk
        bridge = Rfc2217Server(board)
        try:
            result = subprocess.run(
                [
                    str(Path(sys.executable).with_name("esptool")),
                    "--port",
                    bridge.url,
                    "--baud",
                    "460800",
                    "write-flash",
                    hex(OFFSET),
                    str(image),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            out = result.stdout + result.stderr
            assert result.returncode == 0, out[-3000:]
            assert "Stub flasher running" in out and "Hash of data verified" in out
            assert any(e.get("event") == "bootloader" for e in board.events)
            wait_booted(board)
            data = image.read_bytes()
            assert board.read_spi_flash(OFFSET, len(data)) == data
            # and mpremote reaches the booted board through the same RFC 2217 port
            mp = subprocess.run(
                [
                    str(Path(sys.executable).with_name("mpremote")),
                    "connect",
                    bridge.url,
                    "exec",
                    "print(6 * 7)",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert mp.stdout.strip().endswith("42"), mp.stdout + mp.stderr
        finally:
            bridge.close()


@pytest.mark.parametrize(
    ("fault", "says"),
    [("corrupt_block", "result was 0107"), ("bad_flash_block", "MD5")],
    ids=["garbled-on-the-line", "bad-flash-cell"],
)
def test_corrupt_transfers_are_detected_with_port_and_retry_hint(
    tmp_path: Path, image: Path, fault: str, says: str
) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs", bootloader=True) as board:
        board.rom_faults[fault] = 3
        with pytest.raises(FlashError) as err:
            flash_image(board.repl, image, "pole-env-esp32")
        text = str(err.value)
        assert text.startswith(f"{board.repl}: flashing failed during write") and says in text
        assert "run the same command again" in text
        assert board.in_bootloader  # nothing bad was booted
        board.rom_faults.clear()  # the cable is reseated
        flash_image(board.repl, image, "pole-env-esp32")  # the retry the hint asks for
        wait_booted(board)


def test_a_block_garbled_once_is_resent_and_the_image_lands_intact(
    tmp_path: Path, image: Path
) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs", bootloader=True) as board:
        board.rom_faults["corrupt_block_once"] = 2
        rom = board._rom
        flash_image(board.repl, image, "pole-env-esp32")
        assert rom.counters["bad_checksums"] == 1  # refused once; esptool sent it again
        wait_booted(board)
        data = image.read_bytes()
        assert board.read_spi_flash(OFFSET, len(data)) == data


def test_an_interrupted_transfer_is_reported(tmp_path: Path, image: Path) -> None:
    board = EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs", bootloader=True).start()
    progress: list[int] = []

    def unplug_midway(done: int, total: int) -> None:
        progress.append(done)
        if len(progress) == 3:
            threading.Thread(target=board.stop, daemon=True).start()  # the cable is pulled

    try:
        with pytest.raises(FlashError) as err:
            flash_image(board.repl, image, "pole-env-esp32", progress=unplug_midway)
    finally:
        board.stop()
    text = str(err.value)
    assert f"{board.repl}: flashing failed during write at " in text
    assert "partial image" in text and "run the same command again" in text


def test_wrong_or_missing_images_are_refused_with_where_to_get_one(
    tmp_path: Path, image: Path
) -> None:
    missing = polekit(
        "flash",
        "--port",
        "/dev/null",
        "--image",
        str(tmp_path / "nope.bin"),
        "--board",
        "pole-env-esp32",
    )
    assert missing.returncode == 1
    assert "nope.bin: no such file" in missing.stderr
    assert "https://micropython.org/download/ESP32_GENERIC/" in missing.stderr
    c3 = polekit(
        "flash", "--port", "/dev/null", "--image", str(image), "--board", "community-sos-esp32c3"
    )
    assert c3.returncode == 1
    assert "this image is for ESP32, but community-sos-esp32c3 is an ESP32C3" in c3.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 not an image")
    bad = polekit("flash", "--port", "/dev/null", "--image", str(junk), "--board", "pole-env-esp32")
    assert bad.returncode == 1 and "not an ESP firmware image" in bad.stderr


def test_erase_wipes_the_filesystem_too(tmp_path: Path, image: Path) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    (fs / "main.py").write_text("print('old firmware')\n")
    with EmulatedBoard("pole-env-esp32", fs_dir=fs, bootloader=True) as board:
        flash_image(board.repl, image, "pole-env-esp32", erase=True)
        wait_booted(board)
        assert not (fs / "main.py").exists()


def test_polekit_emulate_bootloader_and_flash_read(tmp_path: Path, image: Path) -> None:
    with polekit_emulate("--bootloader", "--rfc2217", "--fs", str(tmp_path / "fs")) as ports:
        assert ports["rfc2217"].startswith("rfc2217://127.0.0.1:")
        result = polekit(
            "flash", "--port", ports["repl"], "--image", str(image), "--board", "pole-env-esp32"
        )
        assert result.returncode == 0, result.stderr
        dump = polekit("emulate", "flash-read", "--control", ports["control"], "0x1000", "16")
        assert dump.returncode == 0, dump.stderr
        assert dump.stdout.startswith(
            "00001000  " + " ".join(f"{b:02x}" for b in image.read_bytes()[:16])
        )


def test_ctrl_c_stops_a_flash_at_once_and_the_same_command_finishes_it(
    tmp_path: Path, image: Path
) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs", bootloader=True) as board:
        args = ["flash", "--port", board.repl, "--image", str(image), "--board", "pole-env-esp32"]
        term = Terminal(*args)
        try:
            term.wait_for(r"writing \S+ .* ([1-9]\d?)%", timeout_s=60)  # part of it is written
            pressed = time.monotonic()
            term.type(b"\x03")  # Ctrl-C at the terminal: SIGINT for the flash
            code = term.wait(timeout_s=30)
            took = time.monotonic() - pressed
        finally:
            term.close()
        text = term.text()
        assert code == 130, text
        print(f"stopped {took:.2f} s after Ctrl-C")
        assert took < 2.5, f"stopped {took:.1f} s after Ctrl-C"
        assert "Traceback" not in text
        assert re.search(
            rf"stopped while writing {image.name} at \d+%: the board holds a partial", text
        )
        resume = text.split("To resume, run: ", 1)[1].splitlines()[0]
        assert shlex.split(resume) == ["polekit", *args]
        assert board.in_bootloader  # the partial image was never started
        again = polekit(*shlex.split(resume)[1:])
        assert again.returncode == 0, again.stdout + again.stderr
        wait_booted(board)
        data = image.read_bytes()
        assert board.read_spi_flash(OFFSET, len(data)) == data
