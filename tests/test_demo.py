"""`polekit demo` end to end, as a new user runs it: the whole emulated street for 30 s,
non-interactive, its summary checked."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_street_delivers_everything_and_sees_every_alarm() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polekit", "demo", "--duration", "30", "--poles", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    print({k: v for k, v in summary.items() if k != "devices"})
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
