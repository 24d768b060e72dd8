"""``polekit gateway check --probe`` and ``polekit gateway status`` against real parts."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from polekit.hil.broker import LocalBroker, free_port
from polekit.hil.fieldbus import SimulatedBus
from polekit.hil.line import VirtualLine
from polekit.protocols import identity, modbus

from boardkit import MPREMOTE, polekit, polekit_emulate
from gwkit import (
    METER,
    POLE_1,
    POLE_2,
    Collector,
    gateway_run_argv,
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
                *gateway_run_argv(config),
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


# ---- gateway.data_dir: `check` finds what would stop `run` --------------------------------


def _as_a_normal_user(*args: str) -> subprocess.CompletedProcess[str]:
    """``polekit ARGS`` with a normal user's file permissions. As root, the same command
    without the capabilities that let root write anywhere (setpriv keeps the uid, so the
    interpreter under /root still starts); as anyone else, as it is."""
    cmd = [sys.executable, "-m", "polekit", *args]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _gateway_config(tmp: Path, data_dir: Path) -> Path:
    config = tmp / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-data-dir"
data_dir = "{data_dir}"
[mqtt]
url = "mqtt://127.0.0.1:{free_port()}"
[status]
enabled = false
""")
    return config


def test_check_and_run_say_who_must_create_the_data_dir_and_how(tmp_path: Path) -> None:
    locked = tmp_path / "var-lib"  # like /var/lib for a normal user: not theirs to write
    locked.mkdir(mode=0o555)
    data_dir = locked / "polekit"
    config = _gateway_config(tmp_path, data_dir)
    user = pwd.getpwuid(os.geteuid()).pw_name
    for command in ("check", "run"):
        result = _as_a_normal_user("gateway", command, "-c", str(config))
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        assert "Traceback" not in out
        assert out.strip() == (
            f"{config}: gateway.data_dir = '{data_dir}' does not exist and user {user} cannot "
            f"create it in {locked} (Permission denied): create it with `sudo install -d -o "
            f"{user} {data_dir}`, or set gateway.data_dir to a folder {user} can write"
        )
    assert list(locked.iterdir()) == []  # the check tried, and left nothing behind


def test_check_finds_a_queue_file_another_user_owns(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    queue = data_dir / "queue.sqlite3"
    queue.write_bytes(b"")
    queue.chmod(0o444)  # what a first run as root leaves for the service user
    config = _gateway_config(tmp_path, data_dir)
    for command in ("check", "run"):
        result = _as_a_normal_user("gateway", command, "-c", str(config))
        out = result.stdout + result.stderr
        assert result.returncode == 2 and "Traceback" not in out, out
        assert f"cannot write {queue} (Permission denied)" in out
        assert f"sudo chown -R {pwd.getpwuid(os.geteuid()).pw_name} {data_dir}" in out


def test_check_finds_a_data_dir_that_cannot_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "srv").write_text("a file where a folder was meant\n")
    for data_dir, why in [
        (tmp_path / "srv" / "polekit", f"{tmp_path / 'srv'} is a file, not a folder"),
        (tmp_path / "srv", "is a file, not a folder"),
        (Path("/proc/polekit-test"), "cannot create it in /proc"),  # refused to root too
    ]:
        result = polekit("gateway", "check", "-c", str(_gateway_config(tmp_path, data_dir)))
        out = result.stdout + result.stderr
        assert result.returncode == 2 and why in out and "Traceback" not in out, out


def test_check_leaves_a_writable_data_dir_as_it_was(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-yet" / "polekit"
    result = polekit("gateway", "check", "-c", str(_gateway_config(tmp_path, data_dir)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not data_dir.parent.exists()  # `gateway run` makes it; `check` only looked


def test_run_says_the_status_port_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        config = _gateway_config(tmp_path, tmp_path / "data")
        port = taken.getsockname()[1]
        config.write_text(config.read_text().replace("enabled = false", f"port = {port}"))
        result = polekit("gateway", "run", "-c", str(config), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().endswith(
        f"{config}: [status] cannot listen on 127.0.0.1:{port}: Address already in use; is "
        "another gateway running? Set [status] port to a free port, or enabled = false"
    )


# ---- the probe and an emulated board whose firmware mpremote stopped ---------------------


def test_probe_of_a_silent_emulated_board_says_its_firmware_may_be_stopped(
    tmp_path: Path,
) -> None:
    with polekit_emulate("--fs", str(tmp_path / "flash")) as ports:
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
[gateway]
id = "gw-quickstart"
data_dir = "{tmp_path / "data"}"
[mqtt]
url = "mqtt://127.0.0.1:1"
[[bus]]
name = "rs485"
type = "rtu"
port = "{ports["uarts"]["rs485"]}"
parity = "N"
timeout = 0.5
[[device]]
code = "{POLE_1}"
bus = "rs485"
unit = 1
map = "pole-env"
""")
        probe = ("gateway", "check", "--probe", "-c", str(config))

        def answers() -> subprocess.CompletedProcess[str]:
            deadline = time.monotonic() + 30
            while (result := polekit(*probe)).returncode != 0 and time.monotonic() < deadline:
                pass  # the firmware is still booting; each probe waits its own timeout
            return result

        running = answers()
        assert running.returncode == 0, running.stdout + running.stderr

        # the quickstart's step: mpremote takes the REPL, which stops the node's firmware
        peek = subprocess.run(
            [MPREMOTE, "connect", ports["repl"], "exec", "import gc; print(gc.mem_free())"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert peek.returncode == 0, peek.stderr
        stopped = polekit(*probe)
        out = " ".join(stopped.stdout.split())  # the hint as one line, whatever the width
        assert stopped.returncode == 1 and "no answer" in out, stopped.stdout
        assert f"{ports['uarts']['rs485']} is a pseudo-terminal" in out
        assert "mpremote (exec, run, repl) or Ctrl-C in its REPL stops it" in out
        assert "Restart it with `polekit emulate reset --control SOCKET`" in out

        # and the advice works
        reset = polekit("emulate", "reset", "--control", ports["control"])
        assert reset.returncode == 0, reset.stderr
        again = answers()
        assert again.returncode == 0, again.stdout
        assert "pseudo-terminal" not in again.stdout
