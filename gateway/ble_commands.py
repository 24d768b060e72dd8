"""Commands to our own BLE nodes through their GATT service (protocols.bthome.GATT): the
settings go to SETTINGS as a CBOR map, the node's verdict comes back on RESULT.

Connecting on demand, with retries: BLE connections fail often in the field (the node is
busy advertising, the air is crowded). On a real adapter bleak-retry-connector does the
connecting (it knows BlueZ's failure modes); on the virtual air a plain BleakClient.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from polekit.gateway.config import BleConfig, BleDeviceConfig
from polekit.gateway.sources.modbus_bus import DeviceNoResponse
from polekit.protocols import bthome, cbor

log = logging.getLogger("polekit.gateway.ble")
ATTEMPTS = 3
RESULT_TIMEOUT_S = 5.0


class BleCommander:
    def __init__(self, config: BleConfig) -> None:
        self.config = config
        self._lock = asyncio.Lock()  # one connection at a time on one adapter

    async def _client(self, device: BleDeviceConfig) -> Any:
        from bleak import BleakClient

        if self.config.air:
            from polekit.hil.bleak_air import AirClient

            client = BleakClient(device.address, backend=AirClient, air=self.config.air, timeout=10)
            await client.connect()
            return client
        from bleak import BleakScanner
        from bleak_retry_connector import establish_connection

        found = await BleakScanner.find_device_by_address(
            device.address, timeout=10, bluez={"adapter": self.config.adapter}
        )
        if found is None:
            raise DeviceNoResponse(f"{device.code}: {device.address} not in range")
        return await establish_connection(BleakClient, found, device.code, max_attempts=ATTEMPTS)

    async def _exchange(self, device: BleDeviceConfig, changes: dict[str, Any]) -> bytes:
        client = await self._client(device)
        try:
            results: asyncio.Queue[bytes] = asyncio.Queue()
            await client.start_notify(
                bthome.GATT % 2, lambda _c, data: results.put_nowait(bytes(data))
            )
            await client.write_gatt_char(bthome.GATT % 1, cbor.dumps(changes), response=True)
            return await asyncio.wait_for(results.get(), RESULT_TIMEOUT_S)
        finally:
            await client.disconnect()

    async def apply(self, device: BleDeviceConfig, changes: dict[str, Any]) -> dict[str, Any]:
        """Write ``changes`` to the node; the settings it applied. ValueError when the node
        refuses them (its reason), DeviceNoResponse when it cannot be reached."""
        from bleak.exc import BleakError

        last = ""
        async with self._lock:
            for attempt in range(ATTEMPTS):
                try:
                    raw = await self._exchange(device, changes)
                    break
                except (BleakError, TimeoutError, OSError) as exc:
                    last = str(exc) or type(exc).__name__
                    log.info("%s: GATT attempt %d failed: %s", device.code, attempt + 1, last)
                    await asyncio.sleep(0.3 * 2**attempt)
            else:
                raise DeviceNoResponse(f"{device.code} did not take the command over BLE: {last}")
        result = cbor.loads(raw)
        if not isinstance(result, dict) or not result.get("ok"):
            raise ValueError(str(result.get("error") if isinstance(result, dict) else result))
        return dict(result.get("set", changes))
