"""Board definitions: what a node is made of, in one TOML file per board.

A board names its chip (and so its flash offsets), its MicroPython heap budget, its pins,
its buses (I2C, UART: the RS-485 line is a UART with role ``rs485``) and the sensors
attached to them. The firmware configures itself from it, the emulated board attaches
virtual peripherals from it, and the field tools flash by it. Definitions are validated
when loaded: errors name the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

CHIPS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
BUS_TYPES = ("i2c", "uart", "spi")
SENSOR_TYPES = {
    # type: (needs a bus of this type or None, keys it needs)
    "sht3x": ("i2c", ("address",)),
    "bh1750": ("i2c", ("address",)),
    "adxl345": ("i2c", ("address",)),
    "pms5003": ("uart", ()),
    "contact": (None, ("pin",)),
    "button": (None, ("pin",)),
    "adc": (None, ("pin",)),
    "lamp": (None, ("pwm_pin", "relay_pin")),
    "loop_4_20": (None, ("pin", "range_m", "shunt_ohm")),
    "rain_gauge": (None, ("pin",)),
    "flow_meter": (None, ("pin", "pulses_per_litre")),
    "cover": ("i2c", ("address", "pin")),
}
UPLINKS = ("modbus", "ble", "mqtt")


class BoardError(ValueError):
    """A board definition is missing or wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class Bus:
    """An I2C, UART or SPI bus of the board; ``params`` holds its pins and settings."""

    name: str
    type: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Sensor:
    """A sensor or actuator attached to the board; ``params`` holds its address/pins."""

    name: str
    type: str
    bus: str | None
    params: dict[str, Any]


@dataclass(frozen=True)
class Board:
    """A validated board definition."""

    name: str
    description: str
    chip: str
    flash_size_mb: int
    heap_bytes: int
    firmware_offset: int
    uplink: str
    register_map: str | None
    pins: dict[str, int]
    buses: dict[str, Bus]
    sensors: dict[str, Sensor]
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def uart(self, role: str) -> Bus | None:
        """The UART with ``role`` (e.g. "rs485"), if the board has one."""
        return next(
            (b for b in self.buses.values() if b.type == "uart" and b.params.get("role") == role),
            None,
        )


def _folder() -> Path:
    return Path(str(resources.files("polekit.boards")))


def names() -> list[str]:
    """The board definitions shipped with polekit."""
    return sorted(p.stem for p in _folder().glob("*.toml"))


def load(name_or_path: str | Path) -> Board:
    """A board by name (``pole-env-esp32``) or by the path of a TOML file; BoardError if
    it does not exist or does not validate."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = _folder() / f"{name_or_path}.toml"
        if not path.is_file():
            raise BoardError(f"no board {name_or_path!r}; known boards: {', '.join(names())}")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BoardError(f"{path}: {exc}") from None
    return _validate(raw, path)


def _need(cond: bool, path: Path, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise BoardError(f"{path}: {key} = {value!r}: {allowed}")


def _validate(raw: dict[str, Any], path: Path) -> Board:
    b = raw.get("board", {})
    name = b.get("name")
    _need(
        isinstance(name, str) and name == path.stem,
        path,
        "board.name",
        name,
        f"must match the file name ({path.stem!r})",
    )
    chip = b.get("chip")
    _need(chip in CHIPS, path, "board.chip", chip, f"one of {', '.join(CHIPS)}")
    heap = b.get("heap_bytes", 112640)
    _need(
        isinstance(heap, int) and 32768 <= heap <= 8 * 1024 * 1024,
        path,
        "board.heap_bytes",
        heap,
        "bytes of MicroPython heap, 32768..8388608",
    )
    offset = b.get("firmware_offset", CHIPS[chip])
    _need(
        offset == CHIPS[chip],
        path,
        "board.firmware_offset",
        offset,
        f"{chip} boots MicroPython from {CHIPS[chip]:#x}",
    )
    uplink = b.get("uplink", "modbus")
    _need(uplink in UPLINKS, path, "board.uplink", uplink, f"one of {', '.join(UPLINKS)}")
    flash = b.get("flash_size_mb", 4)
    _need(flash in (2, 4, 8, 16), path, "board.flash_size_mb", flash, "2, 4, 8 or 16")
    pins = raw.get("pins", {})
    _need(
        isinstance(pins, dict) and all(isinstance(v, int) and 0 <= v <= 48 for v in pins.values()),
        path,
        "pins",
        pins,
        "a table of name = GPIO number (0..48)",
    )
    buses: dict[str, Bus] = {}
    for i, item in enumerate(raw.get("bus", [])):
        key = f"bus[{i}]"
        _need(isinstance(item.get("name"), str), path, f"{key}.name", item.get("name"), "a name")
        _need(
            item.get("type") in BUS_TYPES, path, f"{key}.type", item.get("type"), "i2c, uart or spi"
        )
        _need(item["name"] not in buses, path, f"{key}.name", item["name"], "used twice")
        params = {k: v for k, v in item.items() if k not in ("name", "type")}
        buses[item["name"]] = Bus(item["name"], item["type"], params)
    if uplink == "modbus":
        _need(
            any(b.params.get("role") == "rs485" for b in buses.values()),
            path,
            "bus",
            "(none)",
            'a modbus board needs a uart bus with role = "rs485"',
        )
    sensors: dict[str, Sensor] = {}
    for i, item in enumerate(raw.get("sensor", [])):
        key = f"sensor[{i}]"
        kind = item.get("type")
        _need(kind in SENSOR_TYPES, path, f"{key}.type", kind, f"one of {', '.join(SENSOR_TYPES)}")
        _need(
            isinstance(item.get("name"), str) and item["name"] not in sensors,
            path,
            f"{key}.name",
            item.get("name"),
            "a name not used by another sensor",
        )
        bus_type, needs = SENSOR_TYPES[kind]
        bus = item.get("bus")
        if bus_type:
            same = ", ".join(n for n, x in buses.items() if x.type == bus_type) or "none"
            _need(
                bus in buses and buses[bus].type == bus_type,
                path,
                f"{key}.bus",
                bus,
                f"a {bus_type} bus of this board ({same})",
            )
        for need in needs:
            _need(need in item, path, f"{key}.{need}", None, f"required for a {kind}")
        params = {k: v for k, v in item.items() if k not in ("name", "type", "bus")}
        sensors[item["name"]] = Sensor(item["name"], kind, bus, params)
    regmap = b.get("register_map")
    if regmap is not None:
        from polekit.protocols import modbus

        _need(
            regmap in modbus.map_names(),
            path,
            "board.register_map",
            regmap,
            f"one of {', '.join(modbus.map_names())}",
        )
    config = raw.get("config", {})
    _need(
        isinstance(config, dict),
        path,
        "config",
        config,
        "a table of the node's default settings (see docs/firmware.md)",
    )
    return Board(
        name,
        b.get("description", ""),
        chip,
        flash,
        heap,
        offset,
        uplink,
        regmap,
        dict(pins),
        buses,
        sensors,
        path,
        config,
        raw,
    )
