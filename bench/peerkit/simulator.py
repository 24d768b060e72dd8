"""Simulated Modbus devices that count every poll they answer, in a process of their own.

Each unit has ``registers`` holding registers (0 ..). A read that starts at register 0 is
one poll: the device counts it, per unit, and answers it with that count (mod 65536) in
register 0, so every delivered value names the read it came from and a poll lost between
the device and the platform is exact (polls answered minus polls delivered). ``quiet()``
makes every device stop answering, so the count stops while the gateways drain.

Modbus TCP: one pymodbus server on loopback for all units. RTU: a virtual RS-485 line
(hil/line.py) paced at the baud rate, the devices on one drop, the gateway's drop returned
as ``endpoint``; units in ``silent`` are configured at the gateway but never answer.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.sharedctypes
import time
from dataclasses import dataclass, field
from typing import Any

from polekit.hil.fieldbus import SimulatedBus
from polekit.hil.line import VirtualLine
from polekit.protocols.modbus import Point, RegisterMap

MAX_UNIT = 248
RTU_FRAMING = {"parity": "N", "stopbits": 2}  # pseudo-terminals refuse parity: 8N2


def register_map(registers: int) -> RegisterMap:
    """The devices' map: ``r0`` .. ``r{n-1}``, u16 holding registers from address 0."""
    return RegisterMap("bench", [Point(f"r{i}", i, "holding", "u16") for i in range(registers)])


@dataclass(frozen=True)
class DeviceSpec:
    """What to simulate: ``kind`` "tcp" or "rtu", the units that answer, the units the
    gateway is told about but that never answer (RTU), registers a unit, baud (RTU)."""

    kind: str
    units: tuple[int, ...]
    registers: int = 10
    silent: tuple[int, ...] = ()
    baud: int = 19200

    @property
    def all_units(self) -> tuple[int, ...]:
        return tuple(sorted(self.units + self.silent))


class CountingBus(SimulatedBus):
    """A SimulatedBus whose units count the polls (reads from register 0) they answer."""

    def __init__(
        self,
        maps: dict[int, RegisterMap],
        served: Any,
        requests: Any,
        quiet: Any,
        **kw: Any,
    ) -> None:
        super().__init__(maps, **kw)
        self.served = served  # shared array: polls answered, by unit
        self.requests = requests  # shared array: read requests answered, by unit
        self.quiet = quiet  # shared flag: answer nothing
        self._asked: dict[tuple[int, int], int] = {}  # (unit, transaction) -> first register
        self._drop_next = False
        # pymodbus passes this to each connection's handler: requests and answers as PDUs
        self._server.trace_pdu = self._count

    def _count(self, sending: bool, pdu: Any) -> Any:
        key = (pdu.dev_id, pdu.transaction_id)
        if not sending:
            if pdu.function_code == 3:
                self._asked[key] = pdu.address
            return pdu
        first = self._asked.pop(key, None)
        if self.quiet.value:
            self._drop_next = True  # the frame built from this PDU is not sent
            return pdu
        unit = pdu.dev_id
        if pdu.function_code != 3 or unit not in self.maps or unit in self._absent:
            return pdu
        self.requests[unit] += 1
        if first == 0 and pdu.registers:
            self.served[unit] += 1
            pdu.registers = [self.served[unit] & 0xFFFF, *pdu.registers[1:]]
        return pdu

    def _silence_absent(self, sending: bool, data: bytes) -> bytes:
        if sending and self._drop_next:
            self._drop_next = False
            return b""
        return super()._silence_absent(sending, data)


def _serve(
    spec: DeviceSpec,
    served: Any,
    requests: Any,
    quiet: Any,
    conn: multiprocessing.connection.Connection,
) -> None:
    # a silent unit's request is answered by pymodbus and the answer not sent; pymodbus's
    # error dumps (a request it will not serve) are noise on the bench's console
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def serve() -> None:
        regmap = register_map(spec.registers)
        maps = {u: regmap for u in spec.all_units}
        line = None
        if spec.kind == "rtu":
            line = VirtualLine(baudrate=spec.baud)
            gw_port, dev_port = line.endpoint(), line.endpoint()
            bus = CountingBus(
                maps,
                served,
                requests,
                quiet,
                serial_port=dev_port,
                baudrate=spec.baud,
                **RTU_FRAMING,
            )
        else:
            bus = CountingBus(maps, served, requests, quiet, tcp=("127.0.0.1", 0))
        for unit in spec.silent:
            bus.remove(unit)  # on the line, never answering: a dead device
        await bus.start()
        conn.send(gw_port if line is not None else ("127.0.0.1", bus.tcp_port))
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told
        finally:
            await bus.stop()
            if line is not None:
                line.close()

    asyncio.run(serve())


@dataclass
class Simulator:
    """The devices of ``spec`` served by a process of their own (a field device has its own
    CPU); ``endpoint`` is ("127.0.0.1", port) on TCP, the gateway's tty path on RTU."""

    spec: DeviceSpec
    endpoint: Any = None
    _proc: Any = None
    _conn: Any = None
    _arrays: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout_s: float = 20.0) -> Simulator:
        ctx = multiprocessing.get_context("spawn")
        served = ctx.Array("q", MAX_UNIT, lock=False)
        requests = ctx.Array("q", MAX_UNIT, lock=False)
        quiet = ctx.Value("b", 0, lock=False)
        self._arrays = {"served": served, "requests": requests, "quiet": quiet}
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(self.spec, served, requests, quiet, child), daemon=True
        )
        self._proc.start()
        if not self._conn.poll(timeout_s):
            self.stop()
            raise RuntimeError(f"the simulated devices did not start within {timeout_s} s")
        self.endpoint = self._conn.recv()
        return self

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def served(self) -> dict[int, int]:
        """Polls answered so far, by unit (the units that answer)."""
        arr = self._arrays["served"]
        return {u: int(arr[u]) for u in self.spec.units}

    def requests(self) -> int:
        """Read requests answered so far, all units together."""
        arr = self._arrays["requests"]
        return sum(int(arr[u]) for u in self.spec.units)

    def quiet(self) -> None:
        """Every device stops answering (the count of polls answered stops)."""
        self._arrays["quiet"].value = 1

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send("stop")
        except OSError:
            pass  # the process is gone already
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._proc = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _read_loop(host: str, port: int, units: list[int], registers: int, end: float) -> int:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
    await client.connect()
    reads = 0
    try:
        while time.monotonic() < end:
            unit = units[reads % len(units)]
            answer = await client.read_holding_registers(0, count=registers, device_id=unit)
            if not answer.isError():
                reads += 1
    finally:
        client.close()
    return reads


def ceiling(spec: DeviceSpec, endpoint: Any, seconds: float, connections: int) -> float:
    """Values/s a bare pymodbus client gets from the simulator: ``connections`` clients,
    each one request at a time, round robin over the units, as fast as they can."""
    host, port = endpoint
    units = list(spec.units)

    async def run() -> int:
        end = time.monotonic() + seconds
        shares = [units[i::connections] or units for i in range(connections)]
        counts = await asyncio.gather(
            *(_read_loop(host, port, s, spec.registers, end) for s in shares)
        )
        return sum(counts)

    start = time.monotonic()
    reads = asyncio.run(run())
    return reads * spec.registers / (time.monotonic() - start)
