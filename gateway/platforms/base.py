"""The northbound interface: what one platform dialect (an adapter) is given and returns.

The gateway owns the I/O (the bus pollers, one durable queue and one MQTT session per
platform); an adapter is pure translation, no sockets, no SQLite, no asyncio:

- uplink: a poll's readings, an event, a command result, a device going online or
  offline become ``Outgoing`` messages (topic, payload, QoS) for that platform. They are
  built *before* they are queued, so a payload that cannot be built fails alone (the
  gateway counts and logs the ``ValueError``/``TypeError``/``ProtocolError`` it raises);
- session: the MQTT connection settings (client id, login, TLS, will, MQTT version,
  keepalive), recomputed at every connect so signed logins are fresh, with the time the
  login expires; the messages that open a session (sub-device announce, births, the
  online state), sent before the backlog after every (re)connect; those that close it
  cleanly; the topic filters to subscribe to;
- downlink: a message on a subscribed topic becomes our command router's commands (plus
  any immediate answers, or a request to announce again); each command's result comes
  back to the adapter with the reply context it gave, to be sent to the platform's reply
  topic with the platform's request id.

Every message the adapter returns for uplink goes through that platform's
``DurableQueue`` (nothing lost across broker outages and kill -9; a message with a
``device`` gets that device's next sequence number there, per platform). Session
messages are not queued: they describe the session itself and are rebuilt at each one.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from polekit.protocols import model, senml
from polekit.protocols.errors import SenMLError

log = logging.getLogger("polekit.gateway.platforms")

Value = bool | int | float | str

# the payload of a queued message: bytes, or a function of the device's next sequence
# number (assigned by the queue in the transaction that stores the message)
Payload = bytes | Callable[[int], bytes]

CLOCK_FLOOR_S = 1_704_067_200  # 2024-01-01T00:00:00Z: a wall clock before it is not set


class Reading(NamedTuple):
    """One value of one poll: ``name`` is the reference model's name (or the point's own
    name outside the model), ``unit`` the unit the value is *in* (as the device reports
    it; None for booleans and counters). ``ModelUnits`` converts to the model's units.
    A tuple: a poll makes one per point, so it is cheap to build."""

    name: str
    value: Value
    unit: str | None


@dataclass(frozen=True)
class PointInfo:
    """What a device will report, known before its first poll (Sparkplug's DBIRTH and a
    thing model's property list need it): the name, the unit the *model* sends it in,
    whether it is a bool, and whether a command may write it."""

    name: str
    unit: str | None
    boolean: bool
    writable: bool


@dataclass(frozen=True)
class DeviceInfo:
    """A configured device as a platform sees it: its code (ThingsBoard's device name,
    Sparkplug's device id, a cloud's sub-device name), where it is (``modbus`` or
    ``ble``), its register map's name, and its points (empty for BLE devices, whose
    objects are known from their adverts)."""

    code: str
    source: str
    map_name: str
    points: tuple[PointInfo, ...] = ()


@dataclass(frozen=True)
class Outgoing:
    """One MQTT message for the platform. ``device``: the message carries that device's
    sequence number, and ``payload`` is then a function of it (the queue assigns it).
    ``retain`` only for session messages (queued messages are never retained)."""

    topic: str
    payload: Payload
    qos: int = 1
    device: str | None = None
    retain: bool = False


@dataclass(frozen=True)
class Tls:
    """TLS for the platform's broker: CA bundle (None: the system's), client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Connection:
    """How to open one session. ``expires_at`` (wall clock, epoch seconds): the login
    stops being valid then; the uplink reconnects with a fresh ``connection()`` before
    it (``RENEW_BEFORE_S``, or a tenth of the lifetime when shorter), after the queue
    has been flushed to a PUBACK, so nothing is lost. ``renew_at`` (wall clock): renew
    at this moment instead, for a login that a reconnect cannot improve before then
    (IoTDA's is signed with the UTC hour: a login made at 10:59 is the one made at 10:00,
    so it is renewed at 11:00, once, not again and again as the hour runs out).
    ``needs_clock``: the login is signed with the time; with the clock before
    ``CLOCK_FLOOR_S`` the uplink does not try, and says so on /health and in the log
    (set NTP)."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: Tls | None = None
    mqtt_version: str = "3.1.1"  # or "5"
    keepalive_s: int = 30
    will: Outgoing | None = None
    clean_session: bool = True
    expires_at: float | None = None
    renew_at: float | None = None
    needs_clock: bool = False
    username_secret: bool = False  # the user name is the credential (ThingsBoard's token)


@dataclass(frozen=True)
class PlatformCommand:
    """A downlink turned into our command: ``body`` is our command's JSON
    (``{"id": ..., "set": {point: value}}``, see gateway/commands.py), with our point
    names (map the platform's names back with ``Names.ours``); the router validates,
    rate-limits and applies it exactly as for a SenML command. ``reply`` is whatever the
    adapter needs to answer (request id, reply topic); the gateway hands it back to
    ``Adapter.command_result`` untouched."""

    device: str
    body: bytes
    reply: Any = None


@dataclass
class Downlink:
    """What one received message means. ``commands`` go to the router; ``publish`` is
    sent at once on this session (an acknowledgement that carries no result);
    ``reannounce``: send ``on_connect()``'s messages again (Sparkplug's Rebirth);
    ``ignored``: why the message was not used (counted, logged at debug)."""

    commands: list[PlatformCommand] = field(default_factory=list)
    publish: list[Outgoing] = field(default_factory=list)
    reannounce: bool = False
    ignored: str | None = None


class Refusals:
    """The platform's answers to what the gateway posted (Alibaba's and OneNET's ``_reply``
    topics): an acceptance is only noted, a refusal is counted in ``refused`` and logged
    with the platform's code and reason, the one place an operator sees that a platform
    took the connection but not the data."""

    refused: int = 0

    def answered(
        self, platform: str, topic: str, msg_id: Any, ok: bool, code: int, reason: str
    ) -> Downlink:
        if ok:
            return Downlink(ignored=f"accepted: {topic} id {msg_id}")
        self.refused += 1
        log.warning("%s refused message %s (%s): code %d %s", platform, msg_id, topic, code, reason)
        return Downlink(ignored=f"refused: {topic} id {msg_id}: code {code} {reason}")


@dataclass(frozen=True)
class BrokerSettings:
    """Where a platform's broker is: ``[platform] url`` or, when absent, ``[mqtt] url``;
    TLS files likewise. ``shown_url`` has no password in it."""

    host: str
    port: int
    tls: Tls | None
    keepalive_s: int
    url: str = field(repr=False)  # may hold the password: shown_url is what people see
    shown_url: str
    username: str | None = None  # from the url's user info or [mqtt] (senml only)
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PlatformConfig:
    """One validated ``[platform]`` entry. ``name`` tells entries apart (default: the
    kind); ``queue_file`` is its durable queue in ``data_dir`` (``queue.sqlite3`` for
    the default SenML platform, so an existing install keeps its backlog;
    ``queue-{name}.sqlite3`` otherwise); ``names`` overrides the adapter's default name
    table (our name -> the platform's); ``settings`` is what the adapter's ``parse``
    returned."""

    kind: str
    name: str
    broker: BrokerSettings
    mqtt_version: str
    max_connects_per_min: int
    names: dict[str, str]
    settings: Any
    queue_file: str


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter is built with: its platform entry, the gateway's id, every
    configured device, a folder of its own for small state it must keep across restarts
    (Sparkplug's bdSeq), and the wall clock (passed in: tests set it)."""

    platform: PlatformConfig
    gateway_id: str
    devices: tuple[DeviceInfo, ...]
    state_dir: Path
    clock: Callable[[], float] = time.time


class Names:
    """Our reference names <-> the platform's, from the adapter's default table with the
    config's ``names`` over it. A name in neither table is sent as it is."""

    def __init__(self, default: dict[str, str], overrides: dict[str, str]) -> None:
        self.table = {**default, **overrides}
        self._back = {v: k for k, v in self.table.items()}

    def theirs(self, name: str) -> str:
        return self.table.get(name, name)

    def ours(self, name: str) -> str:
        return self._back.get(name, name)


class ModelUnits:
    """Converts readings into the reference model's units (primary, or secondary when
    the platform wants human-scale numbers) exactly as the SenML packs do; the model is
    searched once per (name, unit), not once a poll. Non-finite floats are left out
    (a meter's 'no value')."""

    def __init__(self, secondary: bool = False) -> None:
        self.secondary = secondary
        self._targets: dict[tuple[str, str | None], str | None] = {}

    def target(self, name: str, unit: str | None) -> str | None:
        key = (name, unit)
        if key not in self._targets:
            self._targets[key] = senml._target(name, unit, self.secondary)
        return self._targets[key]

    def convert(self, readings: list[Reading]) -> list[Reading]:
        """``readings`` in model units; raises ``SenMLError`` for a unit that cannot be
        converted (the poll is then dropped and counted, as for SenML)."""
        out = []
        for r in readings:
            if isinstance(r.value, bool) or isinstance(r.value, str):
                out.append(r)
                continue
            if isinstance(r.value, float) and not math.isfinite(r.value):
                continue
            to = self.target(r.name, r.unit)
            value = r.value if to == r.unit else model.convert(r.value, r.unit, to)
            out.append(Reading(r.name, value, to))
        return out


class Section:
    """One ``[platform]`` entry as the adapter's ``parse`` reads it: typed getters that
    collect problems (file, key path, value, what is allowed) instead of raising, and a
    did-you-mean for unknown keys. ``where`` is ``platform`` or ``platform[2]``."""

    def __init__(
        self,
        table: dict[str, Any],
        where: str,
        problem: Callable[[str], None],
        mqtt: Any = None,
    ) -> None:
        self.table = table
        self.where = where
        self._problem = problem
        self.mqtt = mqtt  # the validated [mqtt] (MqttConfig), for defaults

    def problem(self, key: str, text: str) -> None:
        """Report ``{where}.{key}: {text}``; ``text`` says what is wrong and the fix."""
        self._problem(f"{self.where}.{key}: {text}")

    def _get(self, key: str, kinds: tuple[type, ...], words: str, required: bool) -> Any:
        if key not in self.table:
            if required:
                self.problem(key, f"required ({words}); add `{key} = ...` to [{self.where}]")
            return None
        value = self.table[key]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            shown = "***" if "secret" in words else repr(value)
            self.problem(key, f"{shown} must be {words}")
            return None
        return value

    def text(
        self,
        key: str,
        default: str | None = None,
        required: bool = False,
        secret: bool = False,
        check: Callable[[str], bool] | None = None,
        allowed: str = "",
    ) -> Any:
        """A string key. ``secret``: its value is never shown in a problem."""
        words = 'text in quotes ("...")' + (" (secret)" if secret else "")
        value = self._get(key, (str,), words, required)
        if value is None:
            return default
        if not value and required or check is not None and not check(value):
            shown = "***" if secret else repr(value)
            self.problem(key, f"{shown}: {allowed or 'must not be empty'}")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int, unit: str = "") -> int:
        value = self._get(key, (int,), "a whole number", False)
        if value is None:
            return default
        if not low <= value <= high:
            self.problem(key, f"{value!r}: must be {unit + ', ' if unit else ''}{low}..{high}")
            return default
        return int(value)

    def text_table(self, key: str, valid: Callable[[str], bool], must: str) -> dict[str, str]:
        """An optional table of device code = text, each text passing ``valid``; ``must``
        says what is allowed when it does not (the table is then taken as empty)."""
        table = self.table.get(key, {})
        if isinstance(table, dict) and all(isinstance(v, str) and valid(v) for v in table.values()):
            return table
        self.problem(key, must)
        return {}

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false", False)
        return default if value is None else bool(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self._get(key, (str,), 'text in quotes ("...")', False)
        if value is None:
            return default
        if value not in choices:
            near = difflib.get_close_matches(value, choices, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"one of: {', '.join(choices)}"
            self.problem(key, f"{value!r} is not known; {hint}")
            return default
        return str(value)


class Adapter:
    """One platform dialect. Subclass it in ``gateway/platforms/{kind}.py``, name the
    class ``ADAPTER`` at module level, and list the kind in ``KINDS``
    (gateway/platforms/__init__.py).

    Class attributes: ``KEYS``, the config keys of this kind beyond the common ones
    (``COMMON_KEYS``); ``NAMES``, the default table from our reference names to the
    platform's (documented in docs/platforms.md, overridable with ``names``).

    Methods are called from the event loop and must not block or do I/O (except
    ``__init__``, which may read and write small files in ``ctx.state_dir``). A method
    that cannot build a message raises ``ValueError``/``TypeError`` (or the protocols'
    ``ProtocolError``): the gateway counts and logs it, and only that message is lost.
    """

    KIND: ClassVar[str] = ""
    # how the platform is reached: "mqtt" (gateway/uplink.py, everything above) or
    # "hj212" (HJ 212 packets on plain TCP, gateway/hj212_uplink.py: the queued
    # payloads are whole packets, topics only name them in logs and previews)
    TRANSPORT: ClassVar[str] = "mqtt"
    KEYS: ClassVar[tuple[str, ...]] = ()
    NAMES: ClassVar[dict[str, str]] = {}
    # send readings in the model's secondary units (hPa, ug/m3, kWh) instead of primary
    SECONDARY_UNITS: ClassVar[bool] = False
    # a complete, valid [platform] table of this kind (kind included) with made-up
    # credentials: docs/platforms.md's example, `polekit platform preview`'s tests and
    # bench/gateway_throughput.py --platform KIND use it
    EXAMPLE: ClassVar[dict[str, Any]] = {}

    def __init__(self, ctx: AdapterContext) -> None:
        self.ctx = ctx
        self.platform = ctx.platform
        self.names = Names(self.NAMES, ctx.platform.names)
        self.units = ModelUnits(self.SECONDARY_UNITS)

    # --- configuration -------------------------------------------------------------
    @classmethod
    def parse(cls, section: Section) -> Any:
        """Read and check this kind's own keys (``KEYS``) from ``section``; report every
        problem through ``section.problem``/the getters (never raise); return the
        settings object the adapter keeps in ``ctx.platform.settings``."""
        return None

    # --- session -------------------------------------------------------------------
    def connection(self, now_s: float) -> Connection:
        """The settings of the next session, computed at each connect (``now_s``: the
        wall clock, for signed logins). Default: the broker entry, no login."""
        b = self.platform.broker
        return Connection(
            host=b.host,
            port=b.port,
            client_id=f"polekit-{self.ctx.gateway_id}-{self.platform.name}",
            username=b.username,
            password=b.password,
            tls=b.tls,
            mqtt_version=self.platform.mqtt_version,
            keepalive_s=b.keepalive_s,
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        """(topic filter, QoS) to subscribe to after each connect."""
        return []

    def on_connect(self) -> list[Outgoing]:
        """Sent, in order and awaited, after each connect and before the backlog:
        the online state, sub-device registration/login, births."""
        return []

    def on_disconnect(self) -> list[Outgoing]:
        """Sent on a clean shutdown, after the last queued message (the will covers a
        crash): the offline state, sub-device logout, NDEATH."""
        return []

    def queued_qos(self) -> int:
        """The QoS queued messages are published with. 1: a message leaves the queue on
        the broker's PUBACK (nothing lost). 0 only where the platform's specification asks
        it and the user chose it (Sparkplug's ``qos = 0``): a message then leaves the queue
        once written to the socket, and one in flight when the connection drops is lost."""
        return 1

    def stamp(self, topic: str, payload: bytes) -> bytes:
        """The bytes actually sent for a queued message, called just before its publish
        in the session that sends it (Sparkplug's per-session ``seq``). Default: as
        queued."""
        return payload

    # --- uplink --------------------------------------------------------------------
    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        """One poll of ``device`` at ``time_s`` (wall clock, epoch seconds)."""
        raise NotImplementedError

    def event(self, device: str, body: dict[str, Any], time_s: float) -> list[Outgoing]:
        """An event (an SOS press, a smoke alarm): ``body`` as SenML's event topic
        carries it (``event``, ``value``, ``t``, ``rssi``)."""
        return []

    def device_status(self, device: str, online: bool, time_s: float) -> list[Outgoing]:
        """``device`` started or stopped answering (queued, in order with its data)."""
        return []

    def command_result(self, device: str, reply: Any, result: dict[str, Any]) -> list[Outgoing]:
        """The result of a ``PlatformCommand``: ``{"id", "ok": true, "set": {...}}`` or
        ``{"id", "ok": false, "error": "..."}`` (our names; map with ``names.theirs``),
        with the ``reply`` the adapter gave. Queued like data."""
        return []

    # --- downlink ------------------------------------------------------------------
    def downlink(self, topic: str, payload: bytes) -> Downlink:
        """A message received on one of ``subscriptions()``. Must not raise for any
        bytes a peer may send: say why in ``Downlink.ignored``, or turn it into a
        command whose result carries the error (so the platform hears of it)."""
        return Downlink(ignored="this platform sends no commands")


def command_body(request_id: str | int | None, changes: dict[str, Any]) -> bytes:
    """Our command's JSON for a platform's write request (``PlatformCommand.body``);
    ``changes`` with our point names. Values are checked by the router, not here."""
    return json.dumps({"id": request_id, "set": changes}, separators=(",", ":")).encode()


def clock_problem(now_s: float) -> str | None:
    """Why a signed login cannot be made now (the clock is not set), or None."""
    if now_s < CLOCK_FLOOR_S:
        return (
            f"the system clock says {time.strftime('%Y-%m-%d', time.gmtime(now_s))}: signed "
            "platform logins need the real time; set up NTP (timedatectl set-ntp true)"
        )
    return None


def model_point(name: str, unit: str | None, secondary: bool = False) -> tuple[str | None, bool]:
    """(unit the model sends ``name`` in, whether it is a boolean) for a register point."""
    q = model.quantity(name)
    if q is not None and q[0] == "vb":
        return None, True
    try:
        return senml._target(name, unit, secondary), False
    except SenMLError:
        return unit, False
