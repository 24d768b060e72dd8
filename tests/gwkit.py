"""Helpers for the gateway tests: a collector of what reaches the broker, a bench with a
virtual RS-485 line and simulated field devices, waiting with deadlines (never sleep and
hope)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from polekit.gateway.app import Gateway
from polekit.gateway.config import Config, parse_config
from polekit.hil.fieldbus import SimulatedBus
from polekit.protocols import identity, modbus, senml

POLE_1 = identity.make("371600", "PL", 1)
POLE_2 = identity.make("371600", "PL", 2)
METER = identity.make("371600", "EM", 1)


def run(coro: Coroutine[Any, Any, Any], timeout_s: float = 60) -> Any:
    """Run one async scenario with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def until(
    predicate: Callable[[], bool], timeout_s: float = 10, what: str = "condition"
) -> float:
    """Wait until ``predicate()`` holds; returns the seconds it took; fails after the deadline."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Collector:
    """Subscribes to everything under the prefix and keeps what arrives, in order."""

    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    topic_filter: str = "polekit/#"
    _task: asyncio.Task[None] | None = None
    _client: aiomqtt.Client | None = None

    async def __aenter__(self) -> Collector:
        self._client = aiomqtt.Client(self.host, self.port, identifier=f"collector-{id(self)}")
        await self._client.__aenter__()
        await self._client.subscribe(self.topic_filter, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client:
            try:
                await self._client.__aexit__(None, None, None)
            except aiomqtt.MqttError:  # the broker was stopped under it: nothing to close
                pass

    async def _collect(self) -> None:
        assert self._client is not None
        async for m in self._client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self.messages.append(Received(str(m.topic), payload, m.retain))

    async def publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1)

    def packs(self, device: str, fmt: str = "senml+cbor") -> list[list[dict[str, Any]]]:
        """Resolved SenML packs received for ``device``, in arrival order."""
        out = []
        for m in self.messages:
            if m.topic.endswith(f"/data/{device}"):
                pack = (
                    senml.decode_json(m.payload)
                    if fmt == "senml+json"
                    else senml.decode_cbor(m.payload)
                )
                out.append(senml.resolve(pack, now=0))
        return out

    def seqs(self, device: str, fmt: str = "senml+cbor") -> list[int]:
        """The ``seq`` of each received pack of ``device``."""
        return [
            int(next(r["v"] for r in p if r["n"].endswith(":seq"))) for p in self.packs(device, fmt)
        ]

    def on(self, suffix: str) -> list[Received]:
        """Messages whose topic ends with ``suffix``."""
        return [m for m in self.messages if m.topic.endswith(suffix)]


@contextlib.asynccontextmanager
async def gateway_running(gw: Gateway, host: str, port: int) -> AsyncIterator[Collector]:
    """A collector subscribed at ``host:port`` with ``gw`` running; stops the gateway on
    the way out, whatever the test asserted."""
    async with Collector(host, port) as sub:
        task = asyncio.create_task(gw.run())
        try:
            yield sub
        finally:
            gw.stop()
            await task


def gateway_config(
    data_dir: Path,
    broker_url: str,
    buses: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    **mqtt: Any,
) -> Config:
    """A validated config for tests (status endpoint on a free port)."""
    return parse_config(
        {
            "gateway": {"id": "gw-test", "data_dir": str(data_dir)},
            "mqtt": {"url": broker_url, **mqtt},
            "bus": buses,
            "device": devices,
            "status": {"port": 0},
        },
        data_dir / "gateway.toml",
    )


def values_of(pack: list[dict[str, Any]]) -> dict[str, tuple[Any, str | None]]:
    """{short name: (value, unit)} of a resolved pack."""
    out = {}
    for r in pack:
        value = r.get("v", r.get("vb", r.get("vs")))
        out[r["n"].rsplit(":", 1)[1]] = (value, r.get("u"))
    return out


async def start_meter(port: int, unit: int = 3) -> SimulatedBus:
    """A simulated SDM120 energy meter answering Modbus TCP on ``127.0.0.1:port``."""
    return await SimulatedBus(
        {unit: modbus.register_map("sdm120")}, tcp=("127.0.0.1", port)
    ).start()


def meter_gateway(
    data_dir: Path, broker_url: str, port: int, poll_s: float = 0.2, **mqtt: Any
) -> Gateway:
    """A gateway polling the meter of ``start_meter(port)`` (unit 3) as device METER."""
    return Gateway(
        gateway_config(
            data_dir,
            broker_url,
            [{"name": "meters", "type": "tcp", "host": "127.0.0.1", "port": port, "timeout": 0.3}],
            [{"code": METER, "bus": "meters", "unit": 3, "map": "sdm120", "poll_interval": poll_s}],
            **mqtt,
        )
    )


async def start_poles(line: Any, units: list[int]) -> tuple[str, SimulatedBus]:
    """pole-env devices with ``units`` on a new drop of ``line`` (a VirtualLine), and the
    drop the gateway opens. Pseudo-terminals refuse parity: virtual lines run 8N2."""
    gw_port, dev_port = line.endpoint(), line.endpoint()
    regmap = modbus.register_map("pole-env")
    sim = await SimulatedBus(
        {u: regmap for u in units}, serial_port=dev_port, baudrate=19200, parity="N", stopbits=2
    ).start()
    return gw_port, sim


def gateway_run_argv(config: Path) -> list[str]:
    """``polekit gateway run`` on ``config`` as a process of its own, plain-text log lines."""
    return [
        sys.executable,
        "-m",
        "polekit",
        "gateway",
        "run",
        "-c",
        str(config),
        "--log-format",
        "text",
    ]
