"""One Modbus bus (RTU on RS-485, or TCP): its connections and its poll schedule.

A single task per bus owns the pymodbus clients (one owner per port: every device on the
line shares it) and runs a schedule: each device is polled when due; the reads of a poll
are planned to be as few as the protocol allows; a device that stops answering is backed
off exponentially (capped) and reported offline after a few misses, so it costs the others
at most one timeout per backoff period. Writes from the command path are queued to the
same task and run between polls, one at a time and in the order they came; so are the
transactions of an over-the-air update (``request``), while every device is polled at the
reduced rate ``poll_floor_s`` states (gateway/ota/). When the port
itself goes away (USB adapter unplugged, TCP peer restarted) the task closes it and reopens
it with a short capped backoff.

An RTU line carries one transaction at a time. A TCP endpoint may take ``max_in_flight``
at once (several units behind one Modbus TCP gateway, each answering at its own pace):
pymodbus's client holds a lock from a request until its answer (``TransactionManager.
execute`` as of pymodbus 3.16), so each transaction in flight gets a connection of its own,
a "lane" that polls whichever device is due next and no other lane is holding.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from polekit.gateway.config import BusConfig, DeviceConfig
from polekit.gateway.sources import dlt645_meter
from polekit.gateway.sources.dtu_server import DtuListener
from polekit.gateway.sources.planner import Read, plan_reads
from polekit.protocols import modbus as mb
from polekit.protocols.errors import ProtocolError
from polekit.protocols.modbus import Point

log = logging.getLogger("polekit.gateway.modbus")

_READ_FN = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}
OFFLINE_AFTER_MISSES = 3
MAX_BACKOFF_S = 60.0
RECONNECT_MAX_S = 1.0  # a port that comes back is reopened within about a second
WRITE_ATTEMPTS = 3  # a command's write that gets no answer is sent this many times in all

OPEN_LOG_EVERY_S = 60.0  # a bus that stays shut is logged again this often
# what to try, by the OS's reason a port does not open
_OPEN_HINTS = {
    "No such file or directory": " (is the adapter plugged in, and the path right?)",
    "Permission denied": " (the gateway's user must be in the port's group, e.g. dialout)",
    "Device or resource busy": " (another program has the port open)",
    "Invalid argument": " (the port refuses these settings; a pseudo-terminal refuses parity: "
    'parity = "N")',
}


def _reason(exc: BaseException) -> str:
    """The OS's words for an error (``Permission denied``), without errno and path
    (termios.error carries its errno in ``args`` only)."""
    errno = getattr(exc, "errno", None)
    if errno is None and exc.args and isinstance(exc.args[0], int):
        errno = exc.args[0]
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return " ".join(str(exc).split()) or type(exc).__name__


# device code, [(point, value)], wall-clock time of the poll
Sink = Callable[[DeviceConfig, list[tuple[Point, Any]], float], Awaitable[None]]
# device code, online, wall-clock time: a device started or stopped answering
StatusSink = Callable[[str, bool, float], Awaitable[None]]


class DeviceNoResponse(Exception):  # noqa: N818 - says what happened on the wire
    """The device did not answer (or its answer was corrupt) within the timeout."""


class DeviceRefused(Exception):  # noqa: N818
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"{what}: exception {code} ({mb.exception_text(code)})")
        self.code = code


@dataclass
class DeviceState:
    """What the bus knows of one device, for scheduling and for /health."""

    config: DeviceConfig
    reads: list[Read]
    next_due: float = 0.0
    misses: int = 0
    online: bool | None = None  # None until the first poll
    last_ok: float | None = None
    last_error: str | None = None
    polls: int = 0
    failures: int = 0
    meter_address: str | None = None  # a DL/T 645 meter's, once the broadcast query found it

    def backoff_s(self) -> float:
        """Delay before the next attempt after ``misses`` consecutive failures."""
        return min(self.config.poll_interval_s * (2 ** max(self.misses - 1, 0)), MAX_BACKOFF_S)


class _Link:
    """One connection to the bus's port or endpoint, and the wire bookkeeping of its
    transactions. ``holding`` is the device this connection's lane polls or waits for,
    so two lanes never poll one device at once."""

    def __init__(self, index: int, clock: Callable[[], float]) -> None:
        self.index = index
        self.client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self.connected = False
        self.opened = False  # connected at least once (a later connect is a reconnect)
        self.rx_bytes = 0
        self.last_wire = 0.0
        self.holding: DeviceState | None = None
        self.held_due = 0.0  # the held device's next_due when it was taken
        self.sleeping = False
        # the lane's sleep: a future resolved by its timer or by wake(). One future and
        # one timer handle a sleep, not a task (asyncio.wait_for on an Event.wait() makes
        # a task and two futures each time, and a busy bus sleeps thousands of times a s)
        self._waiter: asyncio.Future[None] | None = None
        self._clock = clock

    def wake(self) -> None:
        """End the lane's sleep now (a write to run, a device due sooner); nothing when it
        is not sleeping: a lane looks at the writes and the schedule before each sleep."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until ``wake()``."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter)
        self.sleeping = True
        try:
            await waiter
        finally:
            timer.cancel()
            self.sleeping = False
            self._waiter = None

    def trace(self, sending: bool, data: bytes) -> bytes:
        # the silent interval is counted from the last byte on the wire, not from when the
        # answer was decoded: the gap is the spec's, not the spec's plus our latency
        self.last_wire = self._clock()
        if not sending:
            self.rx_bytes += len(data)
        return data


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class BusCounters:
    """Per-bus counters exported on /metrics."""

    transactions: int = 0
    no_response: int = 0
    bad_response: int = 0  # bytes arrived but no valid frame: corrupt, truncated, wrong CRC
    exceptions: int = 0
    reconnects: int = 0
    writes: int = 0


class ModbusBus:
    """Polls every device of one bus and hands each poll's values to ``sink``.

    ``clock`` (monotonic seconds) and ``wall`` (Unix seconds) are injected for tests.
    """

    def __init__(
        self,
        bus: BusConfig,
        devices: list[DeviceConfig],
        sink: Sink,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_status: StatusSink | None = None,
    ) -> None:
        self.config = bus
        self.on_status = on_status
        self.devices = {d.code: DeviceState(d, plan_reads(d.points)) for d in devices}
        # the schedule: (next_due, order, device) for each device no lane holds, soonest
        # first. A lane takes the top (held devices are out of the heap, so two lanes never
        # poll one device) and puts it back with its new next_due when it lets go: one
        # push and one pop a poll, not a scan of every device
        self._order = itertools.count()
        self._due: list[tuple[float, int, DeviceState]] = [
            (s.next_due, next(self._order), s) for s in self.devices.values()
        ]
        self.sink = sink
        self.clock = clock
        self.wall = wall
        self.counters = BusCounters()
        self.last_error: str | None = None
        # no more connections than devices: a lane holds one device at a time
        lanes = 1 if bus.rtu_framing else max(1, min(bus.max_in_flight, len(devices)))
        # dtu-server: the listening socket DTUs dial in to (the bus owns it)
        self.dtu = DtuListener(bus) if bus.type == "dtu-server" else None
        self._links = [_Link(i, clock) for i in range(lanes)]
        self._writes: asyncio.Queue[tuple[DeviceConfig, Point, Any, asyncio.Future[None]]] = (
            asyncio.Queue()
        )
        # transactions of the command path's other kinds (an update's chunks, its status
        # reads): (call on the client, what, future), run between polls like the writes
        self._requests: asyncio.Queue[
            tuple[Callable[[Any], Awaitable[Any]], str, asyncio.Future[Any]]
        ] = asyncio.Queue()
        # while an over-the-air transfer runs on this bus (one at a time: gateway/ota/),
        # every device is polled at most every ``poll_floor_s`` seconds (0: at its own rate)
        self.poll_floor_s = 0.0
        self.in_flight = 0  # polls started and not yet failed or handed to the sink
        self.closing = False  # set when the gateway stops: polls in flight finish, none starts

    @property
    def connected(self) -> bool:
        """Whether the bus's port (or one of its connections to the endpoint) is open."""
        return any(link.connected for link in self._links)

    # ---- connection -------------------------------------------------------------------

    def _make_client(self, link: _Link) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        b = self.config
        if b.type == "rtu":
            assert b.port is not None
            return AsyncModbusSerialClient(
                b.port,
                baudrate=b.baudrate,
                parity=b.parity,
                stopbits=b.stopbits,
                bytesize=b.bytesize,
                timeout=b.timeout_s,
                retries=0,
                reconnect_delay=0,
                name=b.name,
                trace_packet=link.trace,
            )
        assert b.host is not None
        return AsyncModbusTcpClient(
            b.host,
            port=b.tcp_port,
            # RTU frames (unit, PDU, CRC) on the socket for a serial line behind a DTU
            framer=FramerType.RTU if b.rtu_framing else FramerType.SOCKET,
            timeout=b.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=b.name,
            trace_packet=link.trace,
        )

    async def connect(self, link: _Link | None = None) -> None:
        """Open the port (``link``: one of the bus's connections, the first by default),
        retrying with a short capped backoff until it opens. A port that will not open is
        logged at the first attempt, with the OS's reason, then again only when the reason
        changes or every OPEN_LOG_EVERY_S while it stays shut; the other buses, each in its
        own task, carry on meanwhile, and so do this bus's other connections."""
        link = link or self._links[0]
        delay = 0.05
        failed = 0
        logged: tuple[str, float] | None = None  # (reason, when) of the last line logged
        while True:
            client = self._make_client(link)
            why: str | None = None
            if self.dtu is not None:  # the DTU dials in: wait for it, as long as it takes
                try:
                    who = await self.dtu.attach(client)
                except OSError as exc:  # the listening port: in use, not allowed
                    ok, why = False, _reason(exc)
                else:
                    link.client = client
                    if link.opened:
                        self.counters.reconnects += 1
                    link.connected = link.opened = True
                    log.info("bus %s: DTU %s connected", self.config.name, who)
                    return
                client.close()
                self.last_error = f"cannot listen on {self._where()}: {why}"
                log.error("bus %s: %s; retrying", self.config.name, self.last_error)
                await asyncio.sleep(RECONNECT_MAX_S)
                continue
            try:
                ok = await client.connect()
            except Exception as exc:  # noqa: BLE001 - pyserial/OS errors vary by platform
                ok, why = False, _reason(exc)
            if ok:
                link.client = client
                if link.opened:
                    self.counters.reconnects += 1
                link.connected = link.opened = True
                log.info(
                    "bus %s connected (%s%s)",
                    self.config.name,
                    self.config.describe(),
                    self._which(link),
                )
                return
            client.close()
            failed += 1
            why = why or await self._why_not_open()  # pymodbus keeps the reason to itself
            self.last_error = f"cannot open {self._where()}: {why}"
            now = self.clock()
            if logged is None or logged[0] != why or now - logged[1] >= OPEN_LOG_EVERY_S:
                log.error(
                    "bus %s: cannot open %s%s: %s%s; retrying%s",
                    self.config.name,
                    self._where(),
                    self._which(link),
                    why,
                    _OPEN_HINTS.get(why, ""),
                    f" ({failed} attempts so far)" if failed > 1 else "",
                )
                logged = (why, now)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _which(self, link: _Link) -> str:
        # which of the endpoint's connections, when it has more than one
        n = len(self._links)
        return f", connection {link.index + 1} of {n}" if n > 1 else ""

    def _where(self) -> str:
        b = self.config
        if b.type == "rtu":
            return f"serial port {b.port}"
        return f"{b.type} {b.host}:{b.tcp_port}" if b.type != "tcp" else f"{b.host}:{b.tcp_port}"

    async def _why_not_open(self) -> str:
        """The OS's reason the port does not open (``No such file or directory``,
        ``Permission denied``, ``Connection refused``), asked again directly."""
        b = self.config
        try:
            if b.type == "rtu":
                import serial

                # opening a serial port returns at once (it does not wait for a carrier)
                serial.Serial(
                    b.port,
                    baudrate=b.baudrate,
                    parity=b.parity,
                    stopbits=b.stopbits,
                    bytesize=b.bytesize,
                    timeout=0,
                ).close()
            else:
                async with asyncio.timeout(b.timeout_s):
                    _reader, writer = await asyncio.open_connection(b.host, b.tcp_port)
                writer.close()
        except TimeoutError:
            return f"no answer within {b.timeout_s} s"
        except Exception as exc:  # noqa: BLE001 - OSError, termios.error, ValueError by platform
            return _reason(exc)
        return "it opened on a second try (a flaky adapter or a busy peer?)"

    def close(self) -> None:
        """Close the port and every connection (the gateway is stopping)."""
        if self.dtu is not None:
            self.dtu.close()
        for link in self._links:
            if link.client is not None:
                link.client.close()
                link.client = None
            link.connected = False

    def _disconnect(self, why: str, link: _Link) -> None:
        if link.client is not None:
            link.client.close()
            link.client = None
        if link.connected:
            log.warning("bus %s lost%s: %s; reopening", self.config.name, self._which(link), why)
        link.connected = False
        self.last_error = why

    # ---- transactions -----------------------------------------------------------------

    async def _transaction(self, call: Callable[[], Awaitable[Any]], what: str, link: _Link) -> Any:
        if self.config.inter_frame_s:  # RS-485: leave t3.5 of silence between frames
            await self._until(link.last_wire + self.config.inter_frame_s)
        link.rx_bytes = 0
        self.counters.transactions += 1
        try:
            response = await call()
        except ModbusIOException as exc:
            if link.rx_bytes:
                self.counters.bad_response += 1
                raise DeviceNoResponse(
                    f"{what}: corrupt or truncated answer ({link.rx_bytes} bytes)"
                ) from exc
            self.counters.no_response += 1
            raise DeviceNoResponse(f"{what}: no answer within {self.config.timeout_s} s") from exc
        if response.isError():
            self.counters.exceptions += 1
            raise DeviceRefused(getattr(response, "exception_code", 0), what)
        return response

    async def _until(self, deadline: float) -> None:
        # asyncio's sleeps round up to whole milliseconds (epoll), which on a fast line is a
        # third of the gap: sleep to within a millisecond, then yield until the deadline
        left = deadline - self.clock()
        if left > 0.0015:
            await asyncio.sleep(left - 0.001)
        while self.clock() < deadline:
            await asyncio.sleep(0)

    async def _read(self, dev: DeviceConfig, read: Read, link: _Link) -> list[int] | list[bool]:
        c = link.client
        assert c is not None
        fn = getattr(c, _READ_FN[read.table])  # not a dict of four lambdas a read

        def call() -> Awaitable[Any]:
            return fn(read.address, count=read.count, device_id=dev.unit)

        what = f"unit {dev.unit} {read.table} {read.address}+{read.count}"
        response = await self._transaction(call, what, link)
        if read.table in ("coil", "discrete"):
            return list(response.bits[: read.count])
        if len(response.registers) != read.count:
            self.counters.bad_response += 1
            raise DeviceNoResponse(f"{what}: {len(response.registers)} registers in the answer")
        return list(response.registers)

    async def poll(self, state: DeviceState, link: _Link | None = None) -> list[tuple[Point, Any]]:
        """Read every point of one device (on ``link``, the first connection by default);
        raises DeviceNoResponse / DeviceRefused."""
        link = link or self._links[0]
        if state.config.protocol == "dlt645":  # a meter sharing the line
            return await dlt645_meter.poll(self, state, link)
        values: list[tuple[Point, Any]] = []
        for read in state.reads:
            words = await self._read(state.config, read, link)
            for p in read.points:
                offset = p.address - read.address
                if read.table in ("coil", "discrete"):
                    values.append((p, bool(words[offset])))
                else:
                    values.append((p, p.decode(words[offset : offset + p.count])))
        return values

    async def write(self, device: DeviceConfig, point: Point, value: Any) -> None:
        """Write ``value`` to a writable point, between polls; raises what the device said."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._writes.put((device, point, value, fut))
        self._links[0].wake()  # the first connection's lane runs the writes
        await fut

    async def request(self, call: Callable[[Any], Awaitable[Any]], what: str) -> Any:
        """One transaction ``call(client)`` (a pymodbus client call) run on the line between
        polls, in turn with the writes, with the line's silent interval before it; returns
        the response. Raises DeviceNoResponse, DeviceRefused (a Modbus exception answer),
        ConnectionException/OSError (the port went away). ``what`` names it in errors."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._requests.put((call, what, fut))
        self._links[0].wake()  # the first connection's lane runs them, as the writes
        return await fut

    async def _write_with_retries(
        self, device: DeviceConfig, point: Point, value: Any, link: _Link
    ) -> None:
        # a platform's command must not fail on one lost or late frame (RS-485 noise, a
        # device busy for a moment): a write that got no answer goes again. Writing a value
        # twice is harmless (functions 5, 6 and 16 set, they do not add)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                await self._do_write(device, point, value, link)
                return
            except DeviceNoResponse as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise DeviceNoResponse(f"{exc} ({WRITE_ATTEMPTS} tries)") from exc
                log.info("device %s: %s; writing again", device.code, exc)

    async def _do_write(self, device: DeviceConfig, point: Point, value: Any, link: _Link) -> None:
        c = link.client
        assert c is not None
        regs = point.encode(value)  # ModbusException(code 3) when out of range
        what = f"unit {device.unit} write {point.name}"
        if point.table == "coil":
            await self._transaction(
                lambda: c.write_coil(point.address, bool(value), device_id=device.unit), what, link
            )
        elif len(regs) == 1:
            await self._transaction(
                lambda: c.write_register(point.address, regs[0], device_id=device.unit),
                what,
                link,
            )
        else:
            await self._transaction(
                lambda: c.write_registers(point.address, regs, device_id=device.unit),
                what,
                link,
            )
        self.counters.writes += 1

    # ---- the schedule -----------------------------------------------------------------

    async def run(self) -> None:
        """Poll forever (until cancelled): one lane per connection."""
        if len(self._links) == 1:
            await self._lane(self._links[0])
            return
        async with asyncio.TaskGroup() as lanes:
            for link in self._links:
                lanes.create_task(self._lane(link), name=f"bus-{self.config.name}-{link.index}")

    async def _lane(self, link: _Link) -> None:
        while True:
            if link.client is None:
                await self.connect(link)
            try:
                await self._step(link)
            except (ConnectionException, OSError) as exc:
                self._disconnect(f"{type(exc).__name__}: {exc}", link)
            finally:
                self._release(link)

    def _hold(self, link: _Link) -> DeviceState | None:
        """The device due first that no other lane holds, now held by ``link`` (taken out
        of the schedule until ``_release``)."""
        link.holding = heapq.heappop(self._due)[2] if self._due else None
        link.held_due = link.holding.next_due if link.holding is not None else 0.0
        return link.holding

    def _release(self, link: _Link) -> None:
        # the device goes back on the schedule at its (maybe new) next turn. When a poll
        # moved it, a lane asleep on a device due later than it takes another look, so the
        # device is not left waiting behind a long sleep
        state, link.holding = link.holding, None
        if state is None:
            return
        heapq.heappush(self._due, (state.next_due, next(self._order), state))
        if len(self._links) == 1 or state.next_due == link.held_due:
            return
        for other in self._links:
            held = other.holding
            if other.sleeping and held is not None and held.next_due > state.next_due:
                other.wake()

    async def _step(self, link: _Link | None = None) -> None:
        link = link or self._links[0]
        while link is self._links[0] and not self._writes.empty():
            device, point, value, fut = self._writes.get_nowait()
            try:
                await self._write_with_retries(device, point, value, link)
            except (ConnectionException, OSError) as exc:
                fut.set_exception(exc)
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the command's caller
                fut.set_exception(exc)
            else:
                fut.set_result(None)
        while link is self._links[0] and not self._requests.empty():
            call, what, req = self._requests.get_nowait()
            if req.done():  # its caller gave up (cancelled) meanwhile
                continue
            try:
                response = await self._transaction(functools.partial(call, link.client), what, link)
            except (ConnectionException, OSError) as exc:
                if not req.done():
                    req.set_exception(exc)
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the request's caller
                if not req.done():
                    req.set_exception(exc)
            else:
                if not req.done():
                    req.set_result(response)
        state = self._hold(link)
        if state is None:  # no devices on this bus
            await link.sleep(3600)
            return
        delay = state.next_due - self.clock()
        if delay > 0:
            await link.sleep(delay)
            return
        if self.closing:  # the gateway is stopping: no new poll starts
            await link.sleep(3600)
            return
        state.polls += 1
        self.in_flight += 1
        try:
            await self._poll_and_hand_over(state, link)
        finally:
            self.in_flight -= 1

    async def _poll_and_hand_over(self, state: DeviceState, link: _Link) -> None:
        started = self.wall()
        try:
            values = await self.poll(state, link)
        except ConnectionException:
            raise  # the port, not the device: run() reopens it
        except (
            DeviceNoResponse,
            DeviceRefused,
            dlt645_meter.MeterRefused,
            ModbusException,
            ProtocolError,
        ) as exc:
            self._failed(state, str(exc))
            if state.online is False and state.misses == OFFLINE_AFTER_MISSES:
                if self.on_status is not None:  # it just went offline
                    await self.on_status(state.config.code, False, started)
            return
        state.misses = 0
        state.last_ok = started
        if state.online is not True:
            log.info(
                "device %s online (%s on %s)",
                state.config.code,
                f"meter {state.config.meter_address or state.meter_address}"
                if state.config.protocol == "dlt645"
                else f"unit {state.config.unit}",
                self.config.name,
            )
            if self.on_status is not None:  # before its data, in the platforms' order too
                await self.on_status(state.config.code, True, started)
        state.online = True
        interval = max(state.config.poll_interval_s, self.poll_floor_s)
        state.next_due = max(state.next_due + interval, self.clock())
        # returns once the poll is handed to the queue, not once it is on disk: the bus
        # waits for the disk only when the queue's room for uncommitted polls is full
        await self.sink(state.config, values, started)

    def _failed(self, state: DeviceState, why: str) -> None:
        state.failures += 1
        state.misses += 1
        state.last_error = why
        if state.misses >= OFFLINE_AFTER_MISSES and state.online is not False:
            log.warning(
                "device %s offline after %d misses: %s", state.config.code, state.misses, why
            )
            state.online = False
        state.next_due = self.clock() + state.backoff_s()
