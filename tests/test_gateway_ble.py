"""BLE through the gateway's real bleak code path, on the virtual air: an emulated community
board (the node firmware) and simulated third-party BTHome sensors advertise; the gateway
scans, decodes (with bind keys), de-duplicates, publishes readings and events, and sends a
lamp command to the node over GATT."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from polekit.firmware.install import install
from polekit.gateway.app import Gateway
from polekit.gateway.config import BleConfig, BleDeviceConfig, parse_config
from polekit.gateway.sources.ble import BTHOME_UUID, BleSource
from polekit.gateway.status import metrics_text
from polekit.hil.air import AirPeripheral, SimulatedBTHomeDevice, VirtualAir
from polekit.hil.bleak_air import parse_ad
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import bthome, identity

from boardkit import polekit_emulate
from gwkit import Collector, gateway_running, run, until, values_of

SOS = identity.make("371600", "SO", 1)
THERMO = identity.make("371600", "TH", 1)
THERMO_ADDR = "A4:C1:38:00:00:01"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


@pytest.fixture(scope="module")
def broker():  # type: ignore[no-untyped-def]
    with LocalBroker() as b:
        yield b


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The virtual air, one emulated community board and an encrypted room thermometer."""
    tmp = tmp_path_factory.mktemp("ble")
    with VirtualAir(tmp / "air.sock") as air:
        flash = tmp / "fs"
        install(flash, "community-sos-esp32c3", {"device_code": SOS, "advert_s": 1})
        with EmulatedBoard("community-sos-esp32c3", fs_dir=flash, air=air.path) as board:
            board.set("battery.voltage", 3.9)
            thermo = SimulatedBTHomeDevice(
                air.path,
                THERMO_ADDR,
                lambda: {"temperature": 22.5, "humidity": 41.0, "battery": 90},
                every_s=0.5,
                key=KEY,
            )
            try:
                yield air, board
            finally:
                thermo.close()


def latest_values(board: EmulatedBoard) -> dict[str, Any]:
    """What the node's radio sends now (its last advert, decoded)."""
    _t, data = board.get("ble.adverts")[-1]
    return bthome.decode(parse_ad(bytes.fromhex(data))["service_data"][BTHOME_UUID])


def gateway_for(tmp: Path, broker: LocalBroker, air: VirtualAir, board: EmulatedBoard) -> Gateway:
    return Gateway(
        parse_config(
            {
                "gateway": {"id": "gw-ble", "data_dir": str(tmp)},
                "mqtt": {"url": broker.url, "format": "senml+json"},
                "ble": {"air": air.path},
                "device": [
                    {"code": SOS, "transport": "ble", "address": board.mac, "interval": 1},
                    {
                        "code": THERMO,
                        "transport": "ble",
                        "address": THERMO_ADDR,
                        "bindkey": KEY.hex(),
                        "interval": 0.5,
                    },
                ],
                "status": {"port": 0},
            },
            tmp / "gateway.toml",
        )
    )


def test_sos_press_reaches_the_broker_as_an_event_within_a_second(
    broker: LocalBroker, street: Any, tmp_path: Path
) -> None:
    air, board = street

    async def scenario() -> float:
        gw = gateway_for(tmp_path, broker, air, board)
        async with gateway_running(gw, broker.host, broker.port) as sub:
            await until(lambda: gw.ble is not None and gw.ble.scanning, what="scanning")
            await until(lambda: sub.packs(SOS, "senml+json"), what="the node's adverts")
            pressed = time.monotonic()
            await asyncio.to_thread(board.set, "sos.press", 200)
            await until(lambda: sub.on(f"/event/{SOS}"), timeout_s=5, what="the SOS event")
            latency = time.monotonic() - pressed
            event = json.loads(sub.on(f"/event/{SOS}")[0].payload)
            assert event["event"] == "sos" and event["value"] == "press"
            # the node repeats the event advert; the gateway publishes it once
            await asyncio.sleep(1.0)
            assert len(sub.on(f"/event/{SOS}")) == 1
            assert gw.ble is not None and gw.ble.counters.duplicates >= 1
            await until(  # a measurement advert after the test set the battery
                lambda: values_of(sub.packs(SOS, "senml+json")[-1]).get("battery") == (82, "%EL"),
                what="the battery reading",
            )
            # BLE devices show in /health and /metrics like Modbus ones
            health = gw.health()
            row = next(d for d in health["devices"] if d["code"] == SOS)
            assert row["bus"] == "ble" and row["online"] is True and row["polls"] > 0
            assert row["seq"] >= 1 and health["ble"]["counters"]["decoded"] > 0
            assert f'polekit_device_online{{device="{SOS}",bus="ble"}} 1' in metrics_text(health)
            return latency

    latency = run(scenario())
    print(f"SOS press to the broker: {latency:.2f} s (the press itself lasts 0.2 s)")
    assert latency < 1.0


def test_encrypted_third_party_readings_and_a_lamp_command_over_gatt(
    broker: LocalBroker, street: Any, tmp_path: Path
) -> None:
    air, board = street

    async def scenario() -> None:
        gw = gateway_for(tmp_path, broker, air, board)
        async with gateway_running(gw, broker.host, broker.port) as sub:
            await until(lambda: sub.packs(THERMO, "senml+json"), what="thermometer packs")
            values = values_of(sub.packs(THERMO, "senml+json")[-1])
            assert values["temperature"] == (22.5, "Cel") and values["humidity"] == (
                41.0,
                "%RH",
            )
            cmd = gw.config.topic("cmd", SOS)
            await sub.publish(cmd, b'{"id": 7, "set": {"lamp_level": 40}}')
            await sub.publish(cmd, b'{"id": 8, "set": {"lamp_level": 400}}')
            await until(lambda: len(sub.on(f"/cmd-result/{SOS}")) == 2, what="2 results")
            results = {
                r["id"]: r for r in (json.loads(m.payload) for m in sub.on(f"/cmd-result/{SOS}"))
            }
            assert results[7] == {"id": 7, "ok": True, "set": {"lamp_level": 40}}
            assert results[8]["ok"] is False and "out of range" in results[8]["error"]
            assert await asyncio.to_thread(board.get, "lamp.level") == 40.0
            assert gw.commands.last_rtt_ms is not None

    run(scenario())


def test_bad_adverts_are_counted_and_dropped() -> None:
    events: list[Any] = []
    readings: list[Any] = []

    async def on_readings(code: str, r: Any, t: float) -> None:
        readings.append((code, r))

    async def on_event(code: str, body: Any) -> None:
        events.append((code, body))

    source = BleSource(
        BleConfig(air="unused"),
        [
            BleDeviceConfig(THERMO, THERMO_ADDR, KEY, 5.0),
            BleDeviceConfig(SOS, "AA:BB:CC:DD:EE:01", None, 5.0),
        ],
        on_readings,
        on_event,
    )
    mac = bytes.fromhex(THERMO_ADDR.replace(":", ""))
    good = bthome.encode({"temperature": 21.0}, 1, key=KEY, mac=mac, counter=10)
    newer = bthome.encode({"temperature": 21.5}, 4, key=KEY, mac=mac, counter=12)
    wrong_key = bthome.encode({"temperature": 99.0}, 2, key=bytes(16), mac=mac, counter=11)
    plain_spoof = bthome.encode({"temperature": 99.0}, 3)
    press = bthome.encode({"button": "press"}, 5, trigger=True)

    async def feed() -> None:
        await source.handle(THERMO_ADDR, -60, good, 0)
        await source.handle(THERMO_ADDR, -60, good, 0)  # the radio repeating it
        await source.handle(THERMO_ADDR, -60, newer, 0)
        await source.handle(THERMO_ADDR, -60, good, 0)  # replayed: its counter went back
        await source.handle(THERMO_ADDR, -60, wrong_key, 0)
        await source.handle(THERMO_ADDR, -60, plain_spoof, 0)  # keyed device, clear text
        await source.handle("AA:BB:CC:DD:EE:01", -60, press, 0)
        await source.handle("AA:BB:CC:DD:EE:01", -60, press, 0)  # repeated packet id
        await source.handle("AA:BB:CC:DD:EE:01", -60, press[:-1], 0)  # truncated
        await source.handle("AA:BB:CC:DD:EE:01", -60, b"\x40\x00\x09\xfe\x01", 0)  # unknown id
        await source.handle("11:22:33:44:55:66", -60, press, 0)  # nobody we know

    asyncio.run(feed())
    c = source.counters
    assert (c.decoded, c.replays, c.bad_key, c.duplicates) == (3, 1, 2, 2)
    assert (c.malformed, c.unknown_device) == (2, 1)
    assert readings == [
        (THERMO, [("temperature", 21.0, "Cel")]),
        (THERMO, [("temperature", 21.5, "Cel")]),
    ]
    assert [e[1]["event"] for e in events] == ["sos"]


def test_an_independently_built_advert_decodes_like_ours(
    broker: LocalBroker, tmp_path: Path
) -> None:
    # the BTHome v2 format page's example: 25.06 Cel, 50.55 %RH (0x40 02 ca09 03 bf13), with
    # a packet id; built by hand here, not by our encoder
    theirs = (
        bytes.fromhex("020106") + bytes.fromhex("0c16d2fc40") + bytes.fromhex("000102ca0903bf13")
    )
    ours = bthome.advert(bthome.encode({"temperature": 25.06, "humidity": 50.55}, packet_id=1))
    assert theirs[3] == len(theirs) - 4  # the AD structure's length byte covers the rest
    assert bthome.decode(theirs[7:]) == bthome.decode(ours[7:])
    a, b = identity.make("371600", "TH", 7), identity.make("371600", "TH", 8)

    async def scenario() -> None:
        with VirtualAir(tmp_path / "air.sock") as air:
            gw = Gateway(
                parse_config(
                    {
                        "gateway": {"id": "gw-ble2", "data_dir": str(tmp_path)},
                        "mqtt": {"url": broker.url, "format": "senml+json"},
                        "ble": {"air": air.path},
                        "device": [
                            {"code": a, "transport": "ble", "address": "C0:00:00:00:00:0A"},
                            {"code": b, "transport": "ble", "address": "C0:00:00:00:00:0B"},
                        ],
                        "status": {"port": 0},
                    }
                )
            )
            async with Collector(broker.host, broker.port) as sub:
                task = asyncio.create_task(gw.run())
                dev_a = AirPeripheral(air.path, "C0:00:00:00:00:0A")
                dev_b = AirPeripheral(air.path, "C0:00:00:00:00:0B")
                try:
                    await until(lambda: gw.ble is not None and gw.ble.scanning, what="scan")

                    async def advertise() -> None:  # as devices do: again and again
                        while True:
                            dev_a.advertise(theirs)
                            dev_b.advertise(ours)
                            await asyncio.sleep(0.3)

                    adverts = asyncio.create_task(advertise())
                    await until(
                        lambda: sub.packs(a, "senml+json") and sub.packs(b, "senml+json"),
                        what="both packs",
                    )
                    va = values_of(sub.packs(a, "senml+json")[0])
                    vb = values_of(sub.packs(b, "senml+json")[0])
                    va.pop("seq"), vb.pop("seq")
                    assert va == vb == {"temperature": (25.06, "Cel"), "humidity": (50.55, "%RH")}
                    adverts.cancel()
                finally:
                    dev_a.close()
                    dev_b.close()
                    gw.stop()
                    await task

    run(scenario())


def test_ble_scan_lists_devices_with_codes_and_decoded_values(street: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    air, board = street
    # an SOS press in an earlier test holds the air for event_s: scan once the node is back
    # to its measurements
    deadline = time.monotonic() + 10
    while "battery" not in latest_values(board):
        assert time.monotonic() < deadline, latest_values(board)
        time.sleep(0.05)
    config = tmp_path / "gw.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-scan"
data_dir = "{tmp_path}"
[mqtt]
url = "mqtt://127.0.0.1:1"
[ble]
air = "{air.path}"
[[device]]
code = "{THERMO}"
transport = "ble"
address = "{THERMO_ADDR}"
bindkey = "{KEY.hex()}"
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "polekit", "ble", "scan", "-d", "2.5", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = {r["address"]: r for r in json.loads(result.stdout)}
    thermo = rows[THERMO_ADDR]
    assert thermo["code"] == THERMO and thermo["rssi"] == -60
    assert thermo["values"] == {"temperature": 22.5, "humidity": 41.0, "battery": 90}
    node = rows[board.mac]
    assert node["name"] == "polekit-sos" and node["values"]["battery"] == 82


def test_polekit_emulate_hosts_the_air_and_a_late_scanner_still_hears_the_node(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    air = tmp_path / "air.sock"
    with polekit_emulate(
        "--board", "community-sos-esp32c3", "--air", str(air), "--fs", str(tmp_path / "fs")
    ) as ports:
        assert ports["air"] == str(air) and air.exists()
        time.sleep(2)  # the node's first advert is long gone (advert_s is 30)
        scan = subprocess.run(
            [
                sys.executable,
                "-m",
                "polekit",
                "ble",
                "scan",
                "-d",
                "4",  # about four repeats: two at least even when the machine is busy
                "--json",
                "--virtual",
                str(air),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert scan.returncode == 0, scan.stderr
        heard = {r["address"]: r for r in json.loads(scan.stdout)}
        assert heard[ports["mac"]]["adverts"] >= 2  # the radio repeats its advert


def test_an_air_left_by_a_dead_process_is_taken_over_and_a_file_is_never_replaced(
    tmp_path: Path,
) -> None:
    import socket
    import subprocess
    import sys

    def polekit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "polekit", *args], capture_output=True, text=True, timeout=60
        )

    notes = tmp_path / "site-notes.csv"  # given by mistake: it must survive
    notes.write_text("pole,rssi\n")
    refused = polekit("ble", "air", "--socket", str(notes))
    assert refused.returncode == 1 and "is a file, not a socket" in refused.stderr
    assert notes.read_text() == "pole,rssi\n"

    air = tmp_path / "air.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # what an air killed with -9 leaves behind
        dead.bind(str(air))
    with polekit_emulate(
        "--board", "community-sos-esp32c3", "--air", str(air), "--fs", str(tmp_path / "fs")
    ) as ports:
        taken = polekit("ble", "air", "--socket", str(air))
        assert taken.returncode == 1 and "another process serves this socket" in taken.stderr
        scan = polekit("ble", "scan", "-d", "4", "--json", "--virtual", str(air))
        assert scan.returncode == 0, scan.stderr
        assert ports["mac"] in {r["address"] for r in json.loads(scan.stdout)}


def test_a_scanner_that_misses_80_percent_of_adverts_gets_each_press_once(
    broker: LocalBroker, tmp_path: Path
) -> None:
    # a busy scanner (the air drops 80 % of adverts, seeded): the node holds each event on
    # the air long enough (docs/firmware.md) and the gateway drops the repeats it does hear,
    # so two presses close together are two events on the platform, no more, no fewer
    flash = tmp_path / "fs"
    install(flash, "community-sos-esp32c3", {"device_code": SOS, "advert_s": 1})
    with (
        VirtualAir(tmp_path / "air.sock", loss=0.8, seed=12) as air,
        EmulatedBoard("community-sos-esp32c3", fs_dir=flash, air=air.path) as board,
    ):

        def presses_sent() -> int:  # button adverts the node's radio sent (not what was heard)
            return sum(
                1
                for _t, data in board.get("ble.adverts")
                if "button"
                in bthome.decode(parse_ad(bytes.fromhex(data))["service_data"][BTHOME_UUID])
            )

        async def scenario() -> None:
            gw = Gateway(
                parse_config(
                    {
                        "gateway": {"id": "gw-lossy", "data_dir": str(tmp_path)},
                        "mqtt": {"url": broker.url, "format": "senml+json"},
                        "ble": {"air": air.path},
                        "device": [
                            {"code": SOS, "transport": "ble", "address": board.mac, "interval": 1}
                        ],
                        "status": {"port": 0},
                    }
                )
            )
            async with gateway_running(gw, broker.host, broker.port) as sub:
                await until(lambda: sub.packs(SOS, "senml+json"), what="a measurement")
                await asyncio.to_thread(board.set, "sos.press", 200)
                # the second press as soon as the first is on the air: it waits its turn
                await until(lambda: presses_sent() == 1, what="the first press on the air")
                await asyncio.to_thread(board.set, "sos.press", 200)
                await until(lambda: len(sub.on(f"/event/{SOS}")) >= 2, 20, "two events")
                # the node is back to measurements once both events had their time: no
                # repeat of either can come after that
                packs = len(sub.packs(SOS, "senml+json"))
                await until(lambda: len(sub.packs(SOS, "senml+json")) > packs, 15, "a new pack")
                events = [json.loads(m.payload) for m in sub.on(f"/event/{SOS}")]
                assert [(e["event"], e["value"]) for e in events] == [("sos", "press")] * 2
                assert gw.ble is not None and gw.ble.counters.duplicates >= 2
            lost = air.counters["lost"] / air.counters["adverts"]
            print(f"the air lost {lost:.0%} of {air.counters['adverts']} adverts; events: 2")
            assert 0.7 < lost < 0.9

        run(scenario())
