"""Issue 13 item 3: a restarted gateway refuses encrypted adverts it accepted before (the
last counter of each device is in its database), and a node whose counter went back is
told, over an authenticated GATT write, to move past it instead of being silenced for good.

On real parts: the BLE source with the counter store on a real SQLite file across two
opens; `polekit gateway run` processes killed with -9 and started again on the virtual
air; the community node firmware on the emulated board, with a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from gwproc import GatewayProcess, write_config

from polekit.firmware.install import install
from polekit.gateway.app import Gateway
from polekit.gateway.ble_counters import BleCounterStore
from polekit.gateway.config import BleConfig, BleDeviceConfig, parse_config
from polekit.gateway.queue import DurableQueue
from polekit.gateway.sources.ble import BleSource
from polekit.hil.air import AirPeripheral, VirtualAir
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import bthome, identity

from gwkit import Collector, gateway_running, run, until, values_of

THERMO = identity.make("371600", "TH", 4)
ADDR = "A4:C1:38:00:00:04"
MAC = bytes.fromhex(ADDR.replace(":", ""))
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SOS = identity.make("371600", "SO", 4)


@pytest.fixture(scope="module")
def broker():  # type: ignore[no-untyped-def]
    with LocalBroker() as b:
        yield b


def source(store: BleCounterStore, readings: list[Any], key: bytes = KEY) -> BleSource:
    async def on_readings(code: str, r: Any, t: float) -> None:
        readings.append(r)

    async def on_event(code: str, body: Any) -> None:
        pass

    return BleSource(
        BleConfig(air="unused"),
        [BleDeviceConfig(THERMO, ADDR, key, 5.0)],
        on_readings,
        on_event,
        counters=store,
    )


def test_the_last_counter_survives_a_reopen_and_a_new_key_counts_afresh(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    DurableQueue(db).close()  # the file as the gateway has it: the queue made it
    captured = bthome.encode({"temperature": 21.0}, 1, key=KEY, mac=MAC, counter=0x00050010)
    newer = bthome.encode({"temperature": 21.5}, 2, key=KEY, mac=MAC, counter=0x00050011)

    readings: list[Any] = []
    store = BleCounterStore(db)
    asyncio.run(source(store, readings).handle(ADDR, -60, captured, 0))
    store.close()
    assert len(readings) == 1

    store = BleCounterStore(db)  # the gateway restarted
    src = source(store, readings)
    asyncio.run(src.handle(ADDR, -60, captured, 0))  # played back, or still on the air
    assert len(readings) == 1 and src.counters.replays == 1
    asyncio.run(src.handle(ADDR, -60, newer, 0))
    assert len(readings) == 2 and src.last_counter(ADDR) == 0x00050011
    store.close()

    # the device given a new key starts its count afresh: nothing of the old key holds it
    key2 = bytes(range(16))
    fresh = bthome.encode({"temperature": 22.0}, 3, key=key2, mac=MAC, counter=1)
    store = BleCounterStore(db)
    src = source(store, readings, key2)
    asyncio.run(src.handle(ADDR, -60, fresh, 0))
    assert len(readings) == 3 and src.counters.replays == 0
    store.close()
    # the queue still opens and works beside the table (its writer is untouched)
    queue = DurableQueue(db)
    assert queue.depth == 0
    queue.close()


def test_a_refused_counter_write_is_counted_and_readings_go_on(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    DurableQueue(db).close()
    store = BleCounterStore(db)
    readings: list[Any] = []
    src = source(store, readings)
    blocker = sqlite3.connect(db, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file past the busy timeout
    try:
        store._db.execute("PRAGMA busy_timeout = 50")  # not 5 s: a test, not a field wait
        advert = bthome.encode({"temperature": 20.0}, 1, key=KEY, mac=MAC, counter=9)
        asyncio.run(src.handle(ADDR, -60, advert, 0))
    finally:
        blocker.rollback()
        blocker.close()
    assert len(readings) == 1 and src.counters.counter_store_errors == 1
    assert src.last_counter(ADDR) == 9  # still refused as a replay while this run lasts
    store.close()


class Advertiser:
    """A device on the air sending one advert again and again, as a node repeats it and
    as someone who captured it plays it back."""

    def __init__(self, air: str) -> None:
        self.link = AirPeripheral(air, ADDR)
        self.data = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.data:
                self.link.advertise(self.data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.link.close()


def test_a_gateway_killed_and_restarted_refuses_the_advert_it_accepted(
    broker: LocalBroker, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "gateway.toml",
        tmp_path / "data",
        broker.url,
        [{"code": THERMO, "transport": "ble", "address": ADDR, "bindkey": KEY.hex()}],
        [],
    )
    with VirtualAir(tmp_path / "air.sock") as air:
        config.write_text(config.read_text() + f'[ble]\nair = "{air.path}"\n')
        log = tmp_path / "gateway.log"
        device = Advertiser(air.path)
        captured = bthome.advert(
            bthome.encode({"temperature": 21.0}, 1, key=KEY, mac=MAC, counter=0x00020001)
        )

        async def scenario() -> None:
            async with Collector(broker.host, broker.port) as sub:
                gw = GatewayProcess(config, log)
                try:
                    await until(lambda: _ble(gw) is not None, 30, "the first gateway's status")
                    device.data = captured
                    await until(lambda: sub.packs(THERMO), 15, "the advert's pack")
                    assert _ble(gw)["counters"]["decoded"] == 1  # its repeats: duplicates
                finally:
                    os.kill(gw.proc.pid, signal.SIGKILL)  # no clean shutdown to lean on
                    gw.proc.wait()
                gw = GatewayProcess(config, log)
                try:
                    await until(
                        lambda: (_ble(gw) or {}).get("counters", {}).get("replays", 0) >= 3,
                        30,
                        "the captured advert refused by the restarted gateway",
                    )
                    health = _ble(gw)
                    assert health["counters"]["decoded"] == 0, health
                    # nothing new reached the broker; the first pack may come twice (kill -9
                    # can come before its acknowledgement was written: at-least-once)
                    assert _seqs(sub.packs(THERMO)) == {1}
                    device.data = bthome.advert(
                        bthome.encode({"temperature": 23.0}, 2, key=KEY, mac=MAC, counter=0x20002)
                    )
                    await until(lambda: _seqs(sub.packs(THERMO)) == {1, 2}, 15, "the newer advert")
                    assert values_of(sub.packs(THERMO)[-1])["temperature"] == (23.0, "Cel")
                finally:
                    gw.proc.terminate()
                    gw.proc.wait()

        try:
            run(scenario(), timeout_s=120)
        finally:
            device.close()


def _seqs(packs: list[list[dict[str, Any]]]) -> set[int]:
    return {values_of(p)["seq"][0] for p in packs}


def _ble(gw: GatewayProcess) -> Any:
    try:
        health = gw.health()
    except OSError:
        return None
    return None if health is None else health["ble"]


def test_a_node_whose_state_was_lost_is_resynced_and_heard_again(
    broker: LocalBroker, tmp_path: Path
) -> None:
    # the gateway accepted counters up to epoch 40 from this node; the node lost its
    # /state.json (a new board with the same key, a flash rolled back) and counts from
    # epoch 1 again: its adverts are authentic but below the mark. The gateway sends it a
    # signed resync; the node moves to epoch 41, keeps it on flash, and is heard again.
    flash = tmp_path / "fs"
    key = KEY.hex()
    install(flash, "community-sos-esp32c3", {"device_code": SOS, "advert_s": 1, "bindkey": key})
    data = tmp_path / "data"
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard("community-sos-esp32c3", fs_dir=flash, air=air.path) as board,
    ):
        config = parse_config(
            {
                "gateway": {"id": "gw-resync", "data_dir": str(data)},
                "mqtt": {"url": broker.url, "format": "senml+json"},
                "ble": {"air": air.path},
                "device": [
                    {
                        "code": SOS,
                        "transport": "ble",
                        "address": board.mac,
                        "bindkey": key,
                        "interval": 1,
                    }
                ],
                "status": {"port": 0},
            }
        )
        DurableQueue(config.queue_path).close()
        store = BleCounterStore(config.queue_path)
        mark = 40 << 16 | 1234
        asyncio.run(store.save(board.mac, KEY, mark))
        store.close()

        async def scenario() -> dict[str, Any]:
            gw = Gateway(config)
            async with gateway_running(gw, broker.host, broker.port) as sub:
                await until(lambda: sub.packs(SOS, "senml+json"), 40, "the node heard again")
                health = gw.health()
                assert gw.ble is not None
                counter = gw.ble.last_counter(board.mac)
                assert counter is not None and counter >> 16 == 41, hex(counter or 0)
                return health

        health = run(scenario(), timeout_s=90)
    ble = health["ble"]
    assert ble["counters"]["behind"] == 1 and ble["counters"]["replays"] >= 3, ble
    assert ble["resyncs"] == {"sent": 1, "failed": 0}, ble
    assert json.loads((flash / "state.json").read_text())["ble_epoch"] == 41
    assert not (flash / "state.json.new").exists()
    print(f"resynced after {ble['counters']['replays']} refused adverts")
