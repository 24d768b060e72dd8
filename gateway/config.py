"""The gateway's TOML configuration, validated once at start into typed objects.

Every problem is reported with the file, the key path, the value found and what is
allowed, all problems at once, so an integrator fixes a config in one pass. Unknown keys
are errors too (with a did-you-mean), because a misspelt ``pol_interval`` silently
ignored is a device polled at the wrong rate for months.
"""

from __future__ import annotations

import difflib
import os
import pwd
import tempfile
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from polekit.gateway.ota.settings import OtaConfig, parse_ota
from polekit.gateway.redact import HIDDEN, bindkey_problem, redact_url
from polekit.protocols import devices as library
from polekit.protocols import dlt645, identity, modbus

FORMATS = ("senml+cbor", "senml+json")
BUS_TYPES = ("rtu", "tcp", "rtu-over-tcp", "dtu-server")
RTU_FRAMED = ("rtu", "rtu-over-tcp", "dtu-server")  # serial lines, direct or behind a DTU
PARITIES = ("N", "E", "O")


class ConfigError(ValueError):
    """The configuration has problems; ``problems`` lists them, one line each."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s) in the configuration:\n{lines}")


@dataclass(frozen=True)
class MqttConfig:
    """Where and how to reach the platform's broker."""

    host: str
    port: int
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    username: str | None
    password: str | None = field(repr=False)
    topic_prefix: str
    format: str
    secondary_units: bool
    keepalive_s: int
    url: str = field(repr=False)  # may hold the password: shown_url is what people see

    @property
    def shown_url(self) -> str:
        """The broker URL as logs, ``/health`` and ``gateway check`` show it: no password."""
        return redact_url(self.url)


@dataclass(frozen=True)
class BusConfig:
    """One field bus: a serial RS-485 line (``rtu``) or a Modbus TCP endpoint (``tcp``)."""

    name: str
    type: str
    port: str | None = None
    baudrate: int = 9600
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8
    host: str | None = None
    tcp_port: int = 502
    timeout_s: float = 1.0
    # transactions at once (tcp only: one connection each, since pymodbus's client waits
    # for each answer before it sends the next request); 1 for a gateway fronting RS-485
    max_in_flight: int = 1
    # dtu-server: the registration packet a DTU sends first (its IMEI, say) to be taken as
    # this line; None: the first DTU that connects is
    registration: str | None = None

    @property
    def rtu_framing(self) -> bool:
        """RTU frames (unit, PDU, CRC) on the wire: a serial line, or one behind a DTU."""
        return self.type in RTU_FRAMED

    @property
    def inter_frame_s(self) -> float:
        """The silent interval to leave between transactions (t3.5; none needed on TCP)."""
        return modbus.t35_s(self.baudrate) if self.type == "rtu" else 0.0

    def describe(self) -> str:
        """Where the bus is, for logs and tables."""
        if self.type == "rtu":
            return f"{self.port} {self.baudrate} 8{self.parity}{self.stopbits}"
        if self.type == "dtu-server":
            who = f", DTU {self.registration}" if self.registration else ""
            return f"listening on {self.host}:{self.tcp_port}{who}"
        if self.type == "rtu-over-tcp":
            return f"{self.host}:{self.tcp_port} (RTU over TCP)"
        return f"{self.host}:{self.tcp_port}"


@dataclass(frozen=True)
class DeviceConfig:
    """One field device on a bus: its code, unit id, register map and poll period.
    ``map_name`` is a built-in map's name, a ``[[map]]``'s name, or ``inline``."""

    code: str
    bus: str
    unit: int
    map_name: str
    points: modbus.RegisterMap
    poll_interval_s: float
    # a DL/T 645 meter (``protocol = "dlt645"``) on the same line: its 12-digit address
    # (None: found by the broadcast address query) and the items its data set reads
    protocol: str = "modbus"
    meter_address: str | None = None
    items: tuple[dlt645.Item, ...] = ()


@dataclass(frozen=True)
class BleDeviceConfig:
    """A BLE device (BTHome v2 adverts; our own nodes also take GATT commands)."""

    code: str
    address: str  # MAC, upper case with colons
    bindkey: bytes | None = field(repr=False)  # AES-CCM key for encrypted adverts
    interval_s: float  # expected advert interval; offline after three missed


@dataclass(frozen=True)
class BleConfig:
    """Where the gateway listens: a BlueZ adapter, or the virtual air (tests, the demo)."""

    adapter: str = "hci0"
    air: str | None = None  # the virtual air's socket: hil/air.py


@dataclass(frozen=True)
class StatusConfig:
    """The local HTTP status endpoint (/health, /metrics)."""

    host: str = "127.0.0.1"
    port: int = 8463
    enabled: bool = True


@dataclass(frozen=True)
class CommandsConfig:
    """Limits on the command path (``[commands]``): the biggest payload taken, and a token
    bucket per device (``rate_per_s`` commands a second on average, ``burst`` at once), so
    a flood from the platform cannot hammer a device or wear out its flash."""

    max_bytes: int = 64 * 1024
    rate_per_s: float = 5.0
    burst: int = 10


_COMMANDS_KEYS = ("max_bytes", "rate", "burst")


def _commands(r: _Reader, c: dict[str, Any]) -> CommandsConfig:
    r.unknown_keys(c, "commands", _COMMANDS_KEYS)
    default = CommandsConfig()
    return CommandsConfig(
        max_bytes=r.get(
            c,
            "commands",
            "max_bytes",
            int,
            default.max_bytes,
            check=lambda v: 256 <= v <= 16 * 1024 * 1024,
            allowed="bytes, 256..16777216 (a command payload; results echo its id)",
        ),
        rate_per_s=float(
            r.get(
                c,
                "commands",
                "rate",
                (int, float),
                default.rate_per_s,
                check=lambda v: 0.01 <= v <= 10_000,
                allowed="commands a second per device, 0.01..10000",
            )
        ),
        burst=r.get(
            c,
            "commands",
            "burst",
            int,
            default.burst,
            check=lambda v: 1 <= v <= 100_000,
            allowed="commands a device may take at once, 1..100000",
        ),
    )


@dataclass(frozen=True)
class Config:
    """A whole, validated gateway configuration."""

    path: Path
    gateway_id: str
    data_dir: Path
    queue_max_bytes: int
    mqtt: MqttConfig
    buses: dict[str, BusConfig]
    devices: list[DeviceConfig]
    status: StatusConfig = field(default_factory=StatusConfig)
    ble_devices: list[BleDeviceConfig] = field(default_factory=list)
    ble: BleConfig = field(default_factory=BleConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    # the northbound platforms ([platform] / [[platform]]); empty: SenML on [mqtt]
    platforms: tuple[Any, ...] = ()
    ota: OtaConfig = field(default_factory=OtaConfig)  # [ota]: over-the-air updates

    @property
    def queue_path(self) -> Path:
        """The durable queue's SQLite file, in ``data_dir``."""
        return self.data_dir / "queue.sqlite3"

    def topic(self, kind: str, device_code: str | None = None) -> str:
        """``{prefix}/{gateway id}/{kind}[/{device code}]``: the one place topics are made."""
        base = f"{self.mqtt.topic_prefix}/{self.gateway_id}/{kind}"
        return f"{base}/{device_code}" if device_code else base


class _Reader:
    """Walks the parsed TOML, collecting problems instead of stopping at the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, key: str, value: Any, allowed: str, secret: bool = False) -> None:
        # a secret's value is never shown (config errors end up in logs and tickets)
        shown = "(missing)" if value is _MISSING else HIDDEN if secret else repr(value)
        self.problems.append(f"{key} = {shown}: {allowed}")

    def unknown_keys(self, table: dict[str, Any], where: str, known: tuple[str, ...]) -> None:
        for key in table:
            if where and key in _TOP_KEYS and key not in known:
                # `device = [...]` below a [table] header is a key of that table in TOML
                form = f"[[{key}]] tables" if key in _ARRAYS else f"a [{key}] table"
                self.problems.append(
                    f"{where}.{key}: unknown key; in TOML a key belongs to the [table] above "
                    f"it: move `{key} = ...` above the first [table] header, or write {form}"
                )
            elif key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(known)}"
                self.problems.append(f"{where}.{key}: unknown key; {hint}")

    def get(
        self,
        table: dict[str, Any],
        where: str,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        required: bool = False,
        check: Any = None,
        allowed: str = "",
        secret: bool = False,
    ) -> Any:
        value = table.get(key, _MISSING)
        full = f"{where}.{key}" if where else key
        if value is _MISSING:
            if required:
                self.problem(full, value, f"required; {allowed}".rstrip("; "))
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = _kind_words(kinds)
            self.problem(full, value, f"must be {names}{'; ' + allowed if allowed else ''}", secret)
            return default
        if check is not None and not check(value):
            self.problem(full, value, allowed, secret)
            return default
        return value


_MISSING = object()

# A value's kind as the person editing the TOML file calls it (not Python's type names)
_KIND_WORDS = {str: 'text in quotes ("...")', int: "a whole number", bool: "true or false"}


def _kind_words(kinds: tuple[type, ...]) -> str:
    if float in kinds:
        return "a number"
    return " or ".join(_KIND_WORDS[k] for k in kinds)


_TOP_KEYS = (
    "gateway",
    "mqtt",
    "bus",
    "map",
    "device",
    "status",
    "ble",
    "commands",
    "platform",
    "ota",
)
_ARRAYS = ("bus", "map", "device")  # [[...]] arrays of tables
_GATEWAY_KEYS = ("id", "data_dir", "queue_max_mb")
_MQTT_KEYS = (
    "url",
    "topic_prefix",
    "format",
    "username",
    "password",
    "ca_file",
    "cert_file",
    "key_file",
    "keepalive",
    "secondary_units",
)
_BUS_KEYS = (
    "name",
    "type",
    "port",
    "baudrate",
    "parity",
    "stopbits",
    "bytesize",
    "host",
    "timeout",
    "max_in_flight",
    "listen",
    "registration",
)
MIN_POLL_INTERVAL_S = 0.01  # the bus's schedule holds 10 ms (tests/test_gateway_modbus_tcp.py)
MAX_IN_FLIGHT = 32  # connections to one endpoint; Modbus TCP gateways seldom take more
_MAP_KEYS = ("name", "point")
_DEVICE_KEYS = (
    "code",
    "bus",
    "unit",
    "map",
    "point",
    "poll_interval",
    "transport",
    "protocol",
    "address",
)
METER_BAUDRATE = 2400  # DL/T 645-2007 section 4.1: 2400 baud, 8E1, unless the meter is set
DLT645_SETS = tuple(n for n in library.names() if library.protocol(n) == "dlt645")
_BLE_DEVICE_KEYS = ("code", "transport", "address", "bindkey", "interval")
_BLE_KEYS = ("adapter", "air")
_POINT_KEYS = (
    "name",
    "address",
    "table",
    "type",
    "word_order",
    "scale",
    "unit",
    "writable",
    "min",
    "max",
)
_STATUS_KEYS = ("listen", "port", "enabled")


def _id_ok(value: str) -> bool:
    return bool(value) and all(c.isalnum() or c in "-_." for c in value)


def load_config(path: Path | str) -> Config:
    """Read and validate the TOML file at ``path``; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            path, ["file not found (give the path of the gateway's TOML config)"]
        ) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read it: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8-sig")  # Windows editors may start it with a BOM
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path,
            [
                f"line {line}: byte {data[exc.start]:#04x} is not UTF-8 text; TOML files are "
                "UTF-8: save it as UTF-8 in your editor"
            ],
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except ValueError as exc:  # a value TOML allows but Python will not read (a 4,301-digit int)
        raise ConfigError(path, [f"a value cannot be read: {exc}"]) from None
    return parse_config(raw, path)


_SQLITE_SUFFIXES = ("", "-wal", "-shm")  # the queue file, its write-ahead log, its index


def data_dir_problem(config: Config) -> str | None:
    """Why this user could not keep the gateway's queue in ``gateway.data_dir`` (None when
    it can), as one line with the fix. A permission problem is found by ``gateway check``
    at install time instead of stopping ``gateway run``; the check really tries (a
    temporary file or folder, removed at once), because a permission bit does not tell
    the whole story (root, read-only mounts, /proc)."""
    data_dir = config.data_dir
    user = _user()
    other = f"set gateway.data_dir to a folder {user} can write"
    if data_dir.is_dir():
        # the folder (SQLite makes files beside the queue), then the queue's own files
        files = [config.queue_path.with_name(config.queue_path.name + s) for s in _SQLITE_SUFFIXES]
        for target in [data_dir, *(f for f in files if f.exists())]:
            try:
                if target == data_dir:
                    tempfile.TemporaryFile(dir=data_dir).close()
                else:
                    target.open("r+b").close()
            except OSError as exc:
                return (
                    f"gateway.data_dir: user {user} cannot write {target} ({exc.strerror}): "
                    f"give it to {user} with `sudo chown -R {user} {data_dir}`, or {other}"
                )
        return None
    if os.path.lexists(data_dir):
        return f"gateway.data_dir = '{data_dir}' is a file, not a folder; {other}"
    existing = data_dir.parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return (
            f"gateway.data_dir = '{data_dir}' cannot be made: {existing} is a file, not a "
            f"folder; {other}"
        )
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".polekit-check-"))
    except OSError as exc:
        return (
            f"gateway.data_dir = '{data_dir}' does not exist and user {user} cannot create "
            f"it in {existing} ({exc.strerror}): create it with `sudo install -d -o {user} "
            f"{data_dir}`, or {other}"
        )
    return None


def config_mode_problem(path: Path) -> str | None:
    """Why the config file at ``path`` is readable by people it should not be (None when
    it is not): it holds the broker password and the BLE bind keys. Readable by others
    is always too much; readable by its group is fine only when the group is this
    user's own (the service's group, as the documented install sets it)."""
    try:
        st = path.stat()
    except OSError:
        return None  # load_config has said why it cannot be read
    mode = st.st_mode & 0o777
    group_reads = bool(mode & 0o040) and st.st_gid != os.getegid()
    if not (mode & 0o004 or group_reads):
        return None
    who = "every local user" if mode & 0o004 else "its group"
    return (
        f"{path} is readable by {who} (mode {mode:04o}) and holds the broker password and "
        f"bind keys: `chmod 600 {path}` (or `chmod 640` with the service's group)"
    )


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no passwd entry (containers)
        return str(os.geteuid())


def parse_config(raw: dict[str, Any], path: Path | str = "<config>") -> Config:
    """Validate an already-parsed TOML document (see ``load_config``)."""
    path = Path(path)
    r = _Reader(path)
    r.unknown_keys(raw, "", _TOP_KEYS)
    gw = _table(r, raw, "gateway")
    r.unknown_keys(gw, "gateway", _GATEWAY_KEYS)
    gateway_id = r.get(
        gw,
        "gateway",
        "id",
        str,
        "",
        required=True,
        check=_id_ok,
        allowed="letters, digits, '-', '_' or '.' (it goes into MQTT topics)",
    )
    data_dir = Path(r.get(gw, "gateway", "data_dir", str, "/var/lib/polekit"))
    queue_mb = r.get(
        gw,
        "gateway",
        "queue_max_mb",
        (int, float),
        256,
        check=lambda v: 1 <= v <= 1_000_000,
        allowed="megabytes, 1..1000000",
    )

    # every [mqtt] key has a default (a broker on this machine), so the table may be left out
    mqtt = _mqtt(r, _table(r, raw, "mqtt", required=False), path.parent)
    buses = _buses(r, raw.get("bus", []))
    maps = _user_maps(r, raw.get("map", []))
    modbus_items, ble_items = _split_devices(r, raw.get("device", []))
    devices = _devices(r, modbus_items, buses, maps)
    ble_devices = _ble_devices(r, ble_items, {d.code for d in devices})
    bt = _table(r, raw, "ble", required=False)
    r.unknown_keys(bt, "ble", _BLE_KEYS)
    ble = BleConfig(
        adapter=r.get(bt, "ble", "adapter", str, "hci0"),
        air=r.get(bt, "ble", "air", str, None),
    )
    st = _table(r, raw, "status", required=False)
    r.unknown_keys(st, "status", _STATUS_KEYS)
    status = StatusConfig(
        host=r.get(st, "status", "listen", str, "127.0.0.1"),
        port=r.get(
            st,
            "status",
            "port",
            int,
            8463,
            check=lambda v: 0 <= v <= 65535,
            allowed="a TCP port 0..65535 (0 = any free port)",
        ),
        enabled=r.get(st, "status", "enabled", bool, True),
    )
    commands = _commands(r, _table(r, raw, "commands", required=False))
    from polekit.gateway.platforms.settings import parse_platforms  # it imports this module

    platforms = parse_platforms(raw.get("platform"), mqtt, path.parent, r.problems.append)
    ota = parse_ota(r, _table(r, raw, "ota", required=False), path.parent)
    buses = _meter_lines(raw.get("bus", []), buses, devices)
    if r.problems:
        raise ConfigError(path, r.problems)
    return Config(
        path,
        gateway_id,
        data_dir,
        int(queue_mb * 1024 * 1024),
        mqtt,
        buses,
        devices,
        status,
        ble_devices,
        ble,
        commands,
        platforms,
        ota,
    )


def _meter_lines(
    items: Any, buses: dict[str, BusConfig], devices: list[DeviceConfig]
) -> dict[str, BusConfig]:
    # a serial line with only DL/T 645 meters on it runs at the meters' 2400 baud unless
    # the [[bus]] says otherwise (a line shared with Modbus devices keeps 9600: set it)
    given = {  # (a [[bus]] list or name of the wrong type was reported as a problem already)
        b["name"]
        for b in (items if isinstance(items, list) else [])
        if isinstance(b, dict) and "baudrate" in b and isinstance(b.get("name"), str)
    }
    out = dict(buses)
    for name, bus in buses.items():
        on = [d for d in devices if d.bus == name]
        if bus.type == "rtu" and on and name not in given:
            if all(d.protocol == "dlt645" for d in on):
                out[name] = replace(bus, baudrate=METER_BAUDRATE)
    return out


def _table(r: _Reader, raw: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    value = raw.get(name, _MISSING)
    if value is _MISSING:
        if required:
            r.problem(f"[{name}]", value, "this table is required")
        return {}
    if not isinstance(value, dict):
        r.problem(name, value, "must be a table ([" + name + "])")
        return {}
    return value


def _mqtt(r: _Reader, m: dict[str, Any], base: Path) -> MqttConfig:
    r.unknown_keys(m, "mqtt", _MQTT_KEYS)
    url = r.get(m, "mqtt", "url", str, "mqtt://127.0.0.1:1883")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. mqtt://[zz]: brackets that hold no IPv6 address
        r.problem("mqtt.url", redact_url(url), "must look like mqtt://host:1883 (IPv6: [::1])")
        parts = urlsplit("mqtt://127.0.0.1")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        r.problem(
            "mqtt.url", redact_url(url), "must look like mqtt://host:1883 or mqtts://host:8883"
        )
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        r.problem("mqtt.url", redact_url(url), "the port must be a number 1..65535")
        port = 1883

    def file_key(key: str) -> Path | None:
        value = r.get(m, "mqtt", key, str)
        if value is None:
            return None
        p = (base / value) if not Path(value).is_absolute() else Path(value)
        try:
            found = p.is_file()
        except OSError as exc:  # a name over 255 characters, a path the user may not search
            r.problem(f"mqtt.{key}", value[:80], f"cannot be looked at: {exc.strerror}")
            return p
        if not found:
            r.problem(f"mqtt.{key}", value, f"no such file ({p})")
        return p

    ca, cert, key = file_key("ca_file"), file_key("cert_file"), file_key("key_file")
    if not tls and parts.scheme == "mqtt":
        # TLS files with a clear-text URL would be ignored, and the password sent in clear
        for name in ("ca_file", "cert_file", "key_file"):
            if name in m:
                r.problem(
                    f"mqtt.{name}",
                    m[name],
                    f"TLS is set up but mqtt.url = '{redact_url(url)}' is clear text (the "
                    "password would travel unencrypted): use mqtts://host:8883",
                )
    if (cert is None) != (key is None):
        r.problem(
            "mqtt.cert_file/key_file",
            str(cert or key),
            "give both for client certificates, or neither",
        )
    prefix = r.get(
        m,
        "mqtt",
        "topic_prefix",
        str,
        "polekit/v1",
        check=lambda v: v and not any(c in v for c in "#+") and not v.endswith("/"),
        allowed="a topic path without '+', '#' or a trailing '/'",
    )
    return MqttConfig(
        host=parts.hostname or "127.0.0.1",
        port=port,
        tls=tls,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        username=r.get(m, "mqtt", "username", str) or parts.username,
        password=r.get(m, "mqtt", "password", str, secret=True) or parts.password,
        topic_prefix=prefix,
        format=r.get(
            m,
            "mqtt",
            "format",
            str,
            "senml+cbor",
            check=lambda v: v in FORMATS,
            allowed=" or ".join(FORMATS),
        ),
        secondary_units=r.get(m, "mqtt", "secondary_units", bool, False),
        keepalive_s=r.get(
            m,
            "mqtt",
            "keepalive",
            int,
            30,
            check=lambda v: 5 <= v <= 3600,
            allowed="seconds, 5..3600",
        ),
        url=url,
    )


def _array_of_tables(r: _Reader, items: Any, key: str) -> list[tuple[int, str, dict[str, Any]]]:
    # [[key]] entries as (index, key path, table); anything else is a problem, not a crash
    if not isinstance(items, list):
        r.problem(key, items, f"must be an array of tables ([[{key}]])")
        return []
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            out.append((i, f"{key}[{i}]", item))
        else:
            r.problem(f"{key}[{i}]", item, f"must be a table ([[{key}]])")
    return out


def _buses(r: _Reader, items: Any) -> dict[str, BusConfig]:
    buses: dict[str, BusConfig] = {}
    for i, where, b in _array_of_tables(r, items, "bus"):
        r.unknown_keys(b, where, _BUS_KEYS)
        name = r.get(
            b,
            where,
            "name",
            str,
            f"bus{i}",
            required=True,
            check=_id_ok,
            allowed="a short name like cabinet-485",
        )
        if name in buses:
            r.problem(f"{where}.name", name, "another bus already has this name")
        kind = r.get(
            b,
            where,
            "type",
            str,
            "rtu",
            required=True,
            check=lambda v: v in BUS_TYPES,
            allowed="rtu (serial RS-485), tcp (Modbus TCP), rtu-over-tcp (RTU frames to a "
            "DTU or serial server) or dtu-server (DTUs connect in to the gateway)",
        )
        timeout = r.get(
            b,
            where,
            "timeout",
            (int, float),
            1.0,
            check=lambda v: 0.05 <= v <= 30,
            allowed="seconds, 0.05..30",
        )
        in_flight = r.get(
            b,
            where,
            "max_in_flight",
            int,
            1,
            check=lambda v: 1 <= v <= MAX_IN_FLIGHT,
            allowed=f"transactions at once on this endpoint, 1..{MAX_IN_FLIGHT} (one TCP "
            "connection each)",
        )
        if kind in RTU_FRAMED and in_flight > 1:
            r.problem(
                f"{where}.max_in_flight",
                in_flight,
                f"an {kind} bus carries one transaction at a time (RS-485 is half duplex, "
                "behind a DTU too): remove max_in_flight from this [[bus]] (it is for type = "
                '"tcp" endpoints)',
            )
            in_flight = 1
        for key, only in (("listen", "dtu-server"), ("registration", "dtu-server")):
            if key in b and kind != only:
                r.problem(f"{where}.{key}", b[key], f'only a type = "{only}" bus has {key}')
        if kind == "rtu":
            port = r.get(
                b,
                where,
                "port",
                str,
                None,
                required=True,
                allowed="the serial device, e.g. /dev/ttyUSB0",
            )
            bus = BusConfig(
                name,
                kind,
                port=port,
                baudrate=r.get(
                    b,
                    where,
                    "baudrate",
                    int,
                    9600,
                    check=lambda v: v in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200),
                    allowed="1200, 2400, 4800, 9600, 19200, 38400, 57600 or 115200",
                ),
                parity=r.get(
                    b,
                    where,
                    "parity",
                    str,
                    "E",
                    check=lambda v: v in PARITIES,
                    allowed="N, E or O (Modbus default: E)",
                ),
                stopbits=r.get(
                    b, where, "stopbits", int, None, check=lambda v: v in (1, 2), allowed="1 or 2"
                )
                or (2 if b.get("parity") == "N" else 1),
                bytesize=8,
                timeout_s=timeout,
                max_in_flight=in_flight,
            )
            if "bytesize" in b and b["bytesize"] != 8:
                r.problem(f"{where}.bytesize", b["bytesize"], "Modbus RTU uses 8 data bits")
        elif kind == "dtu-server":
            bus = BusConfig(
                name,
                kind,
                host=r.get(
                    b,
                    where,
                    "listen",
                    str,
                    "0.0.0.0",
                    allowed="the address to listen on for DTUs, e.g. 0.0.0.0",
                ),
                tcp_port=r.get(
                    b,
                    where,
                    "port",
                    int,
                    None,
                    required=True,
                    check=lambda v: 0 <= v <= 65535,
                    allowed="the TCP port DTUs are set to connect to, 1..65535 (0: any, tests)",
                ),
                timeout_s=timeout,
                registration=r.get(
                    b,
                    where,
                    "registration",
                    str,
                    None,
                    check=lambda v: 0 < len(v) <= 64,
                    allowed="the DTU's registration packet as text (its IMEI or ID), 1..64 "
                    "characters",
                ),
            )
        else:
            host = r.get(b, where, "host", str, None, required=True, allowed="the device's address")
            tcp_port = r.get(
                b,
                where,
                "port",
                int,
                502,
                check=lambda v: 1 <= v <= 65535,
                allowed="a TCP port 1..65535 (Modbus TCP: 502)",
            )
            bus = BusConfig(
                name,
                kind,
                host=host,
                tcp_port=tcp_port,
                timeout_s=timeout,
                max_in_flight=in_flight,
            )
        buses[name] = bus
    return buses


def _inline_points(
    r: _Reader, items: Any, where: str, header: str = "device", name: str = "inline"
) -> modbus.RegisterMap | None:
    # the points of a [[device]] (header "device") or of a [[map]] (header "map")
    if not isinstance(items, list) or not items:
        r.problem(
            f"{where}.point", items, f"must be a non-empty array of [[{header}.point]] tables"
        )
        return None
    points = []
    seen: dict[tuple[str, int], str] = {}
    for j, w, p in _array_of_tables(r, items, f"{where}.point"):
        r.unknown_keys(p, w, _POINT_KEYS)
        name = r.get(
            p,
            w,
            "name",
            str,
            None,
            required=True,
            check=_id_ok,
            allowed="a record name (letters, digits, - _ .)",
        )
        try:
            point = modbus.Point(
                name or f"point{j}",
                r.get(
                    p, w, "address", int, 0, required=True, allowed="a register address 0..65535"
                ),
                r.get(p, w, "table", str, "holding"),
                r.get(p, w, "type", str, "u16"),
                r.get(p, w, "word_order", str, "big"),
                r.get(p, w, "scale", (int, float), 1),
                r.get(p, w, "unit", str, None),
                r.get(p, w, "writable", bool, False),
                r.get(p, w, "min", (int, float), None),
                r.get(p, w, "max", (int, float), None),
            )
        except ValueError as exc:
            r.problems.append(
                f"{w}: {exc}; tables: holding/input/coil/discrete, types: "
                "u16/i16/u32/i32/f32/bool, word_order: big/little"
            )
            continue
        for a in range(point.address, point.address + point.count):
            if (point.table, a) in seen:
                r.problems.append(
                    f"{w}: {point.name} overlaps {seen[(point.table, a)]} at "
                    f"{point.table} register {a}"
                )
            seen[(point.table, a)] = point.name
        points.append(point)
    names = [p.name for p in points]
    for n in sorted({n for n in names if names.count(n) > 1}):
        r.problems.append(f"{where}.point: the name {n!r} is used twice")
    return modbus.RegisterMap(name, points)


def _user_maps(r: _Reader, items: Any) -> dict[str, modbus.RegisterMap | None]:
    """The ``[[map]]`` tables: register maps declared once and named by any number of
    devices (``map = "name"``). They share one namespace with the built-in maps, so a
    name means one thing wherever it is used. A map whose points have problems is kept
    as None: the problems are reported once, at the map, not again at every device."""
    maps: dict[str, modbus.RegisterMap | None] = {}
    builtin = library.names() + modbus.map_names()
    for i, where, m in _array_of_tables(r, items, "map"):
        r.unknown_keys(m, where, _MAP_KEYS)
        name = r.get(
            m,
            where,
            "name",
            str,
            None,
            required=True,
            check=_id_ok,
            allowed="a short name like street-light (letters, digits, - _ .)",
        )
        if name in builtin:
            r.problem(
                f"{where}.name",
                name,
                "a built-in map or library device has this name (`polekit devices list`): "
                f"give this [[map]] another name, or drop it and use the built-in {name!r}",
            )
            name = None
        elif name in maps:
            r.problem(
                f"{where}.name", name, "another [[map]] already has this name; give each its own"
            )
            name = None
        regmap = _inline_points(r, m.get("point", _MISSING), where, "map", name or f"map{i}")
        if name is not None:
            maps[name] = regmap
    return maps


def _device_map(
    r: _Reader, name: str, where: str, maps: dict[str, modbus.RegisterMap | None]
) -> modbus.RegisterMap | None:
    # a [[device]]'s map = "...": a [[map]] of this config, else a built-in one
    if name in maps:
        return maps[name]
    if name in library.map_names():
        return library.register_map(name)
    known = sorted({*library.map_names(), *maps})
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    r.problem(
        f"{where}.map",
        name,
        f"no map has this name; {hint}known maps: {', '.join(known)} "
        "(the node's maps and the device library, `polekit devices list`, and each [[map]] "
        "name of this file)",
    )
    return None


def _device_code(r: _Reader, d: dict[str, Any], where: str, taken: set[str]) -> str:
    # a [[device]]'s code: checked (check character) and unique across all transports
    code: str = r.get(
        d,
        where,
        "code",
        str,
        "",
        required=True,
        allowed="a device code like 371600PL000001C (`polekit code make`)",
    )
    if code:
        try:
            identity.parse(code)
        except identity.IdentityError as exc:
            r.problem(f"{where}.code", code, str(exc))
        if code in taken:
            r.problem(f"{where}.code", code, "another device already has this code")
        taken.add(code)
    return code


def _split_devices(r: _Reader, items: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    # [[device]] tables by transport, each with its key path (device[3]) for messages
    modbus_items: list[tuple[str, Any]] = []
    ble_items: list[tuple[str, Any]] = []
    for _, where, d in _array_of_tables(r, items, "device"):
        transport = d.get("transport", "modbus")
        if transport == "ble":
            ble_items.append((where, d))
        elif transport == "modbus":
            modbus_items.append((where, d))
        else:
            r.problem(f"{where}.transport", transport, "modbus (the default) or ble")
    return modbus_items, ble_items


def _ble_devices(
    r: _Reader, items: list[tuple[str, Any]], taken: set[str]
) -> list[BleDeviceConfig]:
    out: list[BleDeviceConfig] = []
    addresses: set[str] = set()
    for where, d in items:
        r.unknown_keys(d, where, _BLE_DEVICE_KEYS)
        code = _device_code(r, d, where, taken)
        address = r.get(
            d,
            where,
            "address",
            str,
            "",
            required=True,
            check=lambda v: (
                len(v) == 17
                and all(c in "0123456789abcdefABCDEF" for c in v.replace(":", ""))
                and v.count(":") == 5
            ),
            allowed="the device's Bluetooth address, like AA:BB:CC:DD:EE:FF",
        ).upper()
        if address and address in addresses:
            r.problem(f"{where}.address", address, "another device already has this address")
        addresses.add(address)
        key_text = r.get(
            d,
            where,
            "bindkey",
            str,
            None,
            allowed="the BTHome bind key: 32 hex digits",
            secret=True,
        )
        if key_text is not None and (why := bindkey_problem(key_text)) is not None:
            r.problem(f"{where}.bindkey", key_text, f"{why}; copy it again from the node", True)
            key_text = None
        interval = r.get(
            d,
            where,
            "interval",
            (int, float),
            60,
            check=lambda v: 0.1 <= v <= 86400,
            allowed="seconds between the device's adverts, 0.1..86400",
        )
        if code and address:
            key = bytes.fromhex(key_text) if key_text and len(key_text) == 32 else None
            out.append(BleDeviceConfig(code, address, key, float(interval)))
    return out


def _meter(
    r: _Reader,
    d: dict[str, Any],
    where: str,
    bus: str,
    buses: dict[str, BusConfig],
    meters: set[tuple[str, str | None]],
) -> DeviceConfig | None:
    # a DL/T 645 meter: on a serial line (shared with Modbus devices or not), read by a
    # data set of the library (map = "dlt645-3p"), at its address or found by broadcast
    if bus in buses and not buses[bus].rtu_framing:
        r.problem(
            f"{where}.protocol",
            "dlt645",
            f"a DL/T 645 meter hangs on a serial line: bus {bus!r} must be type = "
            '"rtu", "rtu-over-tcp" or "dtu-server"',
        )
    for key in ("unit", "point"):
        if key in d:
            r.problem(f"{where}.{key}", d[key], "a DL/T 645 meter has an address, not " + key)
    address = r.get(
        d,
        where,
        "address",
        str,
        None,
        check=lambda v: len(v) == 12 and v.isdigit(),
        allowed="the meter's 12-digit address from its nameplate, e.g. '000012345678' (leave "
        "it out to find the only meter on the line by the broadcast query)",
    )
    if (bus, address) in meters:
        r.problem(
            f"{where}.address",
            address or "(none)",
            "another meter on this bus has this address"
            if address
            else "only one meter per line can be found by the broadcast query: give each "
            "meter its address",
        )
    meters.add((bus, address))
    name = r.get(
        d,
        where,
        "map",
        str,
        DLT645_SETS[0],
        check=lambda v: v in DLT645_SETS,
        allowed=f"a DL/T 645 data set: {', '.join(DLT645_SETS)} (`polekit devices list`)",
    )
    poll = r.get(
        d,
        where,
        "poll_interval",
        (int, float),
        5.0,
        check=lambda v: MIN_POLL_INTERVAL_S <= v <= 86400,
        allowed=f"seconds, {MIN_POLL_INTERVAL_S}..86400",
    )
    return DeviceConfig(
        "",
        bus,
        0,
        name,
        modbus.RegisterMap(name, []),
        float(poll),
        "dlt645",
        address,
        tuple(library.data_set(name)),
    )


def _devices(
    r: _Reader,
    items: list[tuple[str, Any]],
    buses: dict[str, BusConfig],
    maps: dict[str, modbus.RegisterMap | None],
) -> list[DeviceConfig]:
    devices: list[DeviceConfig] = []
    codes: set[str] = set()
    units: set[tuple[str, int]] = set()
    meters: set[tuple[str, str | None]] = set()
    for where, d in items:
        r.unknown_keys(d, where, _DEVICE_KEYS)
        code = _device_code(r, d, where, codes)
        bus = r.get(d, where, "bus", str, "", required=True, allowed="the name of a [[bus]]")
        if bus and bus not in buses:
            r.problem(
                f"{where}.bus",
                bus,
                f"no [[bus]] has this name; buses: {', '.join(buses) or 'none'}",
            )
        protocol = r.get(
            d,
            where,
            "protocol",
            str,
            "modbus",
            check=lambda v: v in ("modbus", "dlt645"),
            allowed="modbus (the default) or dlt645 (a DL/T 645-2007 meter)",
        )
        if protocol == "dlt645":
            meter = _meter(r, d, where, bus, buses, meters)
            if meter is not None:
                devices.append(replace(meter, code=code))
            continue
        if "address" in d:
            r.problem(
                f"{where}.address",
                d["address"],
                'a Modbus device has a unit id (unit = 1..247); address is for protocol = "dlt645"',
            )
        unit = r.get(
            d,
            where,
            "unit",
            int,
            1,
            check=lambda v: 1 <= v <= 247,
            allowed="the Modbus unit id, 1..247",
        )
        if (bus, unit) in units:
            r.problem(f"{where}.unit", unit, f"another device on bus {bus!r} has this unit id")
        units.add((bus, unit))
        map_name = r.get(d, where, "map", str, None)
        regmap: modbus.RegisterMap | None = None
        if map_name is not None and "point" in d:
            r.problem(
                f"{where}.map", map_name, "give either map or [[device.point]] entries, not both"
            )
        elif map_name is not None:
            regmap = _device_map(r, map_name, where, maps)
        elif "point" in d:
            regmap = _inline_points(r, d["point"], where)
            map_name = "inline"
        else:
            known = ", ".join(sorted({*library.map_names(), *maps}))
            r.problem(
                f"{where}.map",
                _MISSING,
                f"give a map ({known}, or a [[map]] of your own) or [[device.point]] entries",
            )
        poll = r.get(
            d,
            where,
            "poll_interval",
            (int, float),
            5.0,
            check=lambda v: MIN_POLL_INTERVAL_S <= v <= 86400,
            allowed=f"seconds, {MIN_POLL_INTERVAL_S}..86400",
        )
        if regmap is not None:
            devices.append(DeviceConfig(code, bus, unit, map_name or "inline", regmap, float(poll)))
    return devices
