"""One Modbus TCP endpoint with several units behind it (a Modbus TCP gateway in front of
a line, or a multi-unit server), polled by the gateway's real bus code against real
pymodbus servers on loopback: ``max_in_flight`` transactions at once, never more; writes
one at a time in the order the commands came; and a 10 ms poll interval held.

The servers answer each request after ``delay_s`` and count the requests they are working
on at once, so "in flight" is measured where it happens, at the server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pymodbus.simulator import SimDevice

from polekit.gateway.app import Gateway
from polekit.gateway.config import Config, parse_config
from polekit.gateway.queue import DurableQueue
from polekit.gateway.sources.modbus_bus import ModbusBus
from polekit.hil.broker import LocalBroker
from polekit.hil.fieldbus import SimulatedBus
from polekit.protocols import identity, modbus
from polekit.protocols.modbus import Point

from gwkit import gateway_running, run, until

# one holding register to read, one to write: a poll is one transaction
MAP_POINTS = [
    {"name": "level", "address": 0, "table": "holding"},
    {"name": "setpoint", "address": 1, "table": "holding", "writable": True},
]
ONE_READ = modbus.RegisterMap("one-read", [Point("level", 0), Point("setpoint", 1)])


class InFlight:
    """Requests being worked on at once, and the most there ever were (one endpoint's, or
    several endpoints' together)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0


class SlowEndpoint(SimulatedBus):
    """Units behind one Modbus TCP port that answer each request ``delay_s`` late, count
    the requests in progress at once (``most_in_flight``; also in ``shared``, for
    several endpoints together), and keep the values written to them in order."""

    def __init__(self, units: list[int], delay_s: float, shared: InFlight | None = None) -> None:
        self.delay_s = delay_s
        self.counters = [InFlight()] + ([shared] if shared else [])
        self.written: list[int] = []
        super().__init__({u: ONE_READ for u in units}, tcp=("127.0.0.1", 0))

    @property
    def most_in_flight(self) -> int:
        return self.counters[0].most

    def _device(self, unit: int) -> SimDevice:  # type: ignore[override]
        device = SimulatedBus._device(unit)
        device.action = self._answer_late
        return device

    async def _answer_late(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: Any,
    ) -> None:
        for c in self.counters:
            c.now += 1
            c.most = max(c.most, c.now)
        try:
            if values is not None:
                self.written.extend(int(v) for v in values)
            await asyncio.sleep(self.delay_s)
        finally:
            for c in self.counters:
                c.now -= 1


def endpoint_config(port: int, units: list[int], poll_s: float, max_in_flight: int) -> Config:
    """A config as an integrator writes it: one ``[[map]]``, one tcp bus, and a one-line
    device per unit naming the map."""
    return parse_config(
        {
            "gateway": {"id": "gw-tcp"},
            "bus": [
                {
                    "name": "endpoint",
                    "type": "tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "timeout": 2.0,
                    "max_in_flight": max_in_flight,
                }
            ],
            "map": [{"name": "one-read", "point": MAP_POINTS}],
            "device": [
                {
                    "code": identity.make("371600", "EM", u),
                    "bus": "endpoint",
                    "unit": u,
                    "map": "one-read",
                    "poll_interval": poll_s,
                }
                for u in units
            ],
        }
    )


async def poll_rounds(
    max_in_flight: int, rounds: int, units: list[int], delay_s: float
) -> tuple[float, SlowEndpoint, dict[int, int]]:
    """Poll every unit ``rounds`` times as fast as the bus goes; the seconds it took, the
    endpoint (with its in-flight count) and the polls per unit."""
    endpoint = await SlowEndpoint(units, delay_s).start()
    assert endpoint.tcp_port is not None
    config = endpoint_config(endpoint.tcp_port, units, 0.01, max_in_flight)
    polls = dict.fromkeys(units, 0)

    async def sink(device: Any, values: Any, at: float) -> None:
        polls[device.unit] += 1

    bus = ModbusBus(config.buses["endpoint"], config.devices, sink)
    task = asyncio.create_task(bus.run())
    try:
        await until(lambda: bus.connected, what="the bus to connect")
        start = time.monotonic()
        await until(
            lambda: min(polls.values()) >= rounds, timeout_s=30, what=f"{rounds} polls a unit"
        )
        took = time.monotonic() - start
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        bus.close()
        await endpoint.stop()
    return took, endpoint, polls


def test_max_in_flight_polls_the_units_of_one_endpoint_at_once() -> None:
    units = [1, 2, 3, 4]
    one, serial_endpoint, _ = run(poll_rounds(1, 6, units, 0.05))
    four, parallel_endpoint, polls = run(poll_rounds(4, 6, units, 0.05))
    # 4 units x 6 polls x 50 ms: 1.2 s one at a time, 0.3 s four at a time
    assert parallel_endpoint.most_in_flight == 4
    assert one / four >= 3, f"one in flight: {one:.2f} s, four: {four:.2f} s"
    assert max(polls.values()) - min(polls.values()) <= 2, polls  # no unit left behind


def test_one_in_flight_never_has_two_transactions_outstanding() -> None:
    # the default, for a Modbus TCP gateway fronting an RS-485 line: one at a time
    _, endpoint, polls = run(poll_rounds(1, 8, [1, 2, 3, 4, 5, 6], 0.01))
    assert endpoint.most_in_flight == 1
    assert min(polls.values()) >= 8


def test_writes_keep_their_order_while_other_connections_poll() -> None:
    async def scenario() -> tuple[list[int], int]:
        units = [1, 2, 3, 4]
        endpoint = await SlowEndpoint(units, 0.005).start()
        assert endpoint.tcp_port is not None
        config = endpoint_config(endpoint.tcp_port, units, 0.01, 4)
        polled = 0

        async def sink(*_: Any) -> None:
            nonlocal polled
            polled += 1

        bus = ModbusBus(config.buses["endpoint"], config.devices, sink)
        task = asyncio.create_task(bus.run())
        try:
            await until(lambda: polled >= 8, what="polls before the writes")
            device = config.devices[0]
            point = device.points.point("setpoint")
            # 30 commands queued at once: written one by one, in the order they came
            await asyncio.gather(*(bus.write(device, point, v) for v in range(1, 31)))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            bus.close()
            await endpoint.stop()
        return endpoint.written, endpoint.most_in_flight

    written, most = run(scenario())
    assert written == list(range(1, 31))
    assert most >= 2  # the polls did run alongside


def test_a_10_ms_poll_interval_is_held() -> None:
    async def scenario() -> list[float]:
        endpoint = await SlowEndpoint([1], 0.0).start()
        assert endpoint.tcp_port is not None
        config = endpoint_config(endpoint.tcp_port, [1], 0.01, 1)
        times: list[float] = []

        async def sink(*_: Any) -> None:
            times.append(time.monotonic())

        bus = ModbusBus(config.buses["endpoint"], config.devices, sink)
        task = asyncio.create_task(bus.run())
        try:
            await until(lambda: len(times) >= 101, what="101 polls")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            bus.close()
            await endpoint.stop()
        return times

    times = run(scenario())
    # 100 intervals of 10 ms: 1.0 s on schedule. asyncio's sleeps end up to a millisecond
    # late; the schedule is kept on absolute times, so a late poll does not push the rest
    span = times[-1] - times[0]
    assert 0.97 <= span <= 1.1, f"100 polls at 10 ms took {span:.3f} s"


def test_the_gateway_polls_endpoints_and_their_units_at_once(tmp_path: Path) -> None:
    # the whole gateway (queue on disk, real broker): two Modbus TCP endpoints, each its own
    # [[bus]], one with max_in_flight = 2; their devices from one [[map]]
    async def scenario() -> tuple[InFlight, int, int, dict[str, int]]:
        both = InFlight()
        a = await SlowEndpoint([1, 2], 0.05, both).start()
        b = await SlowEndpoint([1, 2], 0.05, both).start()
        codes = {
            (bus, u): identity.make("371600", "EM", n)
            for n, (bus, u) in enumerate([("a", 1), ("a", 2), ("b", 1), ("b", 2)], start=1)
        }
        with LocalBroker() as broker:
            config = parse_config(
                {
                    "gateway": {"id": "gw-tcp", "data_dir": str(tmp_path)},
                    "mqtt": {"url": broker.url},
                    "status": {"port": 0},
                    "bus": [
                        {"name": name, "type": "tcp", "host": "127.0.0.1", "port": ep.tcp_port}
                        | ({"max_in_flight": 2} if name == "a" else {})
                        for name, ep in (("a", a), ("b", b))
                    ],
                    "map": [{"name": "one-read", "point": MAP_POINTS}],
                    "device": [
                        {
                            "code": code,
                            "bus": bus,
                            "unit": u,
                            "map": "one-read",
                            "poll_interval": 0.01,
                        }
                        for (bus, u), code in codes.items()
                    ],
                }
            )
            async with gateway_running(Gateway(config), broker.host, broker.port) as sub:
                await until(
                    lambda: all(len(sub.seqs(c)) >= 5 for c in codes.values()),
                    timeout_s=20,
                    what="5 packs from each device",
                )
                packs = {c: len(sub.seqs(c)) for c in codes.values()}
        await a.stop()
        await b.stop()
        return both, a.most_in_flight, b.most_in_flight, packs

    both, on_a, on_b, packs = run(scenario())
    assert on_a == 2 and on_b == 1, (on_a, on_b)
    assert both.most == 3  # the two endpoints' buses run side by side
    assert min(packs.values()) >= 5, packs


class CountingSlowEndpoint(SlowEndpoint):
    """A SlowEndpoint that also counts the reads it was asked for (pymodbus drops the
    answer of a request whose connection closed, so answers cannot be counted here), and
    answers them 0.2-0.65 s late in turn, so the connections' polls end at different
    times (a stop then finds some in flight and some done)."""

    asked = 0

    async def _answer_late(self, function_code: int, *args: Any) -> None:
        if args[-1] is None:  # a read (a write carries values)
            self.asked += 1
        self.delay_s = 0.2 + 0.15 * (self.asked % 4)  # read by the sleep it starts now
        await super()._answer_late(function_code, *args)


def test_a_stop_hands_over_the_polls_of_every_connection_in_flight(tmp_path: Path) -> None:
    # systemctl stop while four connections each wait for an answer: every poll the
    # gateway asked for is answered and committed before it exits (each device's seq,
    # given at commit, counts its committed polls), and none is started after the stop
    units = [1, 2, 3, 4]
    codes = [identity.make("371600", "EM", u) for u in units]

    async def scenario() -> tuple[int, int, int]:
        endpoint = await CountingSlowEndpoint(units, 0.2).start()
        assert endpoint.tcp_port is not None
        with LocalBroker() as broker:
            config = parse_config(
                {
                    "gateway": {"id": "gw-tcp", "data_dir": str(tmp_path)},
                    "mqtt": {"url": broker.url},
                    "status": {"port": 0},
                    "bus": [
                        {
                            "name": "endpoint",
                            "type": "tcp",
                            "host": "127.0.0.1",
                            "port": endpoint.tcp_port,
                            "timeout": 2.0,
                            "max_in_flight": 4,
                        }
                    ],
                    "map": [{"name": "one-read", "point": MAP_POINTS}],
                    "device": [
                        {"code": c, "bus": "endpoint", "unit": u, "map": "one-read"}
                        | {"poll_interval": 0.01}
                        for u, c in zip(units, codes, strict=True)
                    ],
                }
            )
            async with gateway_running(Gateway(config), broker.host, broker.port) as sub:
                await until(lambda: all(sub.seqs(c) for c in codes), what="a pack from each")
                await until(lambda: endpoint.counters[0].now == 4, what="four polls in flight")
                await asyncio.sleep(0.25)  # some have come back and started again, some not
                in_flight_at_stop = endpoint.counters[0].now
            # gateway_running has stopped the gateway: the queue is closed
        asked = endpoint.asked
        await endpoint.stop()
        queue = DurableQueue(tmp_path / "queue.sqlite3")
        try:
            committed = sum(queue.last_seq(c) for c in codes)
        finally:
            queue.close()
        return asked, committed, in_flight_at_stop

    asked, committed, in_flight = run(scenario())
    assert in_flight == 4
    assert committed == asked, f"{asked - committed} polls in flight at the stop never committed"
