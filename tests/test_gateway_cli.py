"""``polekit gateway check --probe`` and ``polekit gateway status`` against real parts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from polekit.hil.broker import LocalBroker, free_port
from polekit.hil.fieldbus import SimulatedBus
from polekit.hil.line import VirtualLine
from polekit.protocols import identity, modbus

from gwkit import (
    METER,
    POLE_1,
    POLE_2,
    Collector,
    meter_gateway,
    run,
    start_meter,
    start_poles,
    until,
)

POLE_3 = identity.make("371600", "PL", 3)


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


def test_run_logs_a_bus_that_cannot_be_opened_at_once_and_the_others_carry_on(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "ttyUSB9"  # no adapter there (yet)
    locked = tmp_path / "ttyUSB7"  # a port this user may not open
    locked.touch(mode=0)
    # root opens anything: the gateway runs without the capability that lets it, so the
    # port is refused as it is for an ordinary user
    as_user = (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    )

    async def scenario() -> tuple[list[str], int, list[int], str]:
        with LocalBroker() as broker, VirtualLine() as line, VirtualLine() as line2:
            gw_port, sim = await start_poles(line, [1])
            odd = line.endpoint()  # a port that opens but refuses the settings (parity)
            buses = [
                ("cabinet", gw_port, "N"),
                ("underpass", str(missing), "N"),
                ("locked", str(locked), "N"),
                ("odd", odd, "E"),
            ]
            devices = [(POLE_1, "cabinet", 1), (POLE_2, "underpass", 2), (POLE_3, "locked", 3)]
            toml = [
                f'[gateway]\nid = "gw-buses"\ndata_dir = "{tmp_path / "data"}"',
                f'[mqtt]\nurl = "{broker.url}"',
                "[status]\nport = 0",
            ]
            toml += [
                f'[[bus]]\nname = "{name}"\ntype = "rtu"\nport = "{port}"\nbaudrate = 19200\n'
                f'parity = "{parity}"\ntimeout = 0.3'
                for name, port, parity in buses
            ]
            toml += [
                f'[[device]]\ncode = "{code}"\nbus = "{bus}"\nunit = {unit}\nmap = "pole-env"\n'
                "poll_interval = 0.2"
                for code, bus, unit in devices
            ]
            config = tmp_path / "gateway.toml"
            config.write_text("\n\n".join(toml) + "\n")
            proc = await asyncio.create_subprocess_exec(
                *as_user,
                sys.executable,
                "-m",
                "polekit",
                "gateway",
                "run",
                "-c",
                str(config),
                "--log-format",
                "text",
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stderr is not None
            lines: list[str] = []

            async def read_log() -> None:
                assert proc.stderr is not None
                async for raw in proc.stderr:
                    lines.append(raw.decode().rstrip())

            reader = asyncio.create_task(read_log())
            try:
                async with Collector(broker.host, broker.port) as sub:
                    # the cabinet's pole is polled and published while the others fail
                    await until(lambda: len(sub.packs(POLE_1)) >= 3, 30, "the cabinet's packs")
                    await until(
                        lambda: all(
                            any(f"bus {b}:" in ln for ln in lines)
                            for b in ("underpass", "locked", "odd")
                        ),
                        10,
                        "a log line for each bus that does not open",
                    )
                    before = len(sub.packs(POLE_1))
                    await until(lambda: len(sub.packs(POLE_1)) >= before + 5, 30, "more packs")
                    # meanwhile they were retried (every second at most): still one line each
                    logged_once = [
                        sum(f"bus {b}:" in ln for ln in lines)
                        for b in ("underpass", "locked", "odd")
                    ]
                    # the adapter is plugged in: the retries find it
                    dev = line2.endpoint()
                    line2.endpoint(link=str(missing))
                    sim2 = await SimulatedBus(
                        {2: modbus.register_map("pole-env")},
                        serial_port=dev,
                        baudrate=19200,
                        parity="N",
                        stopbits=2,
                    ).start()
                    await until(lambda: len(sub.packs(POLE_2)) >= 1, 10, "the underpass's packs")
                    await sim2.stop()
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 15)
                await asyncio.wait_for(reader, 5)
                await sim.stop()
            return lines, code, logged_once, odd

    lines, code, logged_once, odd = run(scenario(), 120)
    text = "\n".join(lines)
    assert code == 0, text
    assert logged_once == [1, 1, 1], text  # one line for each shut bus while it stayed shut
    underpass = next(ln for ln in lines if "bus underpass:" in ln)
    assert underpass.endswith(
        f"ERROR   polekit.gateway.modbus: bus underpass: cannot open serial port {missing}: "
        "No such file or directory (is the adapter plugged in, and the path right?); retrying"
    ), text  # the first attempt's: no "attempts so far"
    locked_line = next(ln for ln in lines if "bus locked:" in ln)
    assert f"cannot open serial port {locked}: Permission denied" in locked_line, text
    odd_line = next(ln for ln in lines if "bus odd:" in ln)
    assert f"cannot open serial port {odd}: Invalid argument" in odd_line, text
    assert "bus underpass connected" in text and "Traceback" not in text
