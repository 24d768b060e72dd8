"""``polekit simulate``: simulated Modbus devices an integrator starts from the command line,
read here by a real pymodbus client over TCP and over the pseudo-terminal it prints, and by
the gateway's own probe with the config snippet the command prints."""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient

from polekit.hil.broker import free_port
from polekit.hil.field_values import FieldValues
from polekit.protocols import modbus

SDM120 = modbus.register_map("sdm120")
POLE = modbus.register_map("pole-env")


class Simulator:
    """``polekit simulate ARGS`` in the background, its output read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polekit", "simulate", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._rest = b""

    def read_until(self, text: str, timeout_s: float = 30) -> list[str]:
        # from the pipe itself, not a buffered reader: select() sees what is still unread
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise AssertionError(f"no {text!r} from polekit simulate: {self.lines} {err}")
            self._rest += chunk
            *whole, self._rest = self._rest.split(b"\n")
            self.lines += [line.decode() for line in whole]
        return self.lines

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=15)


@contextlib.contextmanager
def simulate(*args: str) -> Iterator[Simulator]:
    sim = Simulator(*args)
    try:
        yield sim
    finally:
        if sim.proc.poll() is None:
            sim.proc.kill()
            sim.proc.wait()


def read(client: ModbusTcpClient | ModbusSerialClient, unit: int, point: modbus.Point) -> float:
    rr = client.read_input_registers(point.address, count=point.count, device_id=unit)
    assert not rr.isError(), rr
    return float(point.decode(rr.registers))


def until_changed(
    client: ModbusTcpClient | ModbusSerialClient, unit: int, point: modbus.Point
) -> tuple[float, float]:
    first = read(client, unit, point)
    deadline = time.monotonic() + 10
    while (later := read(client, unit, point)) == first:
        assert time.monotonic() < deadline, f"{point.name} of unit {unit} stays {first}"
        time.sleep(0.05)
    return first, later


def polekit(*args: str) -> subprocess.CompletedProcess[str]:
    # as a user at a 80-column terminal: device codes must still show whole
    return subprocess.run(
        [sys.executable, "-m", "polekit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "80"},
    )


def test_tcp_meters_move_plausibly_and_the_printed_config_probes_them(tmp_path: Path) -> None:
    with simulate(
        "--map", "sdm120", "--unit", "1", "--unit", "2", "--tcp", "127.0.0.1:0", "--interval", "0.1"
    ) as sim:
        out = sim.read_until("Ctrl-C to stop.")
        assert out[0].startswith("simulating 2 device(s) on Modbus TCP 127.0.0.1:")
        port = int(out[0].rsplit(":", 1)[1])
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert client.connect()
        try:
            for unit in (1, 2):
                volts = until_changed(client, unit, SDM120.point("voltage"))  # it moves
                assert all(215 < v < 245 for v in volts), volts
                assert 49.9 < read(client, unit, SDM120.point("frequency")) < 50.1
                assert 0 <= read(client, unit, SDM120.point("current")) < 10
                before, after = until_changed(client, unit, SDM120.point("energy"))
                assert after > before  # a meter's energy only grows
            power = read(client, 1, SDM120.point("power"))
            assert 0 <= power < 245 * 10
        finally:
            client.close()
        # the snippet it printed is a working gateway config
        snippet = "\n".join(out[out.index("[[bus]]") : out.index("Ctrl-C to stop.")])
        config = tmp_path / "gateway.toml"
        config.write_text(f'[gateway]\nid = "gw-sim"\ndata_dir = "{tmp_path}"\n\n{snippet}\n')
        probe = polekit("gateway", "check", "--probe", "-c", str(config))
        assert probe.returncode == 0, probe.stdout + probe.stderr
        for code in ("371600EM000001J", "371600EM000002H"):
            assert code in probe.stdout, probe.stdout
        assert "voltage=" in probe.stdout and "no answer" not in probe.stdout
        assert sim.stop(signal.SIGINT) == 0


def test_rtu_on_a_printed_pty_with_two_kinds_of_device(tmp_path: Path) -> None:
    link = tmp_path / "ttySIM"
    with simulate(
        *("--map", "sdm120", "--unit", "5", "--map", "pole-env", "--unit", "9"),
        *("--rtu", "pty", "--link", str(link), "--baudrate", "19200", "--json"),
    ) as sim:
        where = json.loads(sim.read_until("{")[0])
        assert where["rtu"] == str(link) and link.is_symlink()
        assert (where["parity"], where["stopbits"]) == ("N", 2)  # ptys refuse parity: 8N2
        assert where["units"] == {"5": "sdm120", "9": "pole-env"}
        client = ModbusSerialClient(
            str(link), baudrate=19200, parity="N", stopbits=2, timeout=1, retries=3
        )
        assert client.connect()
        try:
            assert 215 < read(client, 5, SDM120.point("voltage")) < 245
            before, after = until_changed(client, 9, POLE.point("temperature"))
            assert all(10 < t < 35 for t in (before, after))
        finally:
            client.close()
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
[gateway]
id = "gw-sim"
data_dir = "{tmp_path}"
[[bus]]
name = "line"
type = "rtu"
port = "{link}"
baudrate = 19200
parity = "N"
[[device]]
code = "371600EM000001J"
bus = "line"
unit = 5
map = "sdm120"
[[device]]
code = "371600PL000001C"
bus = "line"
unit = 9
map = "pole-env"
""")
        probe = polekit("gateway", "check", "--probe", "-c", str(config))
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert "371600EM000001J" in probe.stdout and "371600PL000001C" in probe.stdout
        assert sim.stop(signal.SIGTERM) == 0
    assert not link.exists()  # its pseudo-terminal and the link to it are gone


BAD = [
    (["--map", "sdm120"], 2, "give --tcp HOST:PORT or --rtu PORT|pty"),
    (["--map", "sdm12", "--tcp", "127.0.0.1:0"], 2, "known: acrel-adl400, chint-dtsu666"),
    (["--map", "sdm120", "--tcp", "5020"], 2, "give HOST:PORT, e.g. 127.0.0.1:5020"),
    (["--map", "sdm120", "--map", "pole-env", "--unit", "1", "--tcp", ":0"], 2, "one --unit per"),
    (["--map", "sdm120", "--rtu", "/dev/polekit-no-such-port"], 1, "No such file or directory"),
    (["--map", "sdm120", "--rtu", "pty", "--parity", "E"], 2, "refuse parity E"),
]


@pytest.mark.parametrize("args,status,says", BAD, ids=[b[2][:24] for b in BAD])
def test_mistakes_are_one_line_with_what_to_do(args: list[str], status: int, says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polekit", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == status and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_said_plainly() -> None:
    port = free_port()
    with simulate("--map", "sdm120", "--tcp", f"127.0.0.1:{port}") as first:
        first.read_until("Ctrl-C to stop.")
        second = subprocess.run(
            [sys.executable, "-m", "polekit", "simulate", "--map", "sdm120"]
            + ["--tcp", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1, second.stderr
        assert "address already in use" in second.stderr and "Traceback" not in second.stderr
        assert first.stop() == 0


def test_values_stay_plausible_over_a_day_and_writable_points_are_left_alone() -> None:
    values = FieldValues(POLE, random.Random(7))
    meter = FieldValues(SDM120, random.Random(7))
    energy = []
    for t in range(0, 86400, 60):
        pole = values.at(float(t))
        assert 5 < pole["temperature"] < 40 and 20 < pole["humidity"] < 90
        assert pole["illuminance"] >= 0 and pole["pm2_5"] >= 0
        assert not {"lamp_level", "report_interval"} & pole.keys()  # a master's to write
        reading = meter.at(float(t))
        assert reading["power"] == pytest.approx(
            reading["voltage"] * reading["current"] * 0.95, rel=1e-9
        )
        energy.append(reading["energy"])
        for name, value in reading.items():
            SDM120.point(name).encode(value)  # fits its register
        for name, value in pole.items():
            POLE.point(name).encode(value)
    assert energy == sorted(energy) and energy[-1] > energy[0]
    assert FieldValues(SDM120, random.Random(7)).at(5.0) == FieldValues(
        SDM120, random.Random(7)
    ).at(5.0)  # seeded: the same day twice
