"""The command path: platform -> MQTT -> here -> Modbus write (or a BLE node's GATT
service) -> result published.

Body (JSON or CBOR): ``{"id": <text or integer>, "set": {"<point>": <value>, ...}}``. Each
result is published to ``{prefix}/{gw}/cmd-result/{device}``: ``{"id", "ok": true,
"set": {...}}`` with the values as written (rounded to the register), or ``{"id", "ok":
false, "error": "<reason>"}``. Every command gets a result and every failed one is
counted: an oversize payload, one that is not a command, a rate-limited one, an unknown
device or point, a value that does not fit, a device that does not answer. Nothing a
command carries can stop the gateway: the result is encoded before it is queued.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from polekit.gateway.ble_commands import BleCommander
from polekit.gateway.config import BleDeviceConfig, CommandsConfig, DeviceConfig
from polekit.gateway.sources.modbus_bus import DeviceNoResponse, DeviceRefused, ModbusBus
from polekit.protocols import cbor
from polekit.protocols.errors import ModbusException
from polekit.protocols.modbus import Point, RegisterMap

log = logging.getLogger("polekit.gateway.commands")

MAX_DEPTH = cbor.MAX_DEPTH  # nesting a command may have, in JSON as in CBOR
ID_MAX_CHARS = 128
ERROR_MAX_CHARS = 300  # an error result stays small whatever the command carried

# device code, encoded result -> None (publishes through the durable queue)
ResultSink = Callable[[str, bytes], Awaitable[None]]
# a result body -> its bytes in the configured format (ValueError/TypeError if it cannot)
ResultEncoder = Callable[[dict[str, Any]], bytes]
# the result body of one command, for the platform that sent it (its adapter encodes it
# for its reply topic, with its request id)
Answer = Callable[[dict[str, Any]], Awaitable[None]]
# the device the command was sent to, the ota command -> what the result says of the
# rollout it queued (raises ValueError saying why it cannot start): gateway/ota/
OtaHandler = Callable[[str, "OtaCommand"], Awaitable[dict[str, Any]]]

Value = bool | int | float


class CommandError(ValueError):
    """A payload that is not a valid command; the message says what is wrong and
    ``command_id`` is the command's id when it could be read (None otherwise)."""

    def __init__(self, message: str, command_id: str | int | None = None) -> None:
        super().__init__(message)
        self.command_id = command_id


class PayloadTooLargeError(CommandError):
    """A payload over the size limit; it is not parsed, so its id is unknown."""


@dataclass(frozen=True)
class Command:
    """A decoded, validated command: its id and the points to set."""

    id: str | int | None
    changes: dict[str, Value]


def _shown(value: Any, limit: int = 40) -> str:
    # a value in a message, short whatever it is (ids and names come from the network)
    if isinstance(value, int) and value.bit_length() > 64:  # repr may refuse 4300+ digits
        return f"an integer of {value.bit_length()} bits"
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _json_depth(text: str) -> int:
    # the deepest nesting of arrays and objects, brackets inside strings skipped: checked
    # before json.loads, whose recursion would otherwise overflow the stack
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _check_id(value: Any) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    if isinstance(value, str) and len(value) <= ID_MAX_CHARS:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate from a JSON escape: not text any result can carry
        else:
            return value
    raise CommandError(
        f"id must be text of up to {ID_MAX_CHARS} characters or a 64-bit integer, "
        f"not {type(value).__name__} {_shown(value)}; the command was not applied"
    )


def _check_value(name: str, value: Any, command_id: str | int | None) -> Value:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise CommandError(f"{name}: {value} is not a finite number", command_id)
    raise CommandError(
        f"{name} needs a number or true/false, got {type(value).__name__} {_shown(value)}",
        command_id,
    )


def decode_body(payload: bytes, max_bytes: int = CommandsConfig.max_bytes) -> dict[str, Any]:
    """The map a command payload holds (JSON if it starts with ``{``, else CBOR), with
    its id checked. Pure; raises CommandError (PayloadTooLargeError over ``max_bytes``)
    and nothing else, whatever the bytes."""
    if len(payload) > max_bytes:
        raise PayloadTooLargeError(
            f"command of {len(payload)} bytes is over the {max_bytes}-byte limit "
            "(commands.max_bytes); it was not read"
        )
    if payload.lstrip()[:1] == b"{":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError("a JSON command must be UTF-8") from None
        if _json_depth(text) > MAX_DEPTH:
            raise CommandError(f"command nests deeper than {MAX_DEPTH} levels")
        try:
            body = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
            raise CommandError(f"body is not valid JSON: {_shown(str(exc), 120)}") from None
    else:
        try:
            body = cbor.loads(payload)
        except ValueError as exc:  # CBORDecodeError and the other ProtocolErrors
            raise CommandError(
                f"body is neither a JSON object nor CBOR: {_shown(str(exc), 120)}"
            ) from None
    if not isinstance(body, dict):
        raise CommandError('body must be a map like {"id": 1, "set": {"lamp_level": 40}}')
    _check_id(body.get("id"))
    return body


def decode_command(payload: bytes, max_bytes: int = CommandsConfig.max_bytes) -> Command:
    """The command in ``payload`` (JSON if it starts with ``{``, else CBOR), validated:
    an id that any result can echo, and a non-empty ``set`` of point names to finite
    numbers or booleans. Pure; raises CommandError (PayloadTooLargeError over ``max_bytes``)
    and nothing else, whatever the bytes."""
    return command_of(decode_body(payload, max_bytes))


def command_of(body: dict[str, Any]) -> Command:
    """The ``set`` command of a decoded body (``decode_body``); CommandError if it is not."""
    command_id = _check_id(body.get("id"))
    changes = body.get("set")
    if not isinstance(changes, dict) or not changes:
        raise CommandError(
            'body must be a map like {"id": 1, "set": {"lamp_level": 40}}', command_id
        )
    checked: dict[str, Value] = {}
    for name, value in changes.items():
        if not isinstance(name, str):
            raise CommandError(f"point names are text, not {_shown(name)}", command_id)
        checked[name] = _check_value(_shown(name), value, command_id)
    return Command(command_id, checked)


@dataclass(frozen=True)
class OtaCommand:
    """An ``ota`` command: roll the bundle at ``bundle`` (an http(s) URL of a signed
    bundle's folder, or a folder on the gateway) out to ``devices`` (None: the device the
    command was sent to), ``batch_size`` nodes a stage after the canary (None: [ota]'s)."""

    id: str | int | None
    bundle: str
    devices: list[str] | None
    batch_size: int | None


OTA_MAX_DEVICES = 1000
OTA_EXAMPLE = (
    '{"id": 1, "ota": {"bundle": "https://host/pole-0.2/", "devices": ["371600PL000001C"]}}'
)


def ota_command_of(body: dict[str, Any]) -> OtaCommand:
    """The ``ota`` command of a decoded body; CommandError saying what is wrong."""
    command_id = _check_id(body.get("id"))
    ota = body.get("ota")
    if "set" in body:
        raise CommandError("a command has either set or ota, not both", command_id)
    if not isinstance(ota, dict) or not isinstance(ota.get("bundle"), str):
        raise CommandError(f"an ota command looks like {OTA_EXAMPLE}", command_id)
    bundle = ota["bundle"]
    if not 0 < len(bundle) <= 1024:
        raise CommandError("ota.bundle: a URL of up to 1024 characters", command_id)
    devices = ota.get("devices")
    if devices is not None and (
        not isinstance(devices, list)
        or not 0 < len(devices) <= OTA_MAX_DEVICES
        or not all(isinstance(d, str) and 0 < len(d) <= 64 for d in devices)
    ):
        raise CommandError(f"ota.devices: a list of 1..{OTA_MAX_DEVICES} device codes", command_id)
    batch = ota.get("batch_size")
    if batch is not None and (
        not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 1000
    ):
        raise CommandError("ota.batch_size: nodes a stage, 1..1000", command_id)
    unknown = sorted(set(ota) - {"bundle", "devices", "batch_size"})
    if unknown:
        raise CommandError(
            f"ota: unknown key {_shown(unknown[0])}; known: bundle, devices, batch_size",
            command_id,
        )
    return OtaCommand(command_id, bundle, devices, batch)


@dataclass(frozen=True)
class Write:
    """One point to write: the value asked for and the value the device will hold."""

    point: Point
    value: Value
    written: Value


def _as_written(point: Point, value: Value, regs: list[int]) -> Value:
    # what the registers hold, in the point's unit: the shortest decimal that encodes to
    # the same registers (an f32 holding 40.7 says 40.7, not 40.70000076293945)
    if point.table in ("coil", "discrete") or point.dtype == "bool":
        return bool(value)
    held = point.decode(regs)
    if not isinstance(held, float):
        return held
    for digits in range(1, 18):
        shorter = float(f"{held:.{digits}g}")
        try:
            if point.encode(shorter) == regs:
                return shorter
        except (ModbusException, OverflowError):
            continue
    return held


def plan_writes(points: RegisterMap, changes: dict[str, Value]) -> list[Write]:
    """Check every change against the device's register map before anything is written
    (known, writable, the right kind of value, in range, fitting its register); the
    writes with the values the device will hold. Pure; raises ValueError saying why."""
    names = {p.name: p for p in points}
    plan = []
    for name, value in changes.items():
        point = names.get(name)
        if point is None:
            raise ValueError(f"no point {_shown(name)}; this device has: {', '.join(names)}")
        if not point.writable:
            raise ValueError(f"{name} is read-only")
        is_bool_point = point.dtype == "bool" or point.table == "coil"
        if isinstance(value, bool) and not is_bool_point:
            raise ValueError(f"{name} needs a number, got {value!r}")
        if is_bool_point and not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"{name} needs true/false (or 0/1), got {_shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: {value} is not a finite number")
        try:
            regs = point.encode(value)  # range and fit, before anything touches the wire
        except OverflowError:  # 1e39 into an f32, 10**400 into any register
            raise ValueError(
                f"{name}: {_shown(value)} does not fit a {point.dtype} register"
            ) from None
        plan.append(Write(point, value, _as_written(point, value, regs)))
    return plan


class RateLimit:
    """A token bucket per key: ``rate_per_s`` commands a second on average, ``burst`` at
    once. ``clock`` is monotonic seconds (injected for tests)."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: str) -> bool:
        """Take a token for ``key``; False when its bucket is empty."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True


@dataclass
class CommandCounters:
    """What happened to the commands received (``/health`` and ``/metrics``)."""

    handled: int = 0  # every command received, each answered with a result
    failed: int = 0  # answered with ok: false, for any reason (includes the three below)
    malformed: int = 0  # not a valid command (bad JSON/CBOR, bad id, bad values)
    too_large: int = 0  # over commands.max_bytes
    rate_limited: int = 0  # over the device's rate limit; not applied


class CommandRouter:
    """Routes commands to the bus that owns the device; publishes each result."""

    def __init__(
        self,
        devices: dict[str, tuple[DeviceConfig, ModbusBus]],
        publish: ResultSink,
        ble: dict[str, tuple[BleDeviceConfig, BleCommander]] | None = None,
        limits: CommandsConfig | None = None,
        encode: ResultEncoder | None = None,
        clock: Callable[[], float] = time.monotonic,
        ota: OtaHandler | None = None,
        gateway_code: str | None = None,
    ) -> None:
        """``ota``: takes the ``ota`` commands (sent to a device or to ``gateway_code``,
        the gateway's own id); without it they are answered with an error."""
        self.devices = devices
        self.ota = ota
        self.gateway_code = gateway_code
        self.ble = ble or {}
        self.publish = publish
        self.limits = limits or CommandsConfig()
        self.encode: ResultEncoder = encode or (
            lambda body: json.dumps(body, separators=(",", ":")).encode()
        )
        self.rate = RateLimit(self.limits.rate_per_s, self.limits.burst, clock)
        self.counters = CommandCounters()
        self.last_rtt_ms: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def handled(self) -> int:
        """Commands received and answered."""
        return self.counters.handled

    @property
    def failed(self) -> int:
        """Commands answered with an error."""
        return self.counters.failed

    async def handle(self, device_code: str, payload: bytes, answer: Answer | None = None) -> None:
        """Start handling one command; returns at once (the bus may be busy). Its result
        goes to ``answer`` (a platform adapter's reply) when given, else encoded to
        ``publish``."""
        task = asyncio.get_running_loop().create_task(self._run(device_code, payload, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, device_code: str, payload: bytes, answer: Answer | None = None) -> None:
        started = time.monotonic()
        out = await self._outcome(device_code, payload)
        if answer is not None:
            self.counters.handled += 1
            if not out["ok"]:
                self.counters.failed += 1
                log.info("command to %s failed: %s", _shown(device_code), out.get("error"))
            self.last_rtt_ms = (time.monotonic() - started) * 1000
            await answer(out)
            return
        result, ok = self._encoded(device_code, out)
        self.counters.handled += 1
        if not ok:
            self.counters.failed += 1
            log.info("command to %s failed: %s", _shown(device_code), out.get("error"))
        self.last_rtt_ms = (time.monotonic() - started) * 1000
        await self.publish(device_code, result)

    async def _outcome(self, device_code: str, payload: bytes) -> dict[str, Any]:
        # the result body of one command; never raises
        cmd_id: str | int | None = None
        try:
            body = decode_body(payload, self.limits.max_bytes)
            cmd_id = _check_id(body.get("id"))
            if "ota" in body:
                return await self._ota(device_code, body)
            command = command_of(body)
            cmd_id = command.id
            # unknown devices share one bucket: their codes come from the network
            known = device_code in self.devices or device_code in self.ble
            if not self.rate.allow(device_code if known else "?"):
                self.counters.rate_limited += 1
                raise ValueError(
                    f"rate limit: {device_code} takes {self.limits.rate_per_s:g} commands/s "
                    f"(burst {self.limits.burst}); this one was not applied, send it later"
                )
            written = await self._apply(device_code, command.changes)
            return {"id": cmd_id, "ok": True, "set": written}
        except PayloadTooLargeError as exc:
            self.counters.too_large += 1
            return self._error(None, str(exc))
        except CommandError as exc:
            self.counters.malformed += 1
            return self._error(exc.command_id, str(exc))
        except (ValueError, DeviceNoResponse, DeviceRefused, ModbusException) as exc:
            return self._error(cmd_id, str(exc))
        except Exception as exc:  # a bug: answered and logged, the gateway goes on
            log.error(
                "command to %s: internal error %s: %s",
                _shown(device_code),
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return self._error(cmd_id, f"internal error ({type(exc).__name__}); see the log")

    async def _ota(self, device_code: str, body: dict[str, Any]) -> dict[str, Any]:
        # an update: verified and queued here (the bundle is fetched first), rolled out by
        # the gateway's rollout task; the result says it was queued, events say the rest
        command = ota_command_of(body)
        known = device_code in self.devices or device_code in self.ble
        if not self.rate.allow(device_code if known else "?"):
            self.counters.rate_limited += 1
            raise ValueError(
                f"rate limit: {device_code} takes {self.limits.rate_per_s:g} commands/s; "
                "this one was not applied, send it later"
            )
        if self.ota is None:
            raise ValueError("this gateway takes no ota command: set [ota] public_key")
        if command.devices is None and not known:
            raise ValueError(
                f"ota to {_shown(device_code)}: name the devices (ota.devices) or send it "
                "to a device's command topic"
            )
        if not known and device_code != self.gateway_code:
            raise ValueError(f"unknown device {_shown(device_code)} on this gateway")
        started = await self.ota(device_code, command)
        return {"id": command.id, "ok": True, "ota": started}

    @staticmethod
    def _error(cmd_id: str | int | None, reason: str) -> dict[str, Any]:
        if len(reason) > ERROR_MAX_CHARS:
            reason = reason[: ERROR_MAX_CHARS - 3] + "..."
        return {"id": cmd_id, "ok": False, "error": reason}

    def _encoded(self, device_code: str, out: dict[str, Any]) -> tuple[bytes, bool]:
        # encoded here, before queueing, so a body that cannot be encoded (a BLE node's
        # odd answer) fails only its own result; (the bytes, whether they say ok)
        try:
            return self.encode(out), bool(out["ok"])
        except (ValueError, TypeError) as exc:
            log.error("command to %s: result not encodable: %s", _shown(device_code), exc)
            done = "was applied" if out["ok"] else "failed"
            reason = f"the command {done} but its result cannot be encoded: {exc}"
            return self.encode(self._error(None, reason)), False

    async def _apply(self, device_code: str, changes: dict[str, Value]) -> dict[str, Any]:
        if device_code in self.ble:  # our BLE nodes check their own settings (GATT)
            ble_device, commander = self.ble[device_code]
            return await commander.apply(ble_device, changes)
        if device_code not in self.devices:
            raise ValueError(f"unknown device {_shown(device_code)} on this gateway")
        device, bus = self.devices[device_code]
        plan = plan_writes(device.points, changes)  # all checked before any is written
        for w in plan:
            await bus.write(device, w.point, w.value)
        return {w.point.name: w.written for w in plan}
