"""The firmware is type-checked against the ESP32's MicroPython API (tests/chipapi.py).

The reference is MicroPython 1.27's published stubs (micropython-esp32-stubs), corrected from
the C source where they are wrong (tests/chip_overrides/); `make typecheck` runs the check on
firmware/node and protocols/. These tests prove it catches what the chip refuses.
"""

import json
from pathlib import Path

from chipapi import MICROPYTHON, ROOT, STUBS, typecheck

# the community node's advert call before issue 14: resp_data is keyword-only on the chip
# (extmod/modbluetooth.c v1.27.0 line 457, MP_ARG_KW_ONLY), so this raises
# "TypeError: extra positional arguments given" at the first advert
OLD_ADVERT = """
import bluetooth

ble = bluetooth.BLE()
ble.active(True)
ble.gap_advertise(1000000, b"\\x02\\x01\\x06", b"\\x05\\x09pole")
"""


def _check(tmp_path: Path, source: str):
    node = tmp_path / "node"
    node.mkdir()
    (node / "__init__.py").write_text("")
    (node / "adverts.py").write_text(source)
    return typecheck(("node",), cwd=tmp_path, cache_dir=tmp_path / "cache")


def test_firmware_and_protocols_pass_the_chip_type_check():
    result = typecheck()
    assert result.returncode == 0, result.stdout + result.stderr


def test_old_positional_resp_data_fails_the_type_check(tmp_path):
    result = _check(tmp_path, OLD_ADVERT)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Too many positional arguments for "gap_advertise" of "BLE"' in result.stdout
    assert "adverts.py:6:" in result.stdout


def test_keyword_resp_data_and_corrected_stubs_pass(tmp_path):
    # gap_advertise with resp_data by name, and the calls the stub has wrong and
    # tests/chip_overrides/bluetooth.pyi corrects: gatts_notify's conn_handle (line 755),
    # interval_us by name (line 455: no MP_ARG_KW_ONLY, a default of 500000)
    source = OLD_ADVERT.replace('b"\\x05', 'resp_data=b"\\x05')
    source += "ble.gap_advertise(interval_us=None)\nble.gatts_notify(0, 3, b'ok')\n"
    result = _check(tmp_path, source)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_name_the_chip_lacks_fails_the_type_check(tmp_path):
    # the emulator's own modules are not on the chip
    result = _check(tmp_path, "import machine\nimport _board\nmachine.I2C(0).scan_all()\n")
    assert result.returncode == 1
    assert '"_board"' in result.stdout
    assert '"I2C" has no attribute "scan_all"' in result.stdout


def test_stubs_are_pinned_to_the_emulated_boards_micropython():
    port = json.loads((ROOT / "package.json").read_text())["dependencies"]
    version = port["@micropython/micropython-webassembly-pyscript"]
    assert version.rsplit(".", 1)[0] == MICROPYTHON
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, pin in STUBS.items():
        assert pin.startswith(version), (name, pin)
        assert f'"{name}=={pin}"' in pyproject
