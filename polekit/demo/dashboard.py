"""What a person sees of the demo: the live terminal view (rich) with devices and their
latest values, alarms as they fire, the gateway's queue, the broker's message rate; and
the summary at the end, in words, ending with the verdict.

Values read as a person writes them (``illuminance 24.9 klx``, ``lamp 30 %``): each is
shown in its quantity's human-scale unit from the reference model (protocols/model.py),
with three significant digits.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from polekit.demo.platform import alarm_words
from polekit.protocols import model

SHOWN = (  # the values worth a glance, per kind of device
    "temperature",
    "humidity",
    "illuminance",
    "tilt",
    "water",
    "lamp_level",
    "power",
    "voltage",
    "battery",
    "smoke",
    "water_level",
    "rain",
    "cover_open",
)
# where the model's name reads oddly on a dashboard
LABELS = {"lamp_level": "lamp", "water_level": "river", "cover_open": "cover open"}


def number(value: float) -> str:
    """Three significant digits, no exponent, no trailing zeros: 24.9, 231, 3.81, 30."""
    size = abs(value)
    text = f"{value:.{0 if size >= 100 else 1 if size >= 10 else 2}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def reading(name: str, value: Any, unit: str | None = None) -> str:
    """One value as a person reads it: ``reading("lamp_level", 0.3, "/")`` is ``lamp 30 %``.

    ``unit`` is the SenML unit the value came in (the model's primary unit when None); it
    is shown in the model's secondary unit where there is one (the human-scale one)."""
    label = LABELS.get(name, name)
    if isinstance(value, bool):
        return f"{label} {'YES' if value else 'no'}"
    if not isinstance(value, (int, float)):
        return f"{label} {value}"
    q = model.quantity(name)
    if q is not None:
        unit = unit or q[1]
        if q[2] is not None and unit is not None:
            value, unit = model.convert(value, unit, q[2]), q[2]
    if unit is None:
        return f"{label} {number(value)}"
    sym, kilo = model.symbol(unit)
    if kilo and abs(value) >= 1000:
        value, sym = value / 1000, "k" + sym
    return f"{label} {number(value)} {sym}"


def view(street: Any, gw: Any, platform: Any, note: str) -> Group:
    """The live dashboard for one moment of the run."""
    elapsed = time.monotonic() - street.started if street.started else 0.0
    devices = Table("device", "via", "packs", "latest values", expand=True)
    for d in platform.devices.values():
        values = ", ".join(
            escape(reading(k, d.values[k], d.units.get(k)))
            for k in SHOWN
            if d.values.get(k) is not None
        )
        devices.add_row(d.code, d.transport, str(d.packs), values or "[dim]waiting[/dim]")
    broker = "[green]up[/green]" if platform.connected else "[red]DOWN[/red]"
    raised, seen = sum(platform.raised.values()), sum(platform.alarms.values())
    stats = Text.from_markup(
        f"{elapsed:4.0f} of {street.options.duration:.0f} s   broker {broker}   "
        f"queue {gw.queue.depth} (peak {street.queue_peak})   "
        f"{number(platform.rate())} messages/s   "
        f"readings {platform.delivered} of {gw.readings} delivered   "
        f"alarms {seen} of {raised} seen"
    )
    alarms = "\n".join(platform.alarm_log) or "(none yet)"
    return Group(
        Panel(stats, title="polekit demo street", subtitle=escape(note)),
        devices,
        Panel(escape(alarms), title="alarms at the platform"),
    )


def summary_text(summary: dict[str, Any]) -> str:
    """The end-of-run summary in words; its last line is the verdict (``PASS`` or
    ``FAIL: <what>``)."""
    produced, delivered = summary["readings_produced"], summary["readings_delivered"]
    lost = summary["lost"]
    lines = [
        f"The street ran {number(summary['duration_s'])} s with "
        f"{_devices(summary['devices'], 'modbus')} on RS-485 and "
        f"{_count(summary['devices'], 'ble')} on BLE"
        + (" and a water node on Wi-Fi MQTT." if summary.get("water") else "."),
        f"Readings: {produced} produced by the gateway, {delivered} reached the platform, "
        + ("none lost." if not lost else f"{lost} lost."),
    ]
    water = summary.get("water")
    if water:
        lost = water["lost"]
        lines.append(
            f"Water node {water['code']}: {water['packs']} reports reached the platform "
            "straight from the node, " + ("none lost." if not lost else f"{lost} lost.")
        )
    raised, seen = summary["alarms_raised"], summary["alarms_seen"]
    names = list(raised) + [n for n in seen if n not in raised]  # in the order they happened
    if names:
        lines.append(
            "Alarms: "
            + ", ".join(
                f"{alarm_words(n)} {seen.get(n, 0)} of {raised.get(n, 0)} seen" for n in names
            )
            + "."
        )
    for c in summary["commands"]:
        if c["acknowledged"]:
            rtt = c["rtt_ms"]
            took = f"{number(rtt)} ms" if rtt < 1000 else f"{number(rtt / 1000)} s"
            lines.append(f"Command: {c['what']} on {c['device']}: acknowledged in {took}.")
        else:
            lines.append(
                f"Command: {c['what']} on {c['device']}: NOT acknowledged ({c['reason']})."
            )
    if summary["broker_outage_s"]:
        lines.append(
            f"Outage: the broker was down {number(summary['broker_outage_s'])} s; the gateway "
            f"queued up to {summary['queue_peak']} messages and delivered them when it came back."
        )
    if summary.get("overtime_s", 0) >= 1:
        lines.append(
            f"Overtime: the street ran {number(summary['overtime_s'])} s longer for the "
            "platform to see the last alarms and results (emulated boards answer late on a "
            "busy machine)."
        )
    if summary.get("faults"):
        lines.append("Broken on purpose: " + ", ".join(summary["faults"]) + ".")
    lines.append(summary["verdict"])
    return "\n".join(lines)


def _count(devices: list[dict[str, Any]], transport: str) -> int:
    return sum(1 for d in devices if d["transport"] == transport)


def _devices(devices: list[dict[str, Any]], transport: str) -> str:
    n = _count(devices, transport)
    return f"{n} device" if n == 1 else f"{n} devices"
