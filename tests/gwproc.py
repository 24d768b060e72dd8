"""A real gateway process for fault tests: started with ``polekit gateway run``, its status
endpoint found in its log, and a simulated Modbus TCP device that numbers every read it
answers in its ``node_seq`` register (so a pack names the read it came from)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from polekit.hil.fieldbus import SimulatedBus
from polekit.protocols import modbus

from gwkit import gateway_run_argv

NODE_SEQ = modbus.register_map("pole-env").point("node_seq")


class CountingDevices(SimulatedBus):
    """pole-env devices on Modbus TCP that answer each read of ``node_seq`` with the number
    of that read (1, 2, ...) per unit, and remember when they answered it: the same thing
    the community node's ``node_seq`` does for its reports, one number a read here."""

    def __init__(self, units: list[int]) -> None:
        regmap = modbus.register_map("pole-env")
        super().__init__({u: regmap for u in units}, tcp=("127.0.0.1", 0))
        self.answered: dict[int, dict[int, float]] = {u: {} for u in units}  # unit: n -> t
        self._asked: dict[int, int] = {}  # transaction id -> first register asked

    def _silence_absent(self, sending: bool, data: bytes) -> bytes:
        data = super()._silence_absent(sending, data)
        if len(data) < 12 or data[7] != 4:  # input registers only (node_seq is one)
            return data
        tid = int.from_bytes(data[0:2], "big")
        if not sending:
            self._asked[tid] = int.from_bytes(data[8:10], "big")
            return data
        first = self._asked.pop(tid, None)
        offset = None if first is None else NODE_SEQ.address - first
        if offset is None or offset < 0 or 9 + 2 * offset + 4 > len(data):
            return data
        unit = data[6]
        n = len(self.answered[unit]) + 1
        self.answered[unit][n] = time.monotonic()
        at = 9 + 2 * offset
        return data[:at] + n.to_bytes(4, "big") + data[at + 4 :]


def node_seq_of(pack: list[dict[str, Any]]) -> int:
    """The ``node_seq`` record of a resolved pack."""
    return int(next(r["v"] for r in pack if r["n"].endswith(":node_seq")))


def write_config(
    path: Path,
    data_dir: Path,
    broker_url: str,
    devices: list[dict[str, Any]],
    buses: list[dict[str, Any]],
    queue_max_mb: float = 256,
) -> Path:
    """A gateway.toml for a process gateway (status on a free port)."""
    lines = [
        "[gateway]",
        'id = "gw-fault"',
        f'data_dir = "{data_dir}"',
        f"queue_max_mb = {queue_max_mb}",
        "[mqtt]",
        f'url = "{broker_url}"',
        "[status]",
        "port = 0",
    ]
    for table, rows in (("bus", buses), ("device", devices)):
        for row in rows:
            lines.append(f"[[{table}]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in row.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class GatewayProcess:
    """``polekit gateway run -c CONFIG`` in a process of its own, logging to ``log``."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._start = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(
            gateway_run_argv(config),
            stdout=open(log, "ab"),  # noqa: SIM115 - the process owns it
            stderr=subprocess.STDOUT,
        )
        self.status_url: str | None = None

    def output(self) -> str:
        """What this run logged."""
        return self.log.read_bytes()[self._start :].decode(errors="replace")

    def health(self) -> dict[str, Any] | None:
        """/health, or None while the status endpoint is not up yet."""
        if self.status_url is None:
            found = re.search(r"status on (http://\S+/health)", self.output())
            if found is None:
                return None
            self.status_url = found.group(1)
        with urllib.request.urlopen(self.status_url, timeout=5) as answer:
            return json.loads(answer.read())

    def alive(self) -> bool:
        return self.proc.poll() is None
