"""Over-the-air updates through a running gateway (issue 16 items 4 and 5): a gateway
process (``polekit gateway run``), a real mosquitto, signed bundles made by ``polekit
keys``/``polekit build --sign``, and the field tool as a user runs it. The rollouts that
reach nodes run against emulated pole nodes with the real firmware on one paced 9600-baud
RS-485 line (tests/otakit.py); the refusals against pymodbus devices (gwproc.py), where
every request on the wire is seen, so "nothing was sent" is checked, not assumed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from gwproc import CountingDevices, GatewayProcess, write_config

from polekit.hil.broker import LocalBroker
from polekit.protocols import cbor, identity

from gwkit import Collector, run, until

POLE = identity.make("371600", "PL", 41)
WINDOW = 0x1000  # the OTA window's first register (docs/protocols.md): none below is OTA


def polekit(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``polekit ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "polekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def make_key(folder: Path, name: str) -> Path:
    """``polekit keys new NAME`` in ``folder``: the .pub's path."""
    done = polekit("keys", "new", name, cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder / f"{name}.pub"


def signed_bundle(folder: Path, key: Path, version: str, **extra: str) -> Path:
    """``polekit build --sign KEY --version V -o folder`` for the pole board."""
    args = ["build", "--board", "pole-env-esp32", "--sign", str(key), "--version", version]
    for option, value in extra.items():
        args += [f"--{option.replace('_', '-')}", value]
    done = polekit(*args, "-o", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


class WatchedDevices(CountingDevices):
    """CountingDevices that also keep every request they were sent: (unit, function,
    first register)."""

    def __init__(self, units: list[int]) -> None:
        super().__init__(units)
        self.requests: list[tuple[int, int, int]] = []

    def _silence_absent(self, sending: bool, data: bytes) -> bytes:
        if not sending and len(data) >= 10:
            self.requests.append((data[6], data[7], int.from_bytes(data[8:10], "big")))
        return super()._silence_absent(sending, data)

    def ota_requests(self) -> list[tuple[int, int, int]]:
        """Requests into the OTA window, or of a writing function."""
        return [r for r in self.requests if r[2] >= WINDOW or r[1] in (6, 16, 21)]


def ota_config(
    path: Path, data_dir: Path, broker_url: str, devices: Any, buses: Any, key: Path, **ota: Any
) -> Path:
    """gwproc's config with an [ota] table trusting ``key``."""
    write_config(path, data_dir, broker_url, devices, buses)
    lines = ["[ota]", f'public_key = "{key}"'] + [f"{k} = {json.dumps(v)}" for k, v in ota.items()]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def rollouts_in(database: Path) -> list[tuple[Any, ...]]:
    """The rollouts a gateway's database holds (none if it never had one)."""
    db = sqlite3.connect(database)
    try:
        return db.execute("SELECT id, state FROM ota_rollout").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_bundle_signed_by_another_key_is_refused_before_any_transfer(tmp_path: Path) -> None:
    ours = make_key(tmp_path, "city")
    theirs = tmp_path / "intruder.key"
    make_key(tmp_path, "intruder")
    bundle = signed_bundle(tmp_path / "evil", theirs, "0.2")

    async def scenario() -> None:
        devices = await WatchedDevices([1]).start()
        try:
            with LocalBroker() as broker:
                config = ota_config(
                    tmp_path / "gateway.toml",
                    tmp_path / "data",
                    broker.url,
                    [
                        {
                            "code": POLE,
                            "bus": "poles",
                            "unit": 1,
                            "map": "pole-env",
                            "poll_interval": 0.2,
                        }
                    ],
                    [
                        {
                            "name": "poles",
                            "type": "tcp",
                            "host": "127.0.0.1",
                            "port": devices.tcp_port,
                        }
                    ],
                    ours,
                )
                async with Collector(broker.host, broker.port) as sub:
                    gw = GatewayProcess(config, tmp_path / "gateway.log")
                    try:
                        await until(
                            lambda: len(sub.on(f"/data/{POLE}")) > 0, 20, "the pole's first poll"
                        )
                        # the platform's ota command, and the field tool, with the bundle
                        await sub.publish(
                            f"polekit/v1/gw-fault/cmd/{POLE}",
                            json.dumps({"id": 5, "ota": {"bundle": str(bundle)}}).encode(),
                        )
                        await until(lambda: sub.on(f"/cmd-result/{POLE}"), 20, "the result")
                        result = cbor.loads(sub.on(f"/cmd-result/{POLE}")[0].payload)
                        cli = await asyncio.to_thread(
                            polekit,
                            "ota",
                            "push",
                            "-c",
                            str(config),
                            "--bundle",
                            str(bundle),
                            "--devices",
                            POLE,
                        )
                        polls = len(sub.on(f"/data/{POLE}"))
                        await until(lambda: len(sub.on(f"/data/{POLE}")) > polls + 3, 10, "polls")
                        health = await asyncio.to_thread(gw.health)
                    finally:
                        gw.proc.terminate()
                        gw.proc.wait(timeout=15)
        finally:
            await devices.stop()
        assert result["id"] == 5 and result["ok"] is False, result
        assert "signature" in result["error"] and "(code 1)" in result["error"], result
        assert cli.returncode == 1 and "signature" in cli.stderr, cli.stderr
        assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr  # one line, no traceback
        assert health is not None and health["ota"]["rollout"] is None
        assert rollouts_in(tmp_path / "data" / "queue.sqlite3") == []
        assert devices.ota_requests() == []  # not one request into the window
        assert not any((tmp_path / "data" / "ota").glob("*/manifest.cbor"))  # nothing kept

    run(scenario(), 120)
