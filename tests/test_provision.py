"""`polekit provision` over four emulated boards with two jobs: one board is made to fail
(a dead sensor), the others pass; the report says why; a second run redoes only the
failed board."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from polekit.firmware.deploy.provision import ManifestError, read_manifest
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity

from boardkit import Terminal, polekit

CODES = [identity.make("371600", "PL", n) for n in range(31, 35)]


def run(manifest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polekit", "provision", "-m", str(manifest), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_provision_four_boards_two_jobs_one_failing_then_resume(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        boards = [
            stack.enter_context(EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / f"flash{i}"))
            for i in range(4)
        ]
        boards[2].set("sht3x.absent", 1)  # a board with a broken sensor cable
        manifest = tmp_path / "poles.csv"
        lines = ["port,board,device_code,site,config.unit"]
        for i, (b, code) in enumerate(zip(boards, CODES, strict=True)):
            lines.append(f"{b.repl},pole-env-esp32,{code},Main St {i + 1},{i + 1}")
        manifest.write_text("\n".join(lines) + "\n")

        first = run(manifest, "--jobs", "2")
        assert first.returncode == 1, first.stdout + first.stderr
        assert "3 passed, 1 failed (4 run now, 0 already passed)" in first.stdout
        report = json.loads((tmp_path / "poles-report.json").read_text())["boards"]
        assert [b["result"] for b in report] == ["pass", "pass", "fail", "pass"]
        assert report[2]["error"].startswith("self-test: sht3x: no answer at I2C address 0x44")
        assert report[0]["chip_mac"].count(":") == 5 and report[0]["firmware_version"] == "0.1"
        assert all(b["duration_s"] > 0 for b in report)
        with (tmp_path / "poles-report.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [r["device_code"] for r in rows] == CODES and rows[2]["result"] == "fail"
        assert json.loads((tmp_path / "flash1" / "config.json").read_text())["unit"] == 2

        boards[2].set("sht3x.absent", 0)  # the cable is fixed
        second = run(manifest, "--jobs", "2")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "4 passed, 0 failed (1 run now, 3 already passed)" in second.stdout
        report2 = json.loads((tmp_path / "poles-report.json").read_text())["boards"]
        assert all(b["result"] == "pass" for b in report2)
        assert [b["finished_at"] for i, b in enumerate(report2) if i != 2] == [
            b["finished_at"] for i, b in enumerate(report) if i != 2
        ]
        times = [b["duration_s"] for b in report]
        print(f"provision: 4 boards, 2 jobs, per-board seconds {times}")


def test_manifest_problems_name_the_file_line_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "port,board,device_code\n"
        f"/dev/ttyUSB0,pole-env-esp33,{CODES[0]}\n"
        "/dev/ttyUSB1,pole-env-esp32,371600PL000031X\n"
        f",pole-env-esp32,{CODES[0]}\n"
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(bad)
    text = str(err.value)
    assert f"{bad}:2: no board 'pole-env-esp33'" in text
    assert f"{bad}:3: device code '371600PL000031X': check character" in text
    assert f"{bad}:4: device code {CODES[0]} is also on line 2" in text
    assert f"{bad}:4: port is empty" in text
    headless = tmp_path / "headless.csv"
    headless.write_text("port,board\n/dev/ttyUSB0,pole-env-esp32\n")
    result = run(headless)
    assert result.returncode == 1 and "no column device_code" in result.stderr


def test_manifest_as_excel_writes_it_utf8_with_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    manifest = tmp_path / "poles.csv"
    text = (
        f"port,board,device_code,site\r\n/dev/ttyUSB0,pole-env-esp32,{CODES[0]},Hauptstraße 1\r\n"
    )
    manifest.write_bytes(text.encode("utf-8-sig"))  # Excel: Save As "CSV UTF-8"
    rows = read_manifest(manifest)
    assert [(r.line, r.port, r.device_code, r.site) for r in rows] == [
        (2, "/dev/ttyUSB0", CODES[0], "Hauptstraße 1")
    ]


def test_manifest_in_another_encoding_says_which_line_and_how_to_save_it(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.csv"  # Excel's plain "CSV" on a Western European PC
    latin1.write_bytes(
        f"port,board,device_code,site\n/dev/ttyUSB0,pole-env-esp32,{CODES[0]},Main St\n"
        f"/dev/ttyUSB1,pole-env-esp32,{CODES[1]},Hauptstraße 1\n".encode("cp1252")
    )
    result = run(latin1)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        f"Error: {latin1}:3: byte 0xdf is not UTF-8 (the file is in another encoding, e.g. "
        'Latin-1 or Windows-1252); save it from Excel as "CSV UTF-8 (Comma delimited)", or as '
        "UTF-8 in your editor"
    )
    utf16 = tmp_path / "utf16.csv"  # Excel's "Unicode Text"
    utf16.write_bytes(
        f"port,board,device_code\n/dev/ttyUSB0,pole-env-esp32,{CODES[0]}\n".encode("utf-16")
    )
    with pytest.raises(ManifestError, match='this is UTF-16 .* save it from Excel as "CSV UTF-8'):
        read_manifest(utf16)


def test_manifest_with_an_unclosed_quote_is_a_csv_syntax_error_at_its_line(tmp_path: Path) -> None:
    manifest = tmp_path / "poles.csv"
    manifest.write_text(
        "port,board,device_code,site\n"
        f"/dev/ttyUSB0,pole-env-esp32,{CODES[0]},Main St 1\n"
        f'/dev/ttyUSB1,pole-env-esp32,{CODES[1]},"Main St 3\n'
        f"/dev/ttyUSB2,pole-env-esp32,{CODES[2]},Main St 5\n"
    )
    result = run(manifest)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f'Error: {manifest}:3: CSV syntax error: the quote (") opened on line 3 is never '
        "closed; close it or remove it"
    )
    stray = tmp_path / "stray.csv"
    stray.write_text(f'port,board,device_code\n/dev/ttyUSB0,"pole"-env-esp32,{CODES[0]}\n')
    with pytest.raises(ManifestError, match=f"{stray}:2: CSV syntax error: ',' expected after"):
        read_manifest(stray)


def test_manifest_rows_keep_their_line_numbers_past_a_quoted_line_break(tmp_path: Path) -> None:
    manifest = tmp_path / "poles.csv"
    manifest.write_text(
        "port,board,device_code,site\n"
        f'/dev/ttyUSB0,pole-env-esp32,{CODES[0]},"Main St 1\nback door"\n'
        f"/dev/ttyUSB1,pole-env-esp33,{CODES[1]},Main St 3\n"
        f"/dev/ttyUSB2,pole-env-esp32,{CODES[2]},Main St 5,extra\n"
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert str(err.value).splitlines() == [
        f"{manifest}:5: 5 fields but the header has 4: put a value that holds a comma in "
        'quotes ("Main St, 1")'
    ]
    manifest.write_text(manifest.read_text().replace(",extra", ""))
    with pytest.raises(ManifestError, match=f"{manifest}:4: no board 'pole-env-esp33'"):
        read_manifest(manifest)


def test_a_row_with_an_image_is_flashed_then_deployed(tmp_path: Path) -> None:
    from polekit.hil.rom import make_app_image

    image = tmp_path / "ESP32_GENERIC.bin"
    make_app_image(str(image), os.urandom(32 * 1024))
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs", bootloader=True) as board:
        manifest = tmp_path / "one.csv"
        manifest.write_text(
            f"port,board,device_code,image\n{board.repl},pole-env-esp32,{CODES[0]},{image}\n"
        )
        result = run(manifest)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads((tmp_path / "one-report.json").read_text())["boards"][0]
        assert report["result"] == "pass" and report["micropython"] == "1.27.0"
        data = image.read_bytes()
        assert board.read_spi_flash(0x1000, len(data)) == data
        assert (tmp_path / "fs" / "main.py").is_file()  # deployed onto the freshly booted board


def test_next_board_plugged_in_takes_each_new_port_in_turn(tmp_path: Path) -> None:
    from polekit.firmware.deploy.provision import provision

    manifest = tmp_path / "bench.csv"
    manifest.write_text(
        "port,board,device_code\n" + "".join(f"next,pole-env-esp32,{code}\n" for code in CODES[:2])
    )
    boards: list[EmulatedBoard] = []

    def ports() -> set[str]:  # the USB ports present: boards appear as the engineer plugs them
        return {b.repl for b in boards}

    def engineer() -> None:
        for i in range(2):
            time.sleep(1.0)
            boards.append(EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / f"fs{i}").start())

    steps: list[tuple[str, str]] = []
    hands = threading.Thread(target=engineer)
    hands.start()
    try:
        results, ran, _ = provision(
            manifest,
            jobs=2,
            step=lambda row, what, done, total: steps.append((row.device_code, what)),
            list_ports=ports,
            plug_timeout_s=30,
        )
    finally:
        hands.join()
        for b in boards:
            b.stop()
    assert ran == 2 and [r["result"] for r in results] == ["pass", "pass"], results
    assert [r["port"] for r in results] == [b.repl for b in boards]
    assert (CODES[0], "plug in") in steps and (CODES[1], "plug in") in steps


def test_nobody_plugs_a_board_in_and_the_row_fails_with_the_reason(tmp_path: Path) -> None:
    from polekit.firmware.deploy.provision import provision

    manifest = tmp_path / "bench.csv"
    manifest.write_text(f"port,board,device_code\nnext,pole-env-esp32,{CODES[0]}\n")
    results, _, _ = provision(manifest, list_ports=set, plug_timeout_s=1)
    assert results[0]["result"] == "fail"
    assert results[0]["error"] == "no new board was plugged in within 1 s"


def test_ctrl_c_stops_a_batch_at_once_and_the_same_command_finishes_it(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        boards = [
            stack.enter_context(EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / f"flash{i}"))
            for i in range(3)
        ]
        manifest = tmp_path / "poles.csv"
        manifest.write_text(
            "port,board,device_code\n"
            + "".join(f"{b.repl},pole-env-esp32,{c}\n" for b, c in zip(boards, CODES, strict=False))
        )
        args = ["provision", "-m", str(manifest), "--jobs", "2"]
        term = Terminal(*args)
        try:
            term.wait_for(r"copy ", timeout_s=120)  # a board is being written to
            pressed = time.monotonic()
            term.type(b"\x03")  # Ctrl-C at the terminal: SIGINT for the batch
            code = term.wait(timeout_s=30)
            took = time.monotonic() - pressed
        finally:
            term.close()
        text = term.text()
        print(f"stopped {took:.2f} s after Ctrl-C")
        assert code == 130, text
        assert took < 2.5, f"stopped {took:.1f} s after Ctrl-C"
        assert "Traceback" not in text
        summary = text.split("Stopped (Ctrl-C): ", 1)[1]
        assert re.search(r"finished in this run.*, \d cut off mid-way \(.+ in \w+", summary)
        assert re.search(r", 1 not started\. Report: ", summary), summary
        resume = text.split("To resume, run: ", 1)[1].splitlines()[0]
        assert shlex.split(resume) == ["polekit", *args]
        again = polekit(*shlex.split(resume)[1:], timeout=300)  # the resume finishes the batch
        assert again.returncode == 0, again.stdout + again.stderr
        assert "3 passed, 0 failed" in again.stdout


def test_settings_and_images_are_checked_before_any_board_is_touched(tmp_path: Path) -> None:
    from polekit.hil.rom import make_app_image

    good = tmp_path / "ESP32_GENERIC.bin"
    make_app_image(str(good), os.urandom(4096))
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image\n")
    manifest = tmp_path / "street.csv"
    manifest.write_text(
        "port,board,device_code,image,config.unti,config.unit,config.advert_s\n"
        f"/dev/ttyUSB0,pole-env-esp32,{CODES[0]},{good},3,,\n"
        f"/dev/ttyUSB1,pole-env-esp32,{CODES[1]},{tmp_path / 'missing.bin'},,300,\n"
        f"/dev/ttyUSB2,pole-env-esp32,{CODES[2]},{junk},,2,\n"
        f"/dev/ttyUSB3,community-sos-esp32c3,{identity.make('371600', 'SO', 1)},{good},,,x\n"
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    lines = str(err.value).splitlines()
    assert lines == [
        f"{manifest}:2: config.unti: pole-env-esp32 has no setting 'unti'; did you mean "
        "'unit'? Its settings: baudrate, board, device_code, lamp_default, ota_trial_s, report, "
        "report_s, sample_ms, tilt_hysteresis, tilt_ms, tilt_threshold, unit, watchdog_ms "
        "(docs/firmware.md)",
        f"{manifest}:3: config.unit: unit = 300 must be a number 1..247",
        f"{manifest}:3: image {tmp_path / 'missing.bin'}: no such file. Get MicroPython for "
        "ESP32 on a machine with internet: https://micropython.org/download/ESP32_GENERIC/ "
        "(the .bin file, v1.22 or later), copy it to this laptop and give its path in the "
        "image column.",
        f"{manifest}:4: image {junk}: not an ESP firmware image (it starts 6e6f7420, an image "
        "starts e9). Get MicroPython for ESP32 on a machine with internet: "
        "https://micropython.org/download/ESP32_GENERIC/ (the .bin file, v1.22 or later), "
        "copy it to this laptop and give its path in the image column.",
        f"{manifest}:5: config.advert_s: advert_s = 'x' must be a number 1..3600",
        f"{manifest}:5: image {good}: this image is for ESP32, but community-sos-esp32c3 is an "
        "ESP32C3. Get MicroPython for ESP32C3 on a machine with internet: "
        "https://micropython.org/download/ESP32_GENERIC_C3/ (the .bin file, v1.22 or later), "
        "copy it to this laptop and give its path in the image column.",
    ]
    result = run(manifest)  # the command stops there: no report, no board
    assert result.returncode == 1 and "did you mean 'unit'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "street-report.json").exists()
