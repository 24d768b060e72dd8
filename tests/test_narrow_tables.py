"""Device codes (and addresses) are never cut in the tables a person reads at an 80-column
terminal: the other columns wrap first. Each table is printed by the real command, as a
subprocess at COLUMNS=80, from real parts (``gateway check --probe`` is in
test_simulate.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from polekit.gateway.app import Gateway
from polekit.hil.air import SimulatedBTHomeDevice, VirtualAir
from polekit.hil.broker import free_port
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity

from gwkit import METER, POLE_1, gateway_config, run, start_meter, until

LONG_BUS = "cabinet-7-north-meters"  # a long name, as sites name things


def polekit_80(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polekit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )


def test_gateway_status_shows_whole_codes_beside_a_long_error(tmp_path: Path) -> None:
    async def scenario() -> subprocess.CompletedProcess[str]:
        port = free_port()
        sim = await start_meter(port)  # unit 3 answers; unit 9 is silent
        gw = Gateway(
            gateway_config(
                tmp_path,
                "mqtt://127.0.0.1:1",  # no broker: the status endpoint still tells
                [{"name": LONG_BUS, "type": "tcp", "host": "127.0.0.1", "port": port}],
                [
                    {"code": METER, "bus": LONG_BUS, "unit": 3, "map": "sdm120"},
                    {"code": POLE_1, "bus": LONG_BUS, "unit": 9, "map": "pole-env"},
                ],
            )
        )
        task = asyncio.create_task(gw.run())
        try:
            devices = gw.buses[LONG_BUS].devices
            await until(
                lambda: devices[METER].online is True and devices[POLE_1].online is False,
                timeout_s=30,
                what="the meter online and the silent pole offline",
            )
            url = f"http://127.0.0.1:{gw.status.port}"
            return await asyncio.to_thread(polekit_80, "gateway", "status", "--url", url)
        finally:
            gw.stop()
            await task
            await sim.stop()

    result = run(scenario())
    assert result.returncode == 0, result.stdout + result.stderr
    assert METER in result.stdout and POLE_1 in result.stdout, result.stdout
    assert "offline" in result.stdout  # the state is not cut either


def test_ble_scan_shows_whole_codes_and_addresses(tmp_path: Path) -> None:
    code = identity.make("371600", "TH", 1)
    address = "A4:C1:38:00:00:01"
    with VirtualAir(tmp_path / "air.sock") as air:
        thermo = SimulatedBTHomeDevice(
            air.path,
            address,
            lambda: {"temperature": 22.5, "humidity": 41.0, "battery": 90},
            every_s=0.2,
            name="ATC_hall",
        )
        try:
            config = tmp_path / "gw.toml"
            config.write_text(
                f'[gateway]\nid = "gw-scan"\ndata_dir = "{tmp_path}"\n[ble]\nair = "{air.path}"\n'
                f'[[device]]\ncode = "{code}"\ntransport = "ble"\naddress = "{address}"\n'
            )
            result = polekit_80("ble", "scan", "-d", "1.5", "-c", str(config))
        finally:
            thermo.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert code in result.stdout and address in result.stdout, result.stdout


def test_provision_summary_shows_whole_codes(tmp_path: Path) -> None:
    codes = [identity.make("371600", "PL", n) for n in (41, 42)]
    missing = "/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_0001-if00-port0"
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "flash") as board:
        manifest = tmp_path / "street.csv"
        manifest.write_text(
            "port,board,device_code,site\n"
            f"{board.repl},pole-env-esp32,{codes[0]},Main St 1\n"  # passes: MAC, firmware
            f"{missing},pole-env-esp32,{codes[1]},Main St 2\n"  # fails: a long error
        )
        result = polekit_80("provision", "-m", str(manifest))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 failed" in result.stdout, result.stdout
    table = result.stdout[result.stdout.index("┏") :]  # not the progress lines above it
    for c in codes:
        assert c in table, table
