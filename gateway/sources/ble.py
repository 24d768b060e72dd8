"""BLE source: BTHome v2 adverts heard through bleak, decoded, de-duplicated, into the same
pipeline and durable queue as Modbus polls.

Passive scanning (BlueZ needs an advertisement monitor pattern for that: BTHome's service
data UUID). Each advert from a configured address is decoded with its bind key (when it has
one). Devices repeat each advert many times (BLE has no acknowledgement; our community node
holds an event on the air for seconds so that a busy scanner hears it): the same advert
again, or the same BTHome packet id, is a duplicate; an encrypted advert whose counter went
backwards is a replay. Both are counted and dropped (one press is one event), as are
adverts from unknown addresses, with a wrong key, truncated or with unknown objects. Button
presses and alarms in trigger-based adverts become events; measurements become readings. A
device silent for three of its intervals is offline.

The last accepted counter of each encrypted device is kept on disk (gateway/ble_counters.py)
and committed before the advert's reading or event is handed on, so a restarted gateway
refuses what it accepted before. A device whose authentic adverts keep coming with counters
below that one (a node that lost or rolled back its /state.json, or someone playing back a
captured series) is "behind": counted, logged once with what to do, shown on /health, and
handed to ``on_behind`` (the gateway sends our nodes an authenticated resync over GATT).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from polekit.gateway.ble_counters import BleCounterStore
from polekit.gateway.config import BleConfig, BleDeviceConfig
from polekit.protocols import bthome
from polekit.protocols.errors import DecryptionError, ProtocolError

log = logging.getLogger("polekit.gateway.ble")

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
EVENT_OBJECTS = ("button", "dimmer")  # always events
ALARM_OBJECTS = ("smoke", "water", "moisture_b", "gas", "co", "tamper", "problem", "safety")
MISSED_INTERVALS = 3
BEHIND_ADVERTS = 3  # authentic adverts in a row, each newer than the last, all below the mark
RESYNC_EVERY_S = 600.0  # at most one resync per device this often (each is a connection)

Readings = Callable[[str, list[tuple[str, Any, str | None]], float], Awaitable[None]]
Events = Callable[[str, dict[str, Any]], Awaitable[None]]
# a device whose counter went back, and the last counter accepted from it
Behind = Callable[[BleDeviceConfig, int], None]


@dataclass
class Counters:
    adverts: int = 0
    decoded: int = 0
    duplicates: int = 0
    replays: int = 0
    unknown_device: int = 0
    bad_key: int = 0
    malformed: int = 0
    not_bthome: int = 0
    behind: int = 0  # episodes of a device's counter going back (see the module docstring)
    counter_store_errors: int = 0  # accepted counters the database refused to keep


@dataclass
class BleDeviceState:
    config: BleDeviceConfig
    online: bool = False
    last_seen: float | None = None
    rssi: int | None = None
    packet_id: int | None = None
    last_advert: bytes = b""  # the last new advert's service data, to spot its repeats
    counter: int = -1
    behind_last: int = -1  # the newest counter seen below ``counter``
    behind_run: int = 0  # authentic adverts below ``counter``, each newer than the last
    behind: bool = False
    resync_at: float | None = None  # monotonic time of the last on_behind call
    adverts: int = 0
    last_values: dict[str, Any] = field(default_factory=dict)


def unit_of(name: str) -> str | None:
    rows = bthome.objects_named(name)
    return rows[0][5] if rows else None


def event_name(device_code: str, obj: str) -> str:
    """SOS buttons' presses are "sos" events; other objects keep their BTHome name."""
    return "sos" if obj == "button" and device_code[6:8] == "SO" else obj


def scanner_kwargs(config: BleConfig) -> dict[str, Any]:
    """bleak arguments: the virtual air's backend, or passive BlueZ scanning on the adapter."""
    if config.air:
        from polekit.hil.bleak_air import AirScanner

        return {"backend": AirScanner, "air": config.air}
    from bleak.args.bluez import OrPattern
    from bleak.assigned_numbers import AdvertisementDataType

    return {
        "scanning_mode": "passive",
        "bluez": {
            "adapter": config.adapter,
            "or_patterns": [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")],
        },
    }


class BleSource:
    def __init__(
        self,
        config: BleConfig,
        devices: list[BleDeviceConfig],
        on_readings: Readings,
        on_event: Events,
        counters: BleCounterStore | None = None,
        on_behind: Behind | None = None,
        on_status: Callable[[str, bool, float], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.on_status = on_status
        self.devices = {d.address.upper(): BleDeviceState(d) for d in devices}
        self.on_readings = on_readings
        self.on_event = on_event
        self.on_behind = on_behind
        self.store = counters
        self.counters = Counters()
        self._store_failing = False
        if counters is not None:
            for address, st in self.devices.items():
                if st.config.bindkey is not None:
                    st.counter = counters.load(address, st.config.bindkey)
        self.scanning = False
        self.last_error = ""
        self._queue: asyncio.Queue[tuple[str, int | None, bytes, float]] = asyncio.Queue()

    def _heard(self, device: Any, adv: Any) -> None:
        # bleak's callback: cheap, no awaits; the work happens in run()
        self.counters.adverts += 1
        sd = adv.service_data.get(BTHOME_UUID)
        if sd is None:
            self.counters.not_bthome += 1
            return
        self._queue.put_nowait((device.address.upper(), adv.rssi, bytes(sd), time.time()))

    async def handle(self, address: str, rssi: int | None, sd: bytes, t: float) -> None:
        """One BTHome advert (service data after the UUID) from ``address``."""
        st = self.devices.get(address)
        if st is None:
            self.counters.unknown_device += 1
            return
        if sd == st.last_advert:  # the radio repeating it (cheap: nothing to decrypt)
            self.counters.duplicates += 1
            return
        cfg = st.config
        mac = bytes.fromhex(address.replace(":", ""))
        counter = None
        try:
            if sd and sd[0] & bthome.INFO_ENCRYPTED:
                if cfg.bindkey is None:
                    self.counters.bad_key += 1
                    return
                plain, counter = bthome.decrypt(sd, cfg.bindkey, mac)
                values = bthome.decode(plain)
            else:
                if cfg.bindkey is not None:  # a keyed device sending in the clear: a spoof
                    self.counters.bad_key += 1
                    return
                values = bthome.decode(sd)
        except DecryptionError:  # wrong key, or forged
            self.counters.bad_key += 1
            return
        except ProtocolError as exc:  # truncated, unknown object, bad version
            self.counters.malformed += 1
            log.debug("%s: advert dropped: %s", cfg.code, exc)
            return
        if counter is not None:
            if counter <= st.counter:
                self.counters.replays += 1
                self._behind(st, counter)
                return
            await self._accept_counter(address, st, counter)
        packet_id = values.pop("packet_id", None)
        if packet_id is not None and packet_id == st.packet_id:
            self.counters.duplicates += 1
            return
        st.packet_id = packet_id
        st.last_advert = sd
        self.counters.decoded += 1
        st.adverts += 1
        st.rssi = rssi
        st.last_seen = t
        if not st.online:
            st.online = True
            log.info("%s (%s) online", cfg.code, address)
            if self.on_status is not None:
                await self.on_status(cfg.code, True, t)
        trigger = bool(sd[0] & bthome.INFO_TRIGGER)
        readings: list[tuple[str, Any, str | None]] = []
        for name, value in values.items():
            for v in value if isinstance(value, list) else [value]:
                if name in EVENT_OBJECTS or (trigger and name in ALARM_OBJECTS):
                    if name in EVENT_OBJECTS and v in (None, "none"):
                        continue
                    await self.on_event(
                        cfg.code,
                        {"event": event_name(cfg.code, name), "value": v, "t": t, "rssi": rssi},
                    )
                if name not in EVENT_OBJECTS and isinstance(v, (int, float, bool)):
                    readings.append((name, v, unit_of(name)))
        st.last_values.update(values)
        if readings:
            await self.on_readings(cfg.code, readings, t)

    async def _accept_counter(self, address: str, st: BleDeviceState, counter: int) -> None:
        # on disk before the reading counts (module docstring); a database that refuses it
        # does not stop the readings: the mark is kept in memory, counted, logged once
        if st.behind:
            st.behind = False
            log.warning(
                "%s: counter %d is past the last accepted one again: adverts accepted",
                st.config.code,
                counter,
            )
        st.counter = counter
        st.behind_run, st.behind_last = 0, -1
        if self.store is None or st.config.bindkey is None:
            return
        try:
            await self.store.save(address, st.config.bindkey, counter)
        except sqlite3.Error as exc:
            self.counters.counter_store_errors += 1
            if not self._store_failing:
                log.error(
                    "BLE counters cannot be stored (%s): a restart could accept adverts "
                    "heard before it; counting in counter_store_errors",
                    exc,
                )
            self._store_failing = True
            return
        if self._store_failing:
            log.warning("BLE counters are stored again")
        self._store_failing = False

    def _behind(self, st: BleDeviceState, counter: int) -> None:
        # a replay, or a node whose counter really went back: the latter keeps sending new
        # adverts, each with a higher counter, all below the mark
        if counter > st.behind_last:
            st.behind_run += 1
        st.behind_last = max(st.behind_last, counter)
        if st.behind_run < BEHIND_ADVERTS:
            return
        now = time.monotonic()
        if not st.behind:
            st.behind = True
            self.counters.behind += 1
            log.warning(
                "%s: authentic adverts with counter %d, below %d accepted before: the node "
                "lost or rolled back its state (or captured adverts are played back); they are "
                "refused. %s",
                st.config.code,
                counter,
                st.counter,
                "The gateway sends it a resync over GATT."
                if self.on_behind is not None
                else "Give the device a new bind key to start its count afresh.",
            )
        if self.on_behind is not None and (
            st.resync_at is None or now - st.resync_at >= RESYNC_EVERY_S
        ):
            st.resync_at = now
            self.on_behind(st.config, st.counter)

    def last_counter(self, address: str) -> int | None:
        """The last counter accepted from ``address`` (None before any)."""
        st = self.devices.get(address.upper())
        return None if st is None or st.counter < 0 else st.counter

    async def _check_offline(self) -> None:
        now = time.time()
        for st in self.devices.values():
            limit = st.config.interval_s * MISSED_INTERVALS
            if st.online and st.last_seen is not None and now - st.last_seen > limit:
                st.online = False
                log.warning("%s silent for %.0f s: offline", st.config.code, now - st.last_seen)
                if self.on_status is not None:
                    await self.on_status(st.config.code, False, now)

    async def run(self) -> None:
        """Scan until cancelled; a lost adapter or air is retried every few seconds."""
        from bleak import BleakScanner

        while True:
            scanner = None
            try:
                scanner = BleakScanner(self._heard, **scanner_kwargs(self.config))
                await scanner.start()
                self.scanning = True
                self.last_error = ""
                while True:
                    try:
                        async with asyncio.timeout(1.0):
                            item = await self._queue.get()
                    except TimeoutError:
                        await self._check_offline()
                        continue
                    await self.handle(*item)
                    await self._check_offline()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - bleak/BlueZ errors: kept, retried
                self.scanning = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("BLE scanning stopped: %s; retrying in 5 s", self.last_error)
                await asyncio.sleep(5)
            finally:
                self.scanning = False
                if scanner is not None:
                    try:
                        await scanner.stop()
                    except Exception:  # noqa: BLE001, S110 - already failing; nothing to add
                        pass

    def health(self) -> list[dict[str, Any]]:
        """Device rows shaped like the Modbus ones (bus "ble", the address as unit, adverts
        as polls), so /health, /metrics and `gateway status` show both alike."""
        now = time.time()
        return [
            {
                "code": st.config.code,
                "bus": "ble",
                "unit": addr,
                "transport": "ble",
                "online": st.online if st.last_seen is not None else None,
                "polls": st.adverts,
                "failures": 0,
                "last_ok": st.last_seen,
                "last_error": f"counter went back below {st.counter}: adverts refused"
                if st.behind
                else ""
                if st.online or st.last_seen is None
                else f"silent for {now - st.last_seen:.0f} s",
                "rssi": st.rssi,
                "counter": None if st.counter < 0 else st.counter,
                "behind": st.behind,
            }
            for addr, st in self.devices.items()
        ]
