"""Commands to our own BLE nodes through their GATT service (protocols.bthome.GATT): the
settings go to SETTINGS as a CBOR map, the node's verdict comes back on RESULT.

A node with a bind key takes only settings signed with it for its current challenge
(firmware/node/signed.py has the format): the gateway reads the challenge from STATUS,
signs ``{"set": {...}, "after": <the last advert counter it accepted>}`` and writes that.
"after" lets a node whose counter went back (its /state.json lost or rolled back) move
past what the gateway has accepted; ``resync`` sends it alone.

Connecting on demand, with retries: BLE connections fail often in the field (the node is
busy advertising, the air is crowded). On a real adapter bleak-retry-connector does the
connecting (it knows BlueZ's failure modes); on the virtual air a plain BleakClient.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from polekit.gateway.config import BleConfig, BleDeviceConfig
from polekit.gateway.sources.modbus_bus import DeviceNoResponse
from polekit.protocols import bthome, cbor, ccm

log = logging.getLogger("polekit.gateway.ble")
ATTEMPTS = 3
RESULT_TIMEOUT_S = 5.0
CHALLENGE_BYTES = 8
SALT_BYTES = 4
TAG_BYTES = 8


def sign_settings(key: bytes, challenge: bytes, msg: bytes, salt: bytes) -> bytes:
    """A signed SETTINGS write: ``msg`` (CBOR), ``salt``, and the 8-byte AES-CCM tag over
    ``msg`` (associated data, no plaintext) with the nonce ``challenge + salt``."""
    if len(challenge) != CHALLENGE_BYTES or len(salt) != SALT_BYTES:
        raise ValueError(f"challenge must be {CHALLENGE_BYTES} bytes and salt {SALT_BYTES}")
    return msg + salt + ccm.encrypt(key, challenge + salt, b"", TAG_BYTES, msg)


def _challenge(status: bytes, code: str) -> bytes:
    try:
        challenge = cbor.loads(status).get("challenge")
    except (ValueError, AttributeError):
        challenge = None
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise ValueError(
            f"{code} shows no settings challenge: its firmware predates signed settings, or "
            "it has no bind key while the gateway config gives one; update or re-provision it"
        )
    return challenge


async def open_client(
    config: BleConfig,
    address: str,
    name: str,
    disconnected: Callable[[Any], None] | None = None,
) -> Any:
    """A connected BleakClient to ``address`` (``name`` for the logs): on the virtual air
    when the config says so, else found on the adapter and connected by
    bleak-retry-connector. ``disconnected(client)`` is called when the link drops.
    DeviceNoResponse when the device is not in range; BleakError when connecting fails."""
    from bleak import BleakClient

    if config.air:
        from polekit.hil.bleak_air import AirClient

        client = BleakClient(
            address,
            disconnected_callback=disconnected,
            backend=AirClient,
            air=config.air,
            timeout=10,
        )
        await client.connect()
        return client
    from bleak import BleakScanner
    from bleak_retry_connector import establish_connection

    found = await BleakScanner.find_device_by_address(
        address, timeout=10, bluez={"adapter": config.adapter}
    )
    if found is None:
        raise DeviceNoResponse(f"{name}: {address} not in range")
    return await establish_connection(
        BleakClient, found, name, disconnected_callback=disconnected, max_attempts=ATTEMPTS
    )


class BleCommander:
    """Writes settings to BLE nodes, one connection at a time. ``last_counter(address)``
    gives the last advert counter the gateway accepted from a device (None if none)."""

    def __init__(
        self, config: BleConfig, last_counter: Callable[[str], int | None] | None = None
    ) -> None:
        self.config = config
        self.last_counter = last_counter or (lambda _address: None)
        self._lock = asyncio.Lock()  # one connection at a time on one adapter

    async def _exchange(self, device: BleDeviceConfig, changes: dict[str, Any]) -> bytes:
        client = await open_client(self.config, device.address, device.code)
        try:
            results: asyncio.Queue[bytes] = asyncio.Queue()
            await client.start_notify(
                bthome.GATT % 2, lambda _c, data: results.put_nowait(bytes(data))
            )
            body = cbor.dumps(changes)
            if device.bindkey is not None:
                challenge = _challenge(
                    bytes(await client.read_gatt_char(bthome.GATT % 3)), device.code
                )
                msg: dict[str, Any] = {"set": changes}
                after = self.last_counter(device.address)
                if after is not None:
                    msg["after"] = after
                body = sign_settings(device.bindkey, challenge, cbor.dumps(msg), os.urandom(4))
            await client.write_gatt_char(bthome.GATT % 1, body, response=True)
            async with asyncio.timeout(RESULT_TIMEOUT_S):
                return await results.get()
        finally:
            await client.disconnect()

    async def apply(self, device: BleDeviceConfig, changes: dict[str, Any]) -> dict[str, Any]:
        """Write ``changes`` to the node; the settings it applied. ValueError when the node
        refuses them (its reason), DeviceNoResponse when it cannot be reached."""
        return dict((await self._write(device, changes)).get("set", changes))

    async def resync(self, device: BleDeviceConfig) -> int | None:
        """Tell a keyed node the last counter accepted from it (a signed write with no
        settings), so it moves its epoch past it; the counter it goes on from."""
        counter = (await self._write(device, {})).get("counter")
        return counter if isinstance(counter, int) else None

    async def _write(self, device: BleDeviceConfig, changes: dict[str, Any]) -> dict[str, Any]:
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
        try:
            result = cbor.loads(raw)
        except ValueError:
            result = f"an unreadable result ({len(raw)} bytes)"
        if not isinstance(result, dict) or not result.get("ok"):
            error = result.get("error") if isinstance(result, dict) else result
            raise ValueError(f"{device.code} refused the settings: {error}")
        return result
