"""Board definitions load, validate, and say what is wrong when they are wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from polekit import boards
from polekit.cli import main


def test_shipped_boards_load() -> None:
    assert {"pole-env-esp32", "community-sos-esp32c3"} <= set(boards.names())
    pole = boards.load("pole-env-esp32")
    assert pole.chip == "esp32" and pole.firmware_offset == 0x1000 and pole.heap_bytes == 110 * 1024
    assert pole.uart("rs485") is not None and pole.register_map == "pole-env"
    assert {"sht3x", "bh1750", "adxl345", "pms5003", "door", "water", "lamp"} <= set(pole.sensors)
    sos = boards.load("community-sos-esp32c3")
    assert sos.uplink == "ble" and sos.sensors["sos"].type == "button"


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = (Path(str(boards.load("pole-env-esp32").path))).read_text()
    assert old in text
    path = tmp_path / "pole-env-esp32.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ('chip = "esp32"', 'chip = "esp8266"', "board.chip = 'esp8266': one of esp32"),
        ("heap_bytes = 112640", "heap_bytes = 1000", "32768..8388608"),
        ("firmware_offset = 0x1000", "firmware_offset = 0x0", "boots MicroPython from 0x1000"),
        ('register_map = "pole-env"', 'register_map = "pole"', "one of pole-env, sdm120"),
        (
            'bus = "i2c0"\naddress = 0x44',
            'bus = "pms"\naddress = 0x44',
            "a i2c bus of this board (i2c0)",
        ),
        ('type = "sht3x"', 'type = "sht31"', "sensor[0].type = 'sht31'"),
        ('role = "rs485"', 'role = "debug"', "needs a uart bus with role"),
    ],
)
def test_mistakes_name_the_key_and_the_fix(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = _variant(tmp_path, old, new)
    with pytest.raises(boards.BoardError) as err:
        boards.load(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_unknown_board_lists_the_known_ones() -> None:
    with pytest.raises(
        boards.BoardError, match="known boards: community-sos-esp32c3, pole-env-esp32"
    ):
        boards.load("pole-esp32")


def test_boards_cli() -> None:
    listed = CliRunner().invoke(main, ["boards", "list"])
    assert listed.exit_code == 0 and "pole-env-esp32" in listed.output
    shown = CliRunner().invoke(main, ["boards", "show", "pole-env-esp32"])
    assert shown.exit_code == 0 and "sht3x" in shown.output and "0x1000" in shown.output
    # I2C addresses as on the datasheet: SHT3x 0x44, BH1750 0x23, ADXL345 0x53
    for address in ("address=0x44", "address=0x23", "address=0x53"):
        assert address in shown.output, shown.output
    assert "address=68" not in shown.output
    missing = CliRunner().invoke(main, ["boards", "show", "nope"])
    assert missing.exit_code == 2 and "known boards" in missing.output
