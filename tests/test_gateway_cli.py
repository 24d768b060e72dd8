"""``polekit gateway check --probe`` and ``polekit gateway status`` against real parts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from polekit.hil.broker import LocalBroker, free_port

from gwkit import METER, POLE_1, meter_gateway, run, start_meter, until


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "polekit",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def test_probe_polls_each_device_once_and_tables_the_answers(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str]:
        port = free_port()
        sim = await start_meter(port)
        await sim.set(3, "voltage", 231.0)
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
[gateway]
id = "gw-probe"
data_dir = "{tmp_path}"
[mqtt]
url = "mqtt://127.0.0.1:1"
[[bus]]
name = "meters"
type = "tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.3
[[device]]
code = "{METER}"
bus = "meters"
unit = 3
map = "sdm120"
[[device]]
code = "{POLE_1}"
bus = "meters"
unit = 9
map = "pole-env"
""")
        result = await _cli("gateway", "check", "--probe", "-c", str(config))
        await sim.stop()
        return result

    code, out = run(scenario())
    assert code == 1, out  # one of the two devices is silent
    assert "voltage=231.0 V" in out and "ok" in out
    assert POLE_1 in out and "no answer" in out


def test_status_command_shows_a_running_gateway(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str, int, str]:
        port = free_port()
        sim = await start_meter(port)
        with LocalBroker() as broker:
            gw = meter_gateway(tmp_path, broker.url, port, 0.2)
            task = asyncio.create_task(gw.run())
            await until(
                lambda: gw.buses["meters"].devices[METER].online is True and gw.uplink.connected,
                what="the meter online and the broker connected",
            )
            code, out = await _cli(
                "gateway", "status", "--url", f"http://127.0.0.1:{gw.status.port}"
            )
            gw.stop()
            await task
        await sim.stop()
        down_code, down = await _cli(
            "gateway", "status", "--url", f"http://127.0.0.1:{free_port()}"
        )
        return code, out, down_code, down

    code, out, down_code, down = run(scenario())
    assert code == 0, out
    assert METER in out and "online" in out and "broker connected" in out
    assert down_code == 1 and "Is it running?" in down
