"""``polekit gateway check --probe`` and ``polekit gateway status`` against real parts."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

from polekit.hil.broker import LocalBroker, free_port

from boardkit import MPREMOTE, polekit, polekit_emulate
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
