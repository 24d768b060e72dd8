"""An emulated chip's identity: its unique id, and the MAC addresses derived from it.

On an ESP32 (and -C3, -S3) the unique id is the base MAC burnt into eFuse: what
``machine.unique_id()`` returns and ``esptool read-mac`` prints. ESP-IDF derives each
interface's address from it by adding an offset to the last octet only, wrapping without a
carry (``esp_read_mac``: ``mac[5] += offset``; four universal addresses, the default on all
three chips): Wi-Fi station +0, soft-AP +1, Bluetooth +2, Ethernet +3.

An emulated board that is not given an id makes one up, locally administered (first octet
0x02: the IEEE's "assigned locally, not by a vendor" bit): an emulated board must never
claim an address from Espressif's blocks (24:0A:C4...), where it could collide with a real
chip on the same network or air, and a 02: address tells a person at a glance that the
device is emulated.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MAC_OFFSETS = {"wifi_sta": 0, "wifi_ap": 1, "bt": 2, "eth": 3}
LOCAL_PREFIX = 0x02  # locally administered, unicast


def parse_unique_id(text: str) -> bytes:
    """The six bytes of a unique id written as 12 hex digits (colons or dashes allowed);
    ValueError saying what is wrong, as ESP-IDF refuses a multicast base MAC."""
    digits = text.replace(":", "").replace("-", "")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ValueError(
            f"unique id {text!r}: give the chip's MAC as 12 hex digits, e.g. 02a1b2c3d4e5"
        )
    if raw[0] & 0x01:
        raise ValueError(
            f"unique id {text!r}: the first octet {raw[0]:02x} is a multicast address, which "
            "no chip has; make it even (e.g. 02)"
        )
    return raw


def default_unique_id(flash_dir: Path | None) -> bytes:
    """A locally administered id of the board's own: the same for the same flash folder (the
    chip is where its flash is, so a board kept with --fs keeps its MAC across runs),
    random for a temporary one."""
    if flash_dir is None:
        tail = os.urandom(5)
    else:
        tail = hashlib.sha256(b"polekit-chip:" + str(flash_dir.resolve()).encode()).digest()[:5]
    return bytes((LOCAL_PREFIX,)) + tail


def interface_mac(unique_id: bytes, interface: str) -> bytes:
    """The MAC ESP-IDF gives ``interface`` (a key of MAC_OFFSETS) on a chip with this id."""
    return unique_id[:5] + bytes(((unique_id[5] + MAC_OFFSETS[interface]) & 0xFF,))


def mac_text(mac: bytes) -> str:
    """A MAC as people and BlueZ write it: ``02:A1:B2:C3:D4:E5``."""
    return ":".join(f"{b:02X}" for b in mac)
