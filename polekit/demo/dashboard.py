"""The demo's live terminal view (rich): devices with their latest values, alarms as they
fire, the gateway's queue, the broker's message rate."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

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
)


def view(street: Any, gw: Any, platform: Any, note: str) -> Group:
    elapsed = time.monotonic() - street.started if street.started else 0.0
    devices = Table("device", "via", "packs", "latest values", expand=True)
    for d in platform.devices.values():
        values = ", ".join(
            f"{k}={_fmt(d.values[k])}" for k in SHOWN if k in d.values and d.values[k] is not None
        )
        devices.add_row(d.code, d.transport, str(d.packs), values or "[dim]waiting[/dim]")
    broker = "[green]up[/green]" if platform.connected else "[red]DOWN[/red]"
    stats = Text.from_markup(
        f"t={elapsed:5.1f}/{street.options.duration:.0f} s   broker {broker}   "
        f"queue {gw.queue.depth:4d} (peak {street.queue_peak})   "
        f"{platform.rate():5.1f} msg/s   readings {platform.delivered}/{gw.readings} delivered"
    )
    alarms = "\n".join(platform.alarm_log) or "(none yet)"
    return Group(
        Panel(stats, title="polekit demo street", subtitle=note),
        devices,
        Panel(alarms, title="alarms and events at the platform"),
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
