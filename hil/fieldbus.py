"""Simulated third-party field devices: real pymodbus servers on a real byte stream.

``SimulatedBus`` serves any number of Modbus devices on one serial endpoint (a virtual
RS-485 line's pseudo-terminal, or a real port) or on a loopback TCP port. Each device's
registers are laid out by a register map from ``protocols``; tests and the demo set
values by point name (``bus.set(unit, "temperature", 21.5)``) and read what the gateway
wrote (``bus.get(unit, "lamp_level")``). Units not served stay silent, as a dead device
on a real line does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import tty
from typing import Any

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from polekit.protocols import dlt645, modbus
from polekit.protocols.errors import DLT645Error
from polekit.protocols.modbus import RegisterMap

_FC = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}


class SimulatedBus:
    """Modbus devices behind one serial endpoint or TCP port, served by pymodbus."""

    def __init__(
        self,
        maps: dict[int, RegisterMap],
        serial_port: str | None = None,
        tcp: tuple[str, int] | None = None,
        baudrate: int = 9600,
        parity: str = "E",
        stopbits: int = 1,
        shared: bool = False,
        rtu_over_tcp: bool = False,
    ) -> None:
        self.maps = dict(maps)
        # on a line with other slaves (emulated boards): listen like a slave does
        self._shared = shared
        self._rx = bytearray()
        self.port = serial_port  # the serial endpoint it answers on (None on TCP)
        self.where = serial_port or (f"{tcp[0]}:{tcp[1]}" if tcp else "")
        self._absent: set[int] = set()
        self._serial = serial_port is not None
        # RTU frames (unit first, CRC last) on the TCP port: a serial server or a DTU's line
        self._rtu = self._serial or rtu_over_tcp
        # a table of 1024 registers holds most maps; a meter's data may sit at 0x401E
        tops = {u: max([1024] + [p.address + p.count for p in m]) for u, m in maps.items()}
        devices = [
            self._device(unit) if tops[unit] == 1024 else self._device(unit, tops[unit])
            for unit in maps
        ]
        if serial_port:
            self._server: ModbusSerialServer | ModbusTcpServer = ModbusSerialServer(
                devices,
                port=serial_port,
                baudrate=baudrate,
                parity=parity,
                stopbits=stopbits,
                trace_packet=self._silence_absent,
            )
        elif tcp:
            self._server = ModbusTcpServer(
                devices,
                address=tcp,
                framer=FramerType.RTU if rtu_over_tcp else FramerType.SOCKET,
                trace_packet=self._silence_absent,
            )
        else:
            raise ValueError("give serial_port or tcp")
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _device(unit: int, registers: int = 1024) -> SimDevice:
        # four separate tables (coils, discrete inputs, holding, input), ``registers`` each
        def block(kind: DataType, value: Any) -> list[SimData]:
            return [SimData(0, count=registers, values=value, datatype=kind)]

        return SimDevice(
            unit,
            simdata=(
                block(DataType.BITS, False),
                block(DataType.BITS, False),
                block(DataType.REGISTERS, 0),
                block(DataType.REGISTERS, 0),
            ),
        )

    async def start(self, timeout_s: float = 5.0) -> SimulatedBus:
        """Start serving; returns once listening. OSError with the reason (address in use,
        no such serial port) if it cannot."""
        # pymodbus logs why it could not listen and raises a RuntimeError without it
        why = _Reason()
        log = logging.getLogger("pymodbus.logging")
        log.addHandler(why)
        try:
            self._task = asyncio.get_running_loop().create_task(self._server.serve_forever())
            deadline = time.monotonic() + timeout_s
            while self._server.transport is None and not self._task.done():
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
        finally:
            log.removeHandler(why)
        if self._server.transport is None:
            await self.stop()
            raise OSError(f"cannot serve on {self.where}: {why.text or 'no reason given'}")
        return self

    @property
    def tcp_port(self) -> int | None:
        """The TCP port it listens on (the one the system chose for port 0); None on serial."""
        sockets = getattr(self._server.transport, "sockets", None)
        return sockets[0].getsockname()[1] if sockets else None

    async def stop(self) -> None:
        """Stop serving and close the port."""
        if self._server.transport is not None:
            await self._server.shutdown()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def remove(self, unit: int) -> None:
        """Take a device off the line: it stops answering (power cut, broken wire)."""
        self._absent.add(unit)

    def restore(self, unit: int) -> None:
        """Put a removed device back on the line."""
        self._absent.discard(unit)

    def _listen(self, data: bytes) -> bytes:
        # On a shared line the server also hears other slaves' answers, which pymodbus's
        # framer does not recover from. A real slave picks out the frames addressed to it:
        # pass on only whole requests for our units with a good CRC, skip everything else.
        rx = self._rx
        rx.extend(data)
        out = b""
        i = 0
        while i < len(rx):
            if rx[i] not in self.maps:
                i += 1
                continue
            n = modbus.request_length(rx[i:])
            if n == 0 or (n > 0 and len(rx) - i < n):
                break  # the rest of it is still on the wire
            if n > 0 and modbus.crc16(rx[i : i + n - 2]) == rx[i + n - 2] | rx[i + n - 1] << 8:
                out += bytes(rx[i : i + n])
                i += n
            else:
                i += 1
        del rx[:i]
        if len(rx) > 512:  # nothing whole in it: noise
            rx.clear()
        return out

    def _silence_absent(self, sending: bool, data: bytes) -> bytes:
        if not sending and self._serial and self._shared:
            return self._listen(data)
        # pymodbus answers unknown units with exception 4; a real line is silent instead
        if sending and data:
            unit = data[0] if self._rtu else (data[6] if len(data) > 6 else 0)
            if unit not in self.maps or unit in self._absent:
                return b""
        return data

    async def set(self, unit: int, name: str, value: Any) -> None:
        """Put ``value`` (in the point's unit) into the device's registers."""
        point = self.maps[unit].point(name)
        regs: list[Any] = (
            point.encode(value) if point.table in ("holding", "input") else [bool(value)]
        )
        await self._server.context.async_setValues(unit, _FC[point.table], point.address, regs)

    async def get(self, unit: int, name: str) -> Any:
        """The point's current value (what a master wrote, for writable points)."""
        point = self.maps[unit].point(name)
        regs = await self._server.context.async_getValues(
            unit, _FC[point.table], point.address, point.count
        )
        if not isinstance(regs, list):
            raise KeyError(f"unit {unit} has no {point.table} register {point.address}: {regs}")
        return point.decode(regs) if point.table in ("holding", "input") else bool(regs[0])


class _Reason(logging.Handler):
    # keeps pymodbus's "Failed to start server <OSError>" as "<OSError>"
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Failed to start server" in message:
            reason = message.split("Failed to start server", 1)[1]
            self.text = re.sub(r"\[Errno -?\d+\] ", "", reason).strip()


class SimulatedMeter:
    """A DL/T 645-2007 electricity meter on a serial endpoint (a virtual RS-485 line's
    pseudo-terminal), built on our own table (protocols/dlt645.py, whose bytes agree with
    the ``dlt645`` package: tests/test_dlt645.py). It hears every byte on the line, as a
    drop does, answers read-data requests for its address and the broadcast address query,
    answers "no requested data" for an identifier it does not hold, and stays silent on
    everything else (Modbus frames to other drops, other meters' frames, noise).
    Values are set by item name in the item's unit (``meter.set("voltage_l1", 230.4)``).
    """

    def __init__(self, port: str, address: str, values: dict[str, float] | None = None) -> None:
        self.port = port
        self.address = address
        self.values: dict[str, float] = dict(values or {})
        self.requests = 0  # frames it answered
        self.silent = False  # True: a meter with its power cut
        self._fd: int | None = None
        self._rx = bytearray()

    def set(self, name: str, value: float) -> None:
        dlt645.encode_value(dlt645.item(name), value)  # refuse what the meter could not hold
        self.values[name] = value

    async def start(self) -> SimulatedMeter:
        """Open the endpoint and answer from now on (OSError if it cannot be opened)."""
        fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)
        return self

    async def stop(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            self._rx += os.read(self._fd, 4096)
        except BlockingIOError:
            return
        rx = self._rx
        while True:
            start = rx.find(0x68)
            if start < 0:
                rx.clear()
                return
            del rx[:start]
            try:
                n = dlt645.frame_length(rx)
            except DLT645Error:
                del rx[:1]  # a 68 inside someone else's frame: look further
                continue
            if n == 0:
                if len(rx) > 600:
                    rx.clear()
                return
            frame, rest = bytes(rx[:n]), rx[n:]
            try:
                parsed = dlt645.parse(frame)
            except DLT645Error:
                del rx[:1]
                continue
            self._rx = rx = bytearray(rest)
            answer = self._answer(parsed)
            if answer is not None and not self.silent:
                self.requests += 1
                os.write(self._fd, answer)

    def _answer(self, frame: dict[str, Any]) -> bytes | None:
        control, to = frame["control"], frame["address"]
        if control == dlt645.READ_ADDRESS and to == dlt645.BROADCAST:
            return dlt645.address_response(self.address)
        if control != dlt645.READ_DATA or to != self.address:
            return None  # an answer on the line, or a frame for another meter
        item = dlt645.item_by_di(frame["di"])
        if item is None or item.name not in self.values:
            return dlt645.exception_response(self.address, dlt645.READ_DATA, 0x02)
        value = dlt645.encode_value(item, self.values[item.name])
        return dlt645.read_response(self.address, item.di, value)
