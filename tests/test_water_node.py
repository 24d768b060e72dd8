"""The water-and-lifeline node's drivers (issue 17 item 3) on the emulated ESP32, against the
virtual current loop, rain gauge and flow meter.

The 4-20 mA limits are NAMUR NE 43's (3.8-20.5 mA for measurements); the wake sources are
the ESP32's EXT0/EXT1 (ESP-IDF esp_sleep_source_t numbers: 2, 3; timer 4)."""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish
import pytest
from uplinkkit import VB, N, Subscriber, U, V, records, seq_of, wait_for

from polekit.firmware.install import install
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard

from boardkit import board_exec as run

BOARD = "water-esp32"


def run_async(board: EmulatedBoard, setup: str, expr: str, timeout_s: float = 10) -> str:
    """Start coroutine ``expr`` as a task after ``setup`` and return its repr once done."""
    run(
        board,
        setup + "\nimport asyncio\n_out = []\nasync def _t():\n"
        f"    _out.append(repr(await {expr}))\nasyncio.create_task(_t())",
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = run(board, "print(_out[0] if _out else '')")
        if out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"{expr} did not finish in {timeout_s} s")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    flash = tmp_path_factory.mktemp("flash")
    install(flash, BOARD, start=False, compiled=True)
    with EmulatedBoard(BOARD, fs_dir=flash) as b:
        yield b


LEVEL = (
    "import machine\nfrom node.drivers.loop_level import LoopLevel\n"
    "lvl = LoopLevel(machine.ADC(machine.Pin(34)), 120, 5.0, machine.Pin(26, machine.Pin.OUT), 150)"
)


def test_level_open_loop_and_over_range_from_the_virtual_current_loop(
    board: EmulatedBoard,
) -> None:
    board.set("level.open", 0)
    board.set("level.metres", 2.0)  # 10.4 mA through 120 ohm
    metres, fault = eval(run_async(board, LEVEL, "lvl.measure()"))
    assert fault is None and metres == pytest.approx(2.0, abs=0.005)
    board.set("level.open", 1)  # a cut cable: 0 mA is a fault, never "dry"
    assert eval(run_async(board, LEVEL, "lvl.measure()")) == (None, "open_loop")
    board.set("level.open", 0)
    board.set("level.metres", 5.3)  # 20.96 mA: past 20.5 mA
    assert eval(run_async(board, LEVEL, "lvl.measure()")) == (None, "over_range")
    board.set("level.metres", 5.05)  # 20.16 mA: over the span, inside NE 43's band
    metres, fault = eval(run_async(board, LEVEL, "lvl.measure()"))
    assert fault is None and metres == pytest.approx(5.05, abs=0.01)


RAIN = (
    "import machine\nfrom node.rtcstore import RtcStore\nfrom node.drivers.rain_gauge import "
    "RainGauge\nstore = RtcStore()\nstore.set('tips', 0)\n"
    "gauge = RainGauge(machine.Pin(27, machine.Pin.IN), store)"
)


def test_a_bouncing_contact_counts_one_tip_a_tip(board: EmulatedBoard) -> None:
    run(board, RAIN)
    board.set("rain.bounce", 5)  # five make/break chatters before each closure holds
    try:
        board.set("rain.tips", 4)
        wait_for(lambda: run(board, "print(gauge.tips)") == "4", 10, "four tips")
        time.sleep(0.6)  # any late chatter would count now
        assert run(board, "print(gauge.tips, gauge.rain_mm)") == "4 0.8"
    finally:
        board.set("rain.bounce", 0)
        run(board, "gauge.stop()")


def test_flow_rate_and_totalised_volume(board: EmulatedBoard) -> None:
    board.set("flow.l_min", 30.0)  # 50 pulses a second at 100 pulses a litre
    setup = (
        "import machine\nfrom node.drivers.flow_meter import FlowMeter\n"
        "fm = FlowMeter(machine.Pin(35, machine.Pin.IN), 100, machine.Pin(26, machine.Pin.OUT))"
    )
    # the volume is read as the gate closes (the meter keeps counting while the host polls
    # for the result: a loaded machine read 1.16 L that way)
    setup += (
        "\nasync def gate():\n    rate = await fm.measure(2000)\n    return rate, fm.pulses / fm.k"
    )
    rate, litres = ast.literal_eval(run_async(board, setup, "gate()"))
    assert rate == pytest.approx(30.0, rel=0.1)
    assert litres == pytest.approx(1.0, rel=0.15)  # 2 s at 0.5 L/s, from power-on
    run(board, "fm.stop()")


def test_the_self_test_reads_every_water_sensor_and_names_a_cut_loop(
    board: EmulatedBoard,
) -> None:
    # what `polekit deploy` and a new version's trial run (node/selftest.py), through the
    # board's own drivers against the virtual loop, accelerometer and battery
    board.set("level.metres", 2.0)  # 10.4 mA through 120 ohm
    rows = ast.literal_eval(run_async(board, "from node import selftest", "selftest.run()"))
    checks = {r[0]: r for r in rows}
    assert set(checks) == {"config", "level", "rain", "flow", "cover", "battery", "uplink"}, rows
    assert all(ok for _, ok, _ in rows), rows
    assert float(checks["level"][2].split()[0]) == pytest.approx(2.0, abs=0.01), rows
    assert "tilt 0.0 deg" in checks["cover"][2], rows
    assert checks["uplink"][2] == "MQTT over Wi-Fi 'polekit' to 192.168.1.10:1883", rows
    board.set("level.open", 1)  # a cut cable: the row fails and says what to look at
    try:
        rows = ast.literal_eval(run_async(board, "from node import selftest", "selftest.run()"))
    finally:
        board.set("level.open", 0)
    assert [r for r in rows if not r[1]] == [
        ["level", False, "4-20 mA loop open: 0.00 mA (a cut cable or no power)"]
    ], rows


# ---- the node: whole cycles on the emulated board, through a real broker -------------------
#
# The node runs as deployed (main.py, /config.json from the board's [config] plus the test's
# settings): it wakes, samples, reports, flushes and deep-sleeps on its own; the test moves
# the world (Physics.set) and reads what reached mosquitto with an independent subscriber
# (paho, cbor2). report_s = 5 s, the shortest the node takes, keeps each test short.

NODE_CODE = "WTR1"
VS = 3  # RFC 8428 table 4: string value
BASE = f"polekit/v1/{NODE_CODE}"
FAST = {
    "device_code": NODE_CODE,
    "mqtt_host": "127.0.0.1",
    "report_s": 5,
    "storm_report_s": 5,
    "flow_gate_ms": 100,
    "flush_ms": 4000,
}


def cycles(board: EmulatedBoard) -> list[dict[str, Any]]:
    """The node's cycle summaries ("water cycle {...}" lines on its console), in order."""
    log = bytes(board.serial_log).decode(errors="replace")
    return [json.loads(m) for m in re.findall(r"water cycle (\{[^\r\n]*\})\r?\n", log)]


def wait_cycle(
    board: EmulatedBoard, what: str, predicate: Any, after: int = 0, timeout_s: float = 20
) -> dict[str, Any]:
    """The first cycle summary after the first ``after`` that satisfies ``predicate``."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [c for c in cycles(board)[after:] if predicate(c)]
        return bool(found)

    wait_for(seen, timeout_s, what)
    return found[0]


def heap_low_water(board: EmulatedBoard) -> int:
    return min(c["heap_min"] for c in cycles(board))


def packs(sub: Subscriber, kind: str, base: str = BASE) -> list[list[dict[Any, Any]]]:
    return [m.pack() for m in sub.on(f"{base}/{kind}/{NODE_CODE}")]


@contextmanager
def water_node(
    tmp_path: Path, broker: LocalBroker, **config: Any
) -> Iterator[tuple[EmulatedBoard, Path]]:
    flash = install(
        tmp_path / "flash",
        BOARD,
        config={**FAST, "mqtt_port": broker.port, **config},
        compiled=True,
    )
    with EmulatedBoard(BOARD, fs_dir=flash) as b:
        b.set("level.metres", 1.0)
        yield b, flash


def test_rain_tips_during_deep_sleep_are_all_counted_once(tmp_path: Path) -> None:
    tips = 8
    with (
        LocalBroker() as broker,
        Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
        water_node(tmp_path, broker) as (board, _),
    ):
        wait_cycle(board, "the first cycle", lambda c: True)
        for _ in range(tips):  # a tip every 0.7 s: asleep, booting or awake, as they come
            board.set("rain.tips", 1)
            time.sleep(0.7)
        at = len(cycles(board))
        last = wait_cycle(board, "a report after the tips", lambda c: c["reported"], at)
        seen = cycles(board)
        wait_for(lambda: len(packs(sub, "data")) >= sum(c["sent"] > 0 for c in seen), 10, "packs")
    tip_wakes = [c for c in seen if c["wake"] == 2]  # EXT0: the gauge's contact
    assert len(tip_wakes) >= 2, seen  # tips came while it slept, and woke it
    # a tip with no report or alarm due takes the short wake (node/tipwake.py: counted in
    # RTC memory, no file read, no driver built, no link); one with a report due, the cycle
    short = [c for c in tip_wakes if c.get("short")]
    assert short and all(not c["reported"] and not c["sent"] for c in short), seen
    assert [c["tips"] for c in seen] == sorted(c["tips"] for c in seen)  # never counted back
    assert last["tips"] == tips and max(c["tips"] for c in seen) == tips, seen
    rain = records(packs(sub, "data")[-1])[f"urn:dev:pk:{NODE_CODE}:rain"]
    assert rain[U] == "m" and rain[V] == pytest.approx(tips * 0.2 / 1000)
    print(
        f"{tips} tips, {len(tip_wakes)} tip wakes ({len(short)} short) over {len(seen)} "
        "cycles: all counted once"
    )


def test_each_alarm_fires_once_per_crossing_and_clears_with_hysteresis(tmp_path: Path) -> None:
    settings = {
        "level_high_m": 1.5,
        "level_hysteresis_m": 0.1,  # on above 1.5 m, off below 1.4 m
        "rise_m_h": 50,  # 0.5 m in 5 s is 360 m/h; steady water is 0
        "rise_hysteresis_m_h": 20,
        # over a 10 s window a tip is 72 mm/h: on at the third tip (216), off when no more
        # than one is left in the window (72 < 100); two (144) are inside the band
        "rain_window_s": 10,
        "rain_mm_h": 200,
        "rain_hysteresis_mm_h": 100,
    }
    with (
        LocalBroker() as broker,
        Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
        water_node(tmp_path, broker, **settings) as (board, _),
    ):
        wait_cycle(board, "the first report", lambda c: c["reported"])
        board.set("level.metres", 2.0)  # over the threshold, and fast
        for _ in range(5):  # over the rain intensity at the third tip; the rest keep it on
            board.set("rain.tips", 1)
            time.sleep(0.3)
        wait_cycle(board, "level high", lambda c: "level_high on" in c["alarms"])
        wait_cycle(board, "heavy rain", lambda c: "rain_heavy on" in c["alarms"])
        at = len(cycles(board))
        board.set("level.metres", 1.45)  # down, but inside the hysteresis band: still high
        wait_cycle(board, "a report at 1.45 m", lambda c: c["reported"], at)
        at = len(cycles(board))
        board.set("level.metres", 1.35)  # under 1.4 m: clears
        wait_cycle(board, "level clear", lambda c: "level_high off" in c["alarms"], at)
        # the tips have left the 10 s window: the rain rate fell under the band
        wait_cycle(board, "rain clear", lambda c: "rain_heavy off" in c["alarms"])
        board.set("cover.open", 1)  # the cover lifted: EXT1 wakes the node at once
        opened = wait_cycle(board, "cover", lambda c: "cover_open on" in c["alarms"])
        board.set("cover.open", 0)
        wait_cycle(board, "cover shut", lambda c: "cover_open off" in c["alarms"])
        seen = cycles(board)
        wait_for(lambda: len(packs(sub, "event")) >= 8, 10, "eight events at the broker")
        events = packs(sub, "event")
    assert opened["wake"] == 3  # EXT1: the cover's contact woke it, not the timer
    said: dict[str, list[bool]] = {}
    for pack in events:
        name = next(r[VS] for r in pack if r.get(N) == "alarm")
        said.setdefault(name, []).append(next(r[VB] for r in pack if r.get(N) == "alarm_on"))
    assert said == {
        "rain_heavy": [True, False],  # five tips over the intensity: one alarm, then clear
        "level_high": [True, False],  # 1.45 m inside the band said nothing
        "level_rising": [True, False],
        "cover_open": [True, False],
    }, said
    assert sorted(seq_of(p) for p in events) == list(range(1, 9))  # the events' own seq
    # each one sent in the cycle that saw the crossing, with that cycle's report
    assert all(c["sent"] >= len(c["alarms"]) for c in seen)


UNITS = {  # SenML units of what the node reports (RFC 8428 section 12.1; protocols/model.py)
    "water_level": "m",
    "rain": "m",
    "rain_rate": "m/s",
    "flow": "m3/s",
    "volume": "m3",
    "tilt": "deg",
    "voltage": "V",
    "awake_time": "s",
    "free_heap": "B",
}


def check_reports(
    sub: Subscriber, level_m: float, l_min: float, battery_v: float, topics: str = BASE
) -> list[int]:
    """Every data pack's values and units as the world was set; their seqs, sorted."""
    base = f"urn:dev:pk:{NODE_CODE}:"
    seqs = []
    for pack in packs(sub, "data", topics):
        recs = records(pack)
        for name, unit in UNITS.items():
            if base + name in recs:
                assert recs[base + name][U] == unit, (name, recs[base + name])
        assert recs[base + "water_level"][V] == pytest.approx(level_m, abs=0.01)
        assert recs[base + "flow"][V] == pytest.approx(l_min / 60000, rel=0.3)
        assert recs[base + "cover_open"][VB] is False
        assert recs[base + "voltage"][V] == pytest.approx(battery_v, abs=0.01)
        seqs.append(seq_of(pack))
    return sorted(seqs)


# the broker's login, given to the node in the MQTT uplink's settings (mqtt_user,
# mqtt_password): the test brokers refuse anonymous clients
LOGIN = ("water", "s3cret")
CREDENTIALS = {"mqtt_user": LOGIN[0], "mqtt_password": LOGIN[1]}


def test_wifi_node_delivers_through_a_broker_outage_and_a_reset(tmp_path: Path) -> None:
    broker = LocalBroker(users=dict([LOGIN])).start()
    try:
        with (
            Subscriber(broker.host, broker.port, f"{BASE}/#", login=LOGIN) as sub,
            water_node(tmp_path, broker, **CREDENTIALS) as (board, flash),
        ):
            board.set("level.metres", 0.8)
            board.set("flow.l_min", 60.0)  # 100 pulses a second: 10 in the 100 ms gate
            wait_cycle(board, "two reports", lambda c: c["sent"] > 0 and c["cycle"] >= 2)
            broker.stop()  # the platform away: reports go to the ring file
            at = len(cycles(board))
            wait_cycle(board, "two reports held", lambda c: c["held"] >= 2, at)
            board.reset()  # the chip loses its RAM and RTC memory; the flash stays
            at = len(cycles(board))
            wait_cycle(board, "a report after the reset", lambda c: c["cycle"] == 1, at)
            broker.start()  # the same port
            wait_for(sub.subscribed.is_set, 10, "the subscriber back")
            at = len(cycles(board))
            last = wait_cycle(
                board, "the backlog sent", lambda c: c["held"] == 0 and c["sent"] > 1, at
            )
            wait_for(lambda: len(packs(sub, "data")) >= last["sent"], 10, "the packs")
            seqs = check_reports(sub, 0.8, 60.0, 3.6)  # the cells' nominal 3.6 V at start
            low = heap_low_water(board)
    finally:
        broker.stop()
    assert set(seqs) == set(range(1, max(seqs) + 1)), seqs  # nothing lost (repeats allowed)
    assert max(seqs) >= 5
    print(
        f"Wi-Fi: seq 1..{max(seqs)} delivered across an outage and a reset; heap low-water "
        f"{low} B free of {board.board.heap_bytes}"
    )


def test_nbiot_node_delivers_through_a_coverage_gap_sleeps_in_psm_and_takes_a_command(
    tmp_path: Path,
) -> None:
    from polekit.hil.atmodem import AtModem

    # the node's own topic prefix and id, from the MQTT uplink's settings as on Wi-Fi
    base = "city/water/MH17"
    results = f"{base}/cmd-result/{NODE_CODE}"
    topics = {"mqtt_prefix": "city/water", "node_id": "MH17"}
    with (
        LocalBroker(users=dict([LOGIN])) as broker,
        Subscriber(broker.host, broker.port, f"{base}/#", login=LOGIN) as sub,
        water_node(tmp_path, broker, uplink="nbiot", **topics, **CREDENTIALS) as (board, _),
        AtModem(
            board.uarts["modem"],
            board=board,
            pwrkey_pin=18,
            registration_delay_s=0.6,  # BC260Y-like, shortened (tests/test_nbiot.py)
            send_latency_s=0.15,
            boot_s=0.3,
        ) as modem,
    ):
        board.set("flow.l_min", 60.0)
        board.set("battery.voltage", 3.3)  # the cells running down: the reports say so
        wait_cycle(board, "a report through the modem", lambda c: c["sent"] > 0, timeout_s=30)
        wait_for(lambda: modem.state == "psm", 10, "the module in PSM while the node sleeps")
        modem.set_coverage(False)  # out of coverage: the cycle gives up, the outbox keeps it
        at = len(cycles(board))
        wait_cycle(board, "a report held", lambda c: c["held"] >= 1 and c["sent"] == 0, at, 30)
        # the platform sets a new report interval while the node is away
        publish.single(
            f"{base}/cmd/{NODE_CODE}",
            json.dumps({"id": 7, "set": {"report_s": 9}}),
            qos=1,
            hostname=broker.host,
            port=broker.port,
            auth={"username": LOGIN[0], "password": LOGIN[1]},
        )
        modem.set_coverage(True)
        at = len(cycles(board))
        wait_cycle(board, "the backlog sent", lambda c: c["held"] == 0 and c["sent"] >= 2, at, 30)
        wait_for(lambda: bool(sub.on(results)), 30, "the command's result")
        sleeps = [e["ms"] for e in board.events if e.get("event") == "deepsleep"]
        wait_for(
            lambda: [e["ms"] for e in board.events if e.get("event") == "deepsleep"][-1] > 6000,
            30,
            "a sleep of the new interval",
        )
        seqs = check_reports(sub, 1.0, 60.0, 3.3, base)
        low = heap_low_water(board)
        status = [m.json() for m in sub.on(f"{base}/state") if m.json()["state"] == "online"]
        events = [e for _, e in modem.events]
    assert sub.on(results)[-1].json() == {"id": 7, "ok": True, "set": {"report_s": 9}}
    assert max(sleeps[:2]) < 5000  # the old interval until the command came
    assert set(seqs) == set(range(1, max(seqs) + 1)), seqs
    # PSM between reports: woken by PWRKEY each time, never rebooted as a hung module
    assert events.count("psm") >= 2 and "wake" in events and "reboot" not in events, events
    assert status[-1]["recoveries"] == 0 and status[-1]["registered"] is True, status[-1]
    assert status[-1]["node"] == "MH17"
    print(f"NB-IoT: seq 1..{max(seqs)}, coverage gap, PSM, command; heap low-water {low} B free")
