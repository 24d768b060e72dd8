"""`polekit demo` end to end, as a new user runs it: the whole emulated street, its summary
and verdict checked; a street broken on purpose must FAIL and say why; and what a person
sees (the dashboard on a terminal, the summary in words) read as text."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from polekit.demo.dashboard import reading, summary_text, view
from polekit.demo.platform import Platform
from polekit.gateway.pipeline import PackEncoder, encode_body
from polekit.protocols import identity, modbus

POLE = identity.make("371600", "PL", 1)
KIT = identity.make("371600", "SO", 1)


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polekit", "demo", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_demo_street_delivers_everything_and_sees_every_alarm() -> None:
    result = demo("--duration", "30", "--poles", "2", "--json")
    summary = json.loads(result.stdout)
    print({k: v for k, v in summary.items() if k != "devices"})
    assert summary["verdict"] == "PASS" and summary["failures"] == []
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["readings_delivered"] > 0 and summary["lost"] == 0
    assert summary["readings_delivered"] == summary["readings_produced"]
    assert summary["alarms_raised"] == {"tilt": 1, "sos": 2, "water": 1, "smoke": 1}
    assert summary["alarms_seen"] == summary["alarms_raised"]
    assert summary["command_acknowledged"] is True and summary["command_rtt_ms"] > 0
    assert summary["broker_outage_s"] > 0  # the queue had to carry the outage
    transports = {d["code"]: d["transport"] for d in summary["devices"]}
    assert list(transports.values()).count("modbus") == 3  # two poles and the energy meter
    assert list(transports.values()).count("ble") == 3  # two SOS kits and the thermometer
    assert all(d["readings_delivered"] > 0 for d in summary["devices"]), summary["devices"]


def test_a_street_broken_on_purpose_fails_and_says_what_went_wrong() -> None:
    # the first SOS kit's radio dies before its presses, pole 1 loses power before the
    # platform dims its lamp: the platform must count both, with the gateway's reason
    result = demo(
        "--duration",
        "10",
        "--poles",
        "1",
        "--fault",
        "dead-pole",
        "--fault",
        "dead-radio",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr[-3000:]
    verdict = summary["verdict"]
    assert verdict.startswith("FAIL: ") and verdict == "FAIL: " + "; ".join(summary["failures"])
    assert "SOS: 2 of 2 not seen" in summary["failures"]
    assert summary["alarms_seen"]["smoke"] == 1  # the other kit is fine
    (lamp,) = [f for f in summary["failures"] if "lamp" in f]
    assert lamp.startswith(f"the command to dim the lamp to 30 % on {POLE} was not acknowledged")
    assert "no answer within" in lamp  # the gateway's own reason
    assert summary["lost"] == 0 and summary["command_acknowledged"] is False


def test_the_broker_comes_back_even_when_its_old_port_was_taken() -> None:
    # on a busy machine another program's connection can get the stopped broker's port
    # (outgoing connections take their ports from the same free range): the broker that
    # comes back must not need it
    import asyncio

    from polekit.demo.street import Options, Street

    taken: list[socket.socket] = []

    def render(street: Street, gw: object, platform: object, note: str) -> None:
        if note.endswith("goes down") and not taken and street.broker is not None:
            squatter = socket.socket()
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            squatter.bind(("127.0.0.1", street.broker.port))
            squatter.listen()
            taken.append(squatter)

    street = Street(Options(poles=1, community=1, duration=10), log=lambda text: None)
    try:
        summary = asyncio.run(street.run(render))
    finally:
        for squatter in taken:
            squatter.close()
    assert taken and summary["broker_outage_s"] > 0
    assert summary["verdict"] == "PASS", summary["failures"]


def test_a_broker_that_is_not_there_is_one_line_not_a_traceback() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = demo("--broker", f"mqtt://127.0.0.1:{port}", "--duration", "10")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # checked before anything starts: one line naming the broker, the reason and the fix
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot reach the broker at mqtt://127.0.0.1:{port}: "), last
    assert "leave --broker out" in last, last


def test_the_terminal_shows_the_dashboard_and_ends_with_the_verdict() -> None:
    # as a person runs it: on a terminal (a real pty, 160 columns), the live dashboard, the
    # scripted events with their time and no developer's source path, the summary in words
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "polekit", "demo", "--duration", "10", "--poles", "1"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"},
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the demo closed its end
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))
    assert "the platform dims pole 1's lamp to 30 %" in text
    assert ".py:" not in text  # rich's log path (cli.py:72) on every line
    # values with their units (which values, on a busy machine, is up to the polls)
    assert re.search(r"illuminance \d+(\.\d+)? k?lx", text) and re.search(r"lamp \d+ %", text)
    assert "tilt alarm at " + POLE in text and "SOS at " + KIT in text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[-1] == "PASS"
    assert any(line.startswith("Readings: ") and "none lost" in line for line in lines)
    assert not any("{" in line for line in lines[-8:])  # words, not Python dicts


def test_values_read_with_their_units_and_three_digits() -> None:
    assert reading("illuminance", 24930.5, "lx") == "illuminance 24.9 klx"
    assert reading("illuminance", 812.0, "lx") == "illuminance 812 lx"
    assert reading("lamp_level", 0.3, "/") == "lamp 30 %"
    assert reading("temperature", 21.53, "Cel") == "temperature 21.5 \u00b0C"
    assert reading("battery", 82, "%EL") == "battery 82 %"
    assert reading("voltage", 3.812, "V") == "voltage 3.81 V"
    assert reading("tilt", 28.0, "deg") == "tilt 28 deg"
    assert reading("smoke", True) == "smoke YES" and reading("water", False) == "water no"


def test_the_dashboard_and_summary_read_as_words() -> None:
    # the platform fed the gateway's own encodings; the dashboard rendered to text
    platform = Platform("127.0.0.1", 1, "senml+json", {POLE: "modbus", KIT: "ble"})
    enc = PackEncoder("senml+json")
    points = {p.name: p for p in modbus.register_map("pole-env")}
    values = [
        (points["illuminance"], 24930.5),
        (points["lamp_level"], 30),
        (points["alarms"], modbus.ALARM_TILT),
    ]
    pack = enc.packer(POLE, enc.readings(values), time.time())(1)
    platform.receive(f"polekit/v1/gw/data/{POLE}", pack)
    sos = encode_body({"event": "sos", "value": "press", "t": 1.0}, "senml+json")
    platform.receive(f"polekit/v1/gw/event/{KIT}", sos)
    platform.receive(f"polekit/v1/gw/event/{KIT}", sos)  # a QoS 1 redelivery
    platform.raise_alarm("tilt")
    platform.raise_alarm("sos")
    street = SimpleNamespace(started=time.monotonic(), options=SimpleNamespace(duration=60.0))
    street.queue_peak = 3
    gw = SimpleNamespace(queue=SimpleNamespace(depth=0), readings=3)
    console = Console(width=160, record=True, color_system=None)
    console.print(view(street, gw, platform, "a truck hits pole 1"))
    screen = console.export_text()
    assert "illuminance 24.9 klx, lamp 30 %" in screen
    assert "tilt alarm at " + POLE in screen and "SOS at " + KIT in screen
    assert "alarms 2 of 2 seen" in screen and "readings 3 of 3 delivered" in screen
    assert platform.failures(readings_produced=3) == []

    summary = {
        "duration_s": 60.0,
        "devices": [{"transport": "modbus"}, {"transport": "ble"}],
        "readings_produced": 900,
        "readings_delivered": 899,
        "lost": 1,
        "alarms_raised": {"tilt": 1, "sos": 2},
        "alarms_seen": {"tilt": 1, "sos": 1},
        "commands": [
            {
                "what": "dim the lamp to 30 %",
                "device": POLE,
                "acknowledged": False,
                "rtt_ms": None,
                "reason": "no result came back",
            }
        ],
        "broker_outage_s": 10.8,
        "queue_peak": 120,
        "faults": [],
        "verdict": "FAIL: 1 of 900 readings never reached the platform; SOS: 1 of 2 not seen",
    }
    text = summary_text(summary).splitlines()
    assert text == [
        "The street ran 60 s with 1 device on RS-485 and 1 on BLE.",
        "Readings: 900 produced by the gateway, 899 reached the platform, 1 lost.",
        "Alarms: tilt alarm 1 of 1 seen, SOS 1 of 2 seen.",
        f"Command: dim the lamp to 30 % on {POLE}: NOT acknowledged (no result came back).",
        "Outage: the broker was down 10.8 s; the gateway queued up to 120 messages and "
        "delivered them when it came back.",
        "FAIL: 1 of 900 readings never reached the platform; SOS: 1 of 2 not seen",
    ]


def test_the_run_removes_its_files_however_it_ends(tmp_path: Path) -> None:
    # flash images, the air's socket and the gateway's queue live in the run's folder; a
    # run that cannot even start (no broker at --broker) must not leave it behind either
    import asyncio

    from polekit.demo.street import Options, Street

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "run"
    work.mkdir()
    street = Street(Options(broker=f"mqtt://127.0.0.1:{port}"), log=lambda text: None, work=work)
    with pytest.raises(RuntimeError, match="cannot reach the broker"):
        asyncio.run(street.run(lambda *parts: None))
    assert not work.exists()


def test_demo_water_node_reports_straight_to_the_broker_through_a_storm() -> None:
    # --water: an emulated water-esp32 running the real water node (deep sleep between
    # reports) on Wi-Fi MQTT through the street's WAN, and a storm driven through its control
    # channel: rain, the river rising past 1.5 m, a manhole cover lifted during the broker's
    # outage. The platform must see each alarm once and every report the node numbered.
    result = demo("--water", "--duration", "40", "--poles", "1", "--community", "0", "--json")
    summary = json.loads(result.stdout)
    print({k: v for k, v in summary.items() if k != "devices"})
    assert summary["verdict"] == "PASS" and summary["failures"] == []
    assert result.returncode == 0, result.stderr[-3000:]
    water = summary["water"]
    code = identity.make("371600", "WL", 1)
    assert water["code"] == code and water["packs"] >= 3 and water["lost"] == 0
    for name in ("level_rising", "level_high", "cover_open"):
        assert summary["alarms_raised"][name] == 1
        assert summary["alarms_seen"][name] == 1, name
    # the latest values as the platform decoded them, with the node's own awake time of
    # its previous cycle (what bench/battery.py's projection rests on)
    values = water["values"]
    assert 0.5 <= values["water_level"] <= 1.8 and values["rain"] > 0
    assert values["awake_time"] > 0
    assert abs(values["voltage"] - 3.6) < 0.05  # its cells, at the board's nominal 3.6 V
    (device,) = [d for d in summary["devices"] if d["code"] == code]
    assert device["transport"] == "wifi" and device["readings_delivered"] > 0
    # the gateway's own accounting is untouched by the node's readings
    assert summary["readings_delivered"] == summary["readings_produced"]
