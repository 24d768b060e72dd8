"""Modbus RTU over TCP, and DTU server mode, against pymodbus's RTU-framed TCP server.

- ``type = "rtu-over-tcp"``: the gateway dials a serial server / DTU that passes RTU frames
  (unit, PDU, CRC) on a TCP socket; the peer is pymodbus's ModbusTcpServer with
  ``framer=FramerType.RTU`` (SimulatedBus(rtu_over_tcp=True)).
- ``type = "dtu-server"``: the gateway listens; a DTU dials in, sends its registration
  packet (an IMEI) and relays bytes to its serial line, here a relay to the same
  RTU-framed pymodbus server. A DTU with another registration is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from polekit.gateway.config import ConfigError, parse_config
from polekit.gateway.sources.modbus_bus import ModbusBus
from polekit.hil.fieldbus import SimulatedBus
from polekit.protocols import devices as library
from polekit.protocols import identity

CODE = identity.make("371600", "EM", 7)
IMEI = "860123456789012"


def _config(bus: dict[str, Any]) -> Any:
    return parse_config(
        {
            "gateway": {"id": "gw-dtu"},
            "bus": [{"name": "far", "timeout": 1.0, **bus}],
            "device": [
                {
                    "code": CODE,
                    "bus": "far",
                    "unit": 3,
                    "map": "chint-dtsu666",
                    "poll_interval": 0.2,
                }
            ],
        }
    )


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _meter_server() -> SimulatedBus:
    sim = SimulatedBus(
        {3: library.register_map("chint-dtsu666")}, tcp=("127.0.0.1", 0), rtu_over_tcp=True
    )
    await sim.start()
    await sim.set(3, "voltage_l1", 230.1)
    await sim.set(3, "energy", 4321.5)
    return sim


async def _poll_once(bus: ModbusBus, timeout_s: float = 10) -> dict[str, Any]:
    got: dict[str, Any] = {}

    async def sink(_d: Any, values: list[tuple[Any, Any]], _t: float) -> None:
        got.update({p.name: v for p, v in values})

    bus.sink = sink
    task = asyncio.create_task(bus.run())
    try:
        await _until(lambda: bool(got), timeout_s, "a poll")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return got


def test_rtu_over_tcp_bus_reads_a_device_behind_an_rtu_framed_tcp_server() -> None:
    async def run() -> None:
        sim = await _meter_server()
        try:
            config = _config({"type": "rtu-over-tcp", "host": "127.0.0.1", "port": sim.tcp_port})
            bus = ModbusBus(config.buses["far"], config.devices, lambda *a: None)  # type: ignore[arg-type,return-value]
            got = await _poll_once(bus)
            bus.close()
            assert got["voltage_l1"] == pytest.approx(230.1 * 1, rel=1e-6)
            assert got["energy"] == pytest.approx(4321.5)
            # the same server spoken to with Modbus TCP framing (MBAP header) stays silent:
            # the bytes on the wire really were RTU frames
            plain = _config({"type": "tcp", "host": "127.0.0.1", "port": sim.tcp_port})
            tcp_bus = ModbusBus(plain.buses["far"], plain.devices, lambda *a: None)  # type: ignore[arg-type,return-value]
            state = next(iter(tcp_bus.devices.values()))
            task = asyncio.create_task(tcp_bus.run())
            await _until(lambda: state.failures > 0, 10, "a failed poll")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            tcp_bus.close()
            assert state.last_ok is None
        finally:
            await sim.stop()

    asyncio.run(run())


async def _dtu(gateway_port: int, registration: bytes, server_port: int) -> asyncio.Task[None]:
    """A DTU: dials the gateway, registers, then passes bytes to and from its serial line
    (here the RTU-framed server) until either side hangs up."""
    up_r, up_w = await asyncio.open_connection("127.0.0.1", gateway_port)
    up_w.write(registration)
    await up_w.drain()

    async def relay() -> None:
        line_r, line_w = await asyncio.open_connection("127.0.0.1", server_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(512):
                w.write(data)
                await w.drain()
            w.close()

        try:
            await asyncio.gather(pipe(up_r, line_w), pipe(line_r, up_w))
        finally:
            up_w.close()
            line_w.close()

    return asyncio.create_task(relay())


def test_dtu_dials_in_registers_and_its_line_is_polled() -> None:
    async def run() -> None:
        sim = await _meter_server()
        config = _config(
            {"type": "dtu-server", "listen": "127.0.0.1", "port": 0, "registration": IMEI}
        )
        got: dict[str, Any] = {}

        async def sink(_d: Any, values: list[tuple[Any, Any]], _t: float) -> None:
            got.update({p.name: v for p, v in values})

        bus = ModbusBus(config.buses["far"], config.devices, sink)
        assert bus.dtu is not None
        port = bus.dtu.port
        task = asyncio.create_task(bus.run())
        stranger = await _dtu(port, b"999999999999999", sim.tcp_port)  # not ours: refused
        await _until(lambda: bus.dtu is not None and bus.dtu.refused == 1, 10, "a refusal")
        assert not got and not bus.connected
        dtu = await _dtu(port, IMEI.encode(), sim.tcp_port)
        try:
            await _until(lambda: bool(got), 10, "a poll through the DTU")
            assert got["voltage_l1"] == pytest.approx(230.1)
            assert bus.connected
            # the DTU drops (cell lost) and dials in again: the bus waits for it, then polls
            dtu.cancel()
            await asyncio.gather(dtu, return_exceptions=True)
            await _until(lambda: not bus.connected, 15, "the DTU gone")
            got.clear()
            dtu = await _dtu(port, IMEI.encode(), sim.tcp_port)
            await _until(lambda: bool(got), 15, "polls after the DTU came back")
            assert bus.counters.reconnects >= 1
        finally:
            for t in (task, dtu, stranger):
                t.cancel()
            await asyncio.gather(task, dtu, stranger, return_exceptions=True)
            bus.close()
            await sim.stop()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("bus", "problem"),
    [
        ({"type": "dtu-server"}, "port = (missing)"),
        ({"type": "dtu-server", "port": 9000, "max_in_flight": 2}, "one transaction at a time"),
        ({"type": "tcp", "host": "h", "registration": "x"}, 'only a type = "dtu-server"'),
        ({"type": "rtu-over-tcp"}, "host = (missing)"),
        ({"type": "rtu-tcp", "host": "h"}, "rtu-over-tcp (RTU frames"),
    ],
)
def test_bad_dtu_and_rtu_over_tcp_settings_are_config_errors(
    bus: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _config(bus)
    assert problem in str(err.value)
