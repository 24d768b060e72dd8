"""polekit's side: a gateway.toml for a case, written with the config options this
checkout's gateway accepts, and ``polekit gateway run -c CONFIG`` to run it.

Options that other work may add are used when the config validator accepts them and
left out (with a note in the table) when it refuses them: ``[[map]]`` register maps
(otherwise each device spells out its points), ``max_in_flight`` on a TCP bus (otherwise
one transaction at a time), poll intervals below the validator's floor (otherwise the
floor, and the ratio shows the shortfall).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from peerkit.cases import Case
from peerkit.launch import Launch
from peerkit.simulator import RTU_FRAMING
from peerkit.subscriber import polekit_polls
from polekit.gateway.config import ConfigError, parse_config
from polekit.protocols import identity

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from gwkit import gateway_run_argv  # noqa: E402 - the one spelling of the command line

GATEWAY_ID = "bench"
MAP_NAME = "bench10"
FALLBACK_POLL_S = 0.05  # the floor of gateways whose config refuses shorter intervals


def device_code(unit: int) -> str:
    """The device code the bench gives the device at ``unit``."""
    return identity.make("371600", "PL", unit)


def _points(registers: int) -> list[dict[str, Any]]:
    return [
        {"name": f"r{i}", "address": i, "table": "holding", "type": "u16"} for i in range(registers)
    ]


def _bus(case: Case, endpoint: Any, name: str) -> dict[str, Any]:
    if case.spec.kind == "rtu":
        return {
            "name": name,
            "type": "rtu",
            "port": endpoint,
            "baudrate": case.spec.baud,
            **RTU_FRAMING,
            "timeout": 1.0,
        }
    host, port = endpoint
    return {"name": name, "type": "tcp", "host": host, "port": port, "timeout": 1.0}


def build(
    case: Case,
    endpoint: Any,
    broker_url: str,
    data_dir: Path,
    buses: int = 1,
    max_in_flight: int = 1,
    use_map: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """The config (as TOML tables) for ``case``, and notes on what had to be left out."""
    notes: list[str] = []
    units = case.spec.all_units
    n_buses = 1 if case.spec.kind == "rtu" else max(1, min(buses, len(units)))
    if n_buses > 1:
        notes.append(f"{n_buses} [[bus]] entries to the one endpoint")
    bus_list = [_bus(case, endpoint, f"b{i + 1}") for i in range(n_buses)]
    devices = [
        {"code": device_code(u), "bus": f"b{i % n_buses + 1}", "unit": u}
        for i, u in enumerate(units)
    ]
    raw: dict[str, Any] = {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(data_dir)},
        "mqtt": {"url": broker_url},
        "status": {"port": 0},
        "bus": bus_list,
        "device": devices,
    }
    # the baseline every checkout accepts: points spelled out per device, the floor
    poll = case.poll_s if _accepts(_with_poll(raw, case, case.poll_s)) else FALLBACK_POLL_S
    if poll != case.poll_s:
        notes.append(f"poll_interval {case.poll_s} s refused: polled at {poll} s")
    for d in devices:
        d["poll_interval"] = poll
        d["point"] = _points(case.spec.registers)
    if use_map:
        trial = _with_map(raw, case)
        if _accepts(trial):
            raw = trial
        else:
            notes.append("[[map]] refused: points spelled out per device")
    if max_in_flight > 1 and case.spec.kind == "tcp":
        trial = {**raw, "bus": [{**b, "max_in_flight": max_in_flight} for b in raw["bus"]]}
        if _accepts(trial):
            raw = trial
            notes.append(f"max_in_flight {max_in_flight}")
        else:
            notes.append("max_in_flight refused: 1 transaction at a time")
    return raw, notes


def _with_poll(raw: dict[str, Any], case: Case, poll: float) -> dict[str, Any]:
    devices = [
        {**d, "poll_interval": poll, "point": _points(case.spec.registers)} for d in raw["device"]
    ]
    return {**raw, "device": devices}


def _with_map(raw: dict[str, Any], case: Case) -> dict[str, Any]:
    devices = [
        {k: v for k, v in d.items() if k != "point"} | {"map": MAP_NAME} for d in raw["device"]
    ]
    return {
        **raw,
        "map": [{"name": MAP_NAME, "point": _points(case.spec.registers)}],
        "device": devices,
    }


def _accepts(raw: dict[str, Any]) -> bool:
    try:
        parse_config(raw, "<bench>")
    except ConfigError:
        return False
    return True


def to_toml(raw: dict[str, Any]) -> str:
    """TOML text for the config tables (tables, arrays of tables one level deep, scalars)."""
    lines: list[str] = []

    def scalars(table: dict[str, Any]) -> None:
        lines.extend(
            f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, list | dict)
        )

    for key, value in raw.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            scalars(value)
        else:
            for row in value:
                lines.append(f"[[{key}]]")
                scalars(row)
                for sub, rows in row.items():
                    if isinstance(rows, list):
                        for r in rows:
                            lines.append(f"[[{key}.{sub}]]")
                            scalars(r)
    return "\n".join(lines) + "\n"


def launch(
    case: Case,
    endpoint: Any,
    broker_url: str,
    run_dir: Path,
    buses: int = 1,
    max_in_flight: int = 1,
) -> Launch:
    """Write the config into ``run_dir`` and say how to run polekit on it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    raw, notes = build(case, endpoint, broker_url, run_dir / "data", buses, max_in_flight)
    config = run_dir / "gateway.toml"
    config.write_text(to_toml(raw))
    config.chmod(0o600)  # it would hold the broker password: the gateway checks the mode
    return Launch(
        gateway="polekit",
        argv=gateway_run_argv(config),
        cwd=run_dir,
        topic=f"polekit/v1/{GATEWAY_ID}/data/#",
        decode=polekit_polls,
        unit_of={device_code(u): u for u in case.spec.all_units}.get,
        notes=notes,
        log=run_dir / "gateway.log",
    )
