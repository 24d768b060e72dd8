"""A bleak backend on the virtual air (hil/air.py), so the gateway's real bleak code path
(BleakScanner, BleakClient, bleak-retry-connector) runs against emulated boards:

    BleakScanner(callback, backend=AirScanner, air="/tmp/air.sock")
    BleakClient(device, backend=AirClient, air="/tmp/air.sock")

Adverts arrive as bleak's ``BLEDevice`` and ``AdvertisementData`` (service data keyed by
128-bit UUID strings, the local name from the advert or scan response, RSSI); GATT services
come back as bleak's own service collection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic, CharacteristicPropertyName
from bleak.backends.client import BaseBleakClient
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError

_PROPERTIES: tuple[tuple[int, CharacteristicPropertyName], ...] = (
    (2, "read"),
    (4, "write-without-response"),
    (8, "write"),
    (16, "notify"),
)


def _uuid16(u: bytes) -> str:
    return f"0000{int.from_bytes(u, 'little'):04x}-0000-1000-8000-00805f9b34fb"


def parse_ad(data: bytes) -> dict[str, Any]:
    """Local name, service data, manufacturer data and service UUIDs of AD structures."""
    out: dict[str, Any] = {"name": None, "service_data": {}, "manufacturer_data": {}, "uuids": []}
    pos = 0
    while pos < len(data):
        size = data[pos]
        if size == 0 or pos + 1 + size > len(data):
            break
        kind, body = data[pos + 1], data[pos + 2 : pos + 1 + size]
        if kind in (0x08, 0x09):
            out["name"] = body.decode(errors="replace")
        elif kind == 0x16 and len(body) >= 2:
            out["service_data"][_uuid16(body[:2])] = bytes(body[2:])
        elif kind == 0xFF and len(body) >= 2:
            out["manufacturer_data"][int.from_bytes(body[:2], "little")] = bytes(body[2:])
        elif kind in (0x02, 0x03):
            out["uuids"] += [_uuid16(body[i : i + 2]) for i in range(0, len(body) - 1, 2)]
        pos += 1 + size
    return out


class AirScanner(BaseBleakScanner):
    """Passive scanning on the virtual air."""

    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str = "passive",
        *,
        air: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.air = air
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        try:
            reader, self._writer = await asyncio.open_unix_connection(self.air)
        except OSError as exc:
            raise BleakError(f"virtual air {self.air}: {exc}") from None
        self._writer.write(b'{"op": "hello", "role": "central"}\n')
        await self._writer.drain()
        self._task = asyncio.get_running_loop().create_task(self._listen(reader))

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if msg.get("ev") != "adv":
                continue
            data = bytes.fromhex(msg.get("data", ""))
            resp = bytes.fromhex(msg.get("resp", ""))
            ad = parse_ad(data)
            scan = parse_ad(resp)
            name = ad["name"] or scan["name"]
            uuids = ad["uuids"] + scan["uuids"]
            if not self.is_allowed_uuid(uuids + list(ad["service_data"])):
                continue
            adv = AdvertisementData(
                local_name=name,
                manufacturer_data=ad["manufacturer_data"],
                service_data=ad["service_data"],
                service_uuids=uuids,
                tx_power=None,
                rssi=int(msg.get("rssi", -60)),
                platform_data=(msg,),
            )
            device = self.create_or_update_device(msg["addr"], msg["addr"], name, msg, adv)
            self.call_detection_callbacks(device, adv)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()
        self._task = self._writer = None


class AirClient(BaseBleakClient):
    """A GATT connection over the virtual air."""

    def __init__(self, address_or_ble_device: Any, *, air: str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=kwargs.get("timeout", 10.0),
        )
        self.air = air
        self._conn: int | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._notify: dict[int, Any] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def mtu_size(self) -> int:
        return 247

    @property
    def name(self) -> str:
        return self.address

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    async def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self._writer is None:
            raise BleakError(f"{self.address}: not connected")
        n = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[n] = future
        self._writer.write((json.dumps({**msg, "id": n}) + "\n").encode())
        await self._writer.drain()
        try:
            reply = await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            raise BleakError(f"{self.address}: no answer in {self._timeout} s") from None
        finally:
            self._waiting.pop(n, None)
        if "error" in reply:
            raise BleakError(f"{self.address}: {reply['error']}")
        return reply

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if "reply" in msg:
                future = self._waiting.get(msg["reply"])
                if future is not None and not future.done():
                    future.set_result(msg)
            elif msg.get("ev") == "notify":
                callback = self._notify.get(int(msg["handle"]))
                if callback is not None:
                    callback(bytearray.fromhex(msg["data"]))
            elif msg.get("ev") == "disconnect":
                self._gone()
        self._gone()

    def _gone(self) -> None:
        was = self._conn is not None
        self._conn = None
        # a write or read in flight fails at once, as on a real link (no wait for the timeout)
        for future in self._waiting.values():
            if not future.done():
                future.set_result({"error": "disconnected"})
        if was and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def connect(self, pair: bool = False, **kwargs: Any) -> None:
        try:
            reader, self._writer = await asyncio.open_unix_connection(self.air)
        except OSError as exc:
            raise BleakError(f"virtual air {self.air}: {exc}") from None
        self._writer.write(b'{"op": "hello", "role": "central"}\n')
        self._task = asyncio.get_running_loop().create_task(self._listen(reader))
        reply = await self._call({"op": "connect", "addr": self.address})
        self._conn = int(reply["conn"])
        services = BleakGATTServiceCollection()
        for i, s in enumerate(reply.get("services", [])):
            first = s["chars"][0]["handle"] - 1 if s["chars"] else 1000 + i
            service = BleakGATTService(s, first, s["uuid"])
            services.add_service(service)
            for c in s["chars"]:
                props: list[CharacteristicPropertyName] = [
                    name for bit, name in _PROPERTIES if c["flags"] & bit
                ]
                services.add_characteristic(
                    BleakGATTCharacteristic(c, c["handle"], c["uuid"], props, lambda: 244, service)
                )
        self.services = services

    async def disconnect(self) -> None:
        if self._writer is not None and self._conn is not None:
            self._writer.write(
                (json.dumps({"op": "disconnect", "conn": self._conn}) + "\n").encode()
            )
            await self._writer.drain()
        self._conn = None
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()
        self._writer = self._task = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the virtual air has no pairing")

    async def unpair(self) -> None:
        raise NotImplementedError("the virtual air has no pairing")

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        reply = await self._call(
            {"op": "read", "conn": self._conn, "handle": characteristic.handle}
        )
        return bytearray.fromhex(reply["data"])

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        raise BleakError("the virtual air has no descriptors")

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        await self._call(
            {
                "op": "write",
                "conn": self._conn,
                "handle": characteristic.handle,
                "data": bytes(data).hex(),
            }
        )

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise BleakError("the virtual air has no descriptors")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: Any, **kwargs: Any
    ) -> None:
        self._notify[characteristic.handle] = callback

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._notify.pop(characteristic.handle, None)
