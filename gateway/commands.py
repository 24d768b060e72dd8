"""The command path: platform -> MQTT -> here -> Modbus write (or a BLE node's GATT
service) -> result published.

Body (JSON or CBOR): ``{"id": <anything>, "set": {"<point>": <value>, ...}}``. Each result
is published to ``{prefix}/{id}/cmd-result/{device}``: ``{"id", "ok": true, "set": {...}}``
or ``{"id", "ok": false, "error": "<reason>"}``. Unknown device, unknown or read-only
point, a value out of range, a device that does not answer: a clear error result, never a
crash of the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from polekit.gateway.ble_commands import BleCommander
from polekit.gateway.config import BleDeviceConfig, DeviceConfig
from polekit.gateway.sources.modbus_bus import DeviceNoResponse, DeviceRefused, ModbusBus
from polekit.protocols import cbor
from polekit.protocols.errors import CBORDecodeError, ModbusException

log = logging.getLogger("polekit.gateway.commands")

# device code, result body -> None (publishes through the durable queue)
ResultSink = Callable[[str, dict[str, Any]], Awaitable[None]]


def parse_body(payload: bytes) -> dict[str, Any]:
    """A command body in JSON (starts with ``{``) or CBOR; ValueError says what is wrong."""
    text = payload.lstrip()
    try:
        body = json.loads(text) if text[:1] == b"{" else cbor.loads(payload)
    except (ValueError, CBORDecodeError) as exc:
        raise ValueError(f"body is neither a JSON object nor CBOR: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("set"), dict) or not body["set"]:
        raise ValueError('body must be a map like {"id": 1, "set": {"lamp_level": 40}}')
    return body


class CommandRouter:
    """Routes commands to the bus that owns the device; publishes each result."""

    def __init__(
        self,
        devices: dict[str, tuple[DeviceConfig, ModbusBus]],
        publish: ResultSink,
        ble: dict[str, tuple[BleDeviceConfig, BleCommander]] | None = None,
    ) -> None:
        self.devices = devices
        self.ble = ble or {}
        self.publish = publish
        self.handled = 0
        self.failed = 0
        self.last_rtt_ms: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, device_code: str, payload: bytes) -> None:
        """Start handling one command; returns at once (the bus may be busy)."""
        task = asyncio.get_running_loop().create_task(self._run(device_code, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, device_code: str, payload: bytes) -> None:
        started = time.monotonic()
        cmd_id: Any = None
        try:
            body = parse_body(payload)
            cmd_id = body.get("id")
            result = await self._apply(device_code, body["set"])
            out = {"id": cmd_id, "ok": True, "set": result}
        except (ValueError, KeyError, DeviceNoResponse, DeviceRefused, ModbusException) as exc:
            self.failed += 1
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            out = {"id": cmd_id, "ok": False, "error": str(reason)}
            log.info("command to %s failed: %s", device_code, reason)
        self.handled += 1
        self.last_rtt_ms = (time.monotonic() - started) * 1000
        await self.publish(device_code, out)

    async def _apply(self, device_code: str, changes: dict[str, Any]) -> dict[str, Any]:
        if device_code in self.ble:  # our BLE nodes check their own settings (GATT)
            ble_device, commander = self.ble[device_code]
            return await commander.apply(ble_device, changes)
        if device_code not in self.devices:
            raise ValueError(f"unknown device {device_code!r} on this gateway")
        device, bus = self.devices[device_code]
        plan = []
        for name, value in changes.items():  # check all before writing any
            point = device.points.point(name)
            if not point.writable:
                raise ValueError(f"{name} is read-only")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if not (point.dtype == "bool" or point.table == "coil") or not isinstance(
                    value, bool
                ):
                    raise ValueError(f"{name} needs a number, got {value!r}")
            point.encode(value)  # range and fit, before anything touches the wire
            plan.append((point, value))
        for point, value in plan:
            await bus.write(device, point, value)
        return dict(changes)
