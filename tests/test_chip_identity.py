"""Each emulated board is a chip of its own: its unique id is its base MAC, and the ROM
bootloader (read by the real esptool), the VM's machine/network/bluetooth modules and the
virtual air all derive their addresses from it as ESP-IDF does (esp_mac: the last octet plus
0 for the Wi-Fi station, 1 for the soft-AP, 2 for Bluetooth, wrapping without a carry)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from polekit.hil.chip_id import interface_mac
from polekit.hil.emulator import EmulatedBoard

from boardkit import board_exec, polekit

ESPTOOL = str(Path(sys.executable).with_name("esptool"))
# what the firmware can ask: machine.unique_id(), the station's and soft-AP's MAC, the BLE
# address (the radio must be on, as on the chip)
ADDRESSES = (
    "import machine, network, bluetooth\n"
    "ble = bluetooth.BLE()\n"
    "ble.active(True)\n"
    "h = lambda b: ':'.join('%02X' % x for x in b)\n"
    "print(h(machine.unique_id()), h(network.WLAN(network.STA_IF).config('mac')),"
    " h(network.WLAN(network.AP_IF).config('mac')), h(ble.config('mac')[1]))"
)


def vm_addresses(board: EmulatedBoard) -> list[str]:
    return board_exec(board, ADDRESSES).split()


def test_the_vm_and_the_air_derive_every_address_from_the_unique_id(tmp_path: Path) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "a", unique_id="24:0A:C4:12:34:56") as a:
        assert vm_addresses(a) == [
            "24:0A:C4:12:34:56",  # machine.unique_id(): the eFuse base MAC
            "24:0A:C4:12:34:56",  # the Wi-Fi station uses it as it is
            "24:0A:C4:12:34:57",  # the soft-AP: + 1
            "24:0A:C4:12:34:58",  # Bluetooth: + 2
        ]
        assert a.base_mac == "24:0A:C4:12:34:56" and a.mac == "24:0A:C4:12:34:58"
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "b", unique_id="240ac4123457") as b:
        other = vm_addresses(b)
        assert other[0] == "24:0A:C4:12:34:57" and other[3] == b.mac == "24:0A:C4:12:34:59"
    # the same id on another flash is the same chip
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "c", unique_id="240ac4123456") as c:
        assert vm_addresses(c)[0] == "24:0A:C4:12:34:56" and c.mac == a.mac


def test_the_bluetooth_address_wraps_in_its_last_octet_without_a_carry() -> None:
    # ESP-IDF components/esp_hw_support/mac_addr.c: mac[5] += MAC_ADDR_UNIVERSE_BT_OFFSET on
    # a uint8_t (2 with four universal addresses, the default on ESP32, -C3 and -S3)
    assert interface_mac(bytes.fromhex("240ac41234ff"), "bt") == bytes.fromhex("240ac4123401")
    assert interface_mac(bytes.fromhex("240ac41234fe"), "wifi_ap") == bytes.fromhex("240ac41234ff")


def test_boards_without_an_id_have_macs_of_their_own_kept_with_their_flash(
    tmp_path: Path,
) -> None:
    macs = []
    for flash in ("a", "b", "a"):
        with EmulatedBoard("community-sos-esp32c3", fs_dir=tmp_path / flash) as board:
            base, _sta, _ap, bt = vm_addresses(board)
            assert base == board.base_mac and bt == board.mac
            macs.append(base)
    assert macs[0] != macs[1]  # two boards of one kind on one air: two addresses
    assert macs[2] == macs[0]  # the same flash folder is the same chip, run after run
    assert int(macs[0][:2], 16) & 0x03 == 0x02  # locally administered, unicast
    temporary = [EmulatedBoard("community-sos-esp32c3") for _ in range(2)]
    try:
        assert temporary[0].base_mac != temporary[1].base_mac
    finally:
        for board in temporary:
            board.stop()


def test_esptool_reads_the_unique_id_from_the_rom_bootloader(tmp_path: Path) -> None:
    for unique_id in ("24:0A:C4:00:00:01", "02:50:4B:00:00:02"):
        fs = tmp_path / unique_id.replace(":", "")
        with EmulatedBoard("pole-env-esp32", fs_dir=fs, bootloader=True, unique_id=unique_id) as b:
            result = subprocess.run(
                [ESPTOOL, "--port", b.repl, "--before", "no-reset", "--after", "no-reset"]
                + ["--no-stub", "read-mac"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            out = result.stdout + result.stderr
            assert result.returncode == 0, out
            assert re.search(rf"MAC:\s+{unique_id.lower()}\n", out), out


def test_a_unique_id_the_chip_cannot_have_is_refused_in_one_line() -> None:
    for bad, says in (("zz", "12 hex digits"), ("03:00:00:00:00:01", "multicast")):
        result = polekit("emulate", "--bare", "--unique-id", bad)
        assert result.returncode == 2, result.stdout + result.stderr  # click's usage error
        assert says in result.stderr and "Traceback" not in result.stderr, result.stderr
