"""End-to-end helpers for northbound platforms: a real mosquitto, pymodbus pole-env
devices on Modbus TCP, and a gateway configured with the given ``[platform]`` entries,
in process (``platform_bench``) or as ``polekit gateway run`` (``platform_process``, for
kill -9). Each adapter's tests use these; see /work docs: docs/platforms.md."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gwproc import GatewayProcess

from polekit.gateway.app import Gateway
from polekit.gateway.config import Config, parse_config
from polekit.hil.broker import LocalBroker
from polekit.hil.fieldbus import SimulatedBus
from polekit.protocols import identity, modbus

from gwkit import Collector, gateway_running

POLE_ENV = modbus.register_map("pole-env")


REFS = Path(__file__).parent.parent / ".venv-refs"


def reference_python(name: str) -> str:
    """The interpreter of the reference client ``name`` (``make setup`` builds
    .venv-refs/NAME from tests/refs/NAME.txt); fails with what to run when missing."""
    exe = REFS / name / "bin" / "python"
    if not exe.exists():
        raise AssertionError(
            f"the {name} reference client is not installed: run `make setup` "
            f"(it builds {exe.parent.parent} from tests/refs/{name}.txt)"
        )
    return str(exe)


def pole_code(unit: int) -> str:
    """The device code of the pole-env device at Modbus unit ``unit``."""
    return identity.make("371600", "PL", unit)


def toml_value(value: Any) -> str:
    """``value`` in TOML (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def platform_toml(
    data_dir: Path,
    broker_url: str,
    platforms: dict[str, Any] | list[dict[str, Any]],
    device_port: int,
    units: tuple[int, ...] = (1,),
    poll_s: float = 0.2,
    gateway_id: str = "gw-plat",
) -> str:
    """A gateway.toml: [mqtt] on ``broker_url``, one Modbus TCP bus on ``device_port``
    with pole-env devices at ``units``, and the platform entries (a dict: ``[platform]``;
    a list: ``[[platform]]``)."""
    lines = [
        "[gateway]",
        f'id = "{gateway_id}"',
        f'data_dir = "{data_dir}"',
        "[mqtt]",
        f'url = "{broker_url}"',
        "[status]",
        "port = 0",
        "[[bus]]",
        'name = "poles"',
        'type = "tcp"',
        'host = "127.0.0.1"',
        f"port = {device_port}",
        "timeout = 0.3",
    ]
    for unit in units:
        lines += [
            "[[device]]",
            f'code = "{pole_code(unit)}"',
            'bus = "poles"',
            f"unit = {unit}",
            'map = "pole-env"',
            f"poll_interval = {poll_s}",
        ]
    entries = [platforms] if isinstance(platforms, dict) else platforms
    header = "[platform]" if isinstance(platforms, dict) else "[[platform]]"
    for entry in entries:
        lines.append(header)
        lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


class WallClock:
    """A wall clock a test moves: the real time plus ``offset_s``. Given to the gateway
    (``Gateway(config, wall_clock=...)``), it signs the platform logins and decides
    when they are renewed; set ``offset_s`` to put the gateway just before a login
    expires, or before 2024 (a board without NTP)."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def __call__(self) -> float:
        return time.time() + self.offset_s

    def set(self, now_s: float) -> None:
        """Make the clock say ``now_s`` now (and run on from there)."""
        self.offset_s = now_s - time.time()


@dataclass
class Bench:
    """A running end-to-end setup. ``sub`` sees every message on the broker (``#``);
    ``devices`` is the pymodbus server (``await devices.get(unit, "lamp_level")`` reads
    what a command wrote); ``codes[unit]`` the device codes; ``broker.stop()`` /
    ``broker.start()`` make an outage."""

    broker: LocalBroker
    devices: SimulatedBus
    codes: dict[int, str]
    config: Config
    config_path: Path
    gateway: Gateway | None = None
    sub: Collector | None = None

    def topics(self, prefix: str) -> list[str]:
        assert self.sub is not None
        return [m.topic for m in self.sub.messages if m.topic.startswith(prefix)]


async def start_devices(units: tuple[int, ...]) -> SimulatedBus:
    """pole-env devices at ``units`` on Modbus TCP, on a free loopback port."""
    return await SimulatedBus({u: POLE_ENV for u in units}, tcp=("127.0.0.1", 0)).start()


def write_platform_config(
    tmp_path: Path,
    broker: LocalBroker,
    platforms: dict[str, Any] | list[dict[str, Any]],
    devices: SimulatedBus,
    units: tuple[int, ...],
    poll_s: float = 0.2,
) -> Path:
    path = tmp_path / "gateway.toml"
    assert devices.tcp_port is not None
    text = platform_toml(tmp_path / "data", broker.url, platforms, devices.tcp_port, units, poll_s)
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def platform_bench(
    tmp_path: Path,
    platforms: dict[str, Any] | list[dict[str, Any]],
    units: tuple[int, ...] = (1,),
    poll_s: float = 0.2,
    broker: LocalBroker | None = None,
    run_gateway: bool = True,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Bench]:
    """A mosquitto (``broker`` or a new one), pole-env devices, and a gateway in this
    process with ``platforms``, running (unless ``run_gateway`` is False: then start
    your own with ``gateway_running(bench.gateway, ...)``); stopped on the way out.
    ``wall_clock``: the clock the gateway signs platform logins with (see ``WallClock``)."""
    own = broker is None
    b = broker or LocalBroker(kind="mosquitto").start()
    devices = await start_devices(units)
    try:
        path = write_platform_config(tmp_path, b, platforms, devices, units, poll_s)
        import tomllib

        config = parse_config(tomllib.loads(path.read_text()), path)
        bench = Bench(b, devices, {u: pole_code(u) for u in units}, config, path)
        bench.gateway = Gateway(config, wall_clock=wall_clock)
        if not run_gateway:
            async with Collector(b.host, b.port, topic_filter="#") as sub:
                bench.sub = sub
                yield bench
            return
        async with Collector(b.host, b.port, topic_filter="#") as sub:
            bench.sub = sub
            async with gateway_running(bench.gateway, b.host, b.port):
                yield bench
    finally:
        await devices.stop()
        if own:
            b.stop()


@contextlib.contextmanager
def platform_process(
    tmp_path: Path, broker: LocalBroker, config_path: Path, log_name: str = "gateway.log"
) -> Iterator[GatewayProcess]:
    """``polekit gateway run -c config_path`` in a process of its own (``.proc.kill()``
    for kill -9); killed on the way out if still running."""
    proc = GatewayProcess(config_path, tmp_path / log_name)
    try:
        yield proc
    finally:
        if proc.alive():
            proc.proc.kill()
        proc.proc.wait(timeout=10)
