"""The host's side of a pole node: a Modbus master on the node's RS-485 line that reads the
whole register map into named values and writes points by name. Used by the HIL suite's
``node`` fixture, the firmware tests and the benches, on real and emulated boards alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from polekit.protocols import modbus


class NodeMaster:
    """Modbus master for one node (``unit``) on ``port`` (a serial port path).

    ``time_scale`` stretches every timeout: a board that runs slower than the chip the
    timeouts were written for (an emulated board held to a little less than an ESP32's
    speed, hil/throttle.py) gets as many more seconds."""

    def __init__(
        self,
        port: str,
        unit: int = 1,
        regmap: str = "pole-env",
        baudrate: int = 9600,
        time_scale: float = 1.0,
    ) -> None:
        self.port = port
        self.time_scale = max(1.0, time_scale)
        self.unit = unit
        self.baudrate = baudrate
        self.map = modbus.register_map(regmap)
        self.sizes = {
            table: max((p.address + p.count for p in self.map if p.table == table), default=0)
            for table in ("input", "holding")
        }

    def _client(self, timeout_s: float, retries: int) -> AsyncModbusSerialClient:
        # pseudo-terminals refuse parity: 8N2 keeps the 11-bit character of 8E1
        return AsyncModbusSerialClient(
            self.port,
            baudrate=self.baudrate,
            parity="N",
            stopbits=2,
            timeout=timeout_s * self.time_scale,
            retries=retries,
        )

    async def _read(self, timeout_s: float, retries: int) -> dict[str, Any]:
        client = self._client(timeout_s, retries)
        if not await client.connect():
            raise ConnectionError(f"cannot open {self.port}")
        try:
            tables = {}
            for table, size in self.sizes.items():
                if not size:
                    continue
                call = (
                    client.read_input_registers
                    if table == "input"
                    else client.read_holding_registers
                )
                try:
                    rr = await call(0, count=size, device_id=self.unit)
                except ModbusException as exc:  # silence, a garbled answer
                    raise ConnectionError(f"unit {self.unit} on {self.port}: {exc}") from None
                if rr.isError():
                    raise ConnectionError(f"unit {self.unit} answered {rr}")
                if len(rr.registers) != size:  # pymodbus gives up quietly after its retries
                    raise ConnectionError(
                        f"unit {self.unit} on {self.port}: {len(rr.registers)} of {size} "
                        f"{table} registers in the answer (none within {timeout_s} s?)"
                    )
                tables[table] = rr.registers
        finally:
            client.close()
        return {
            p.name: p.decode(tables[p.table][p.address : p.address + p.count])
            for p in self.map
            if p.table in tables
        }

    def read(self, timeout_s: float = 1.0, retries: int = 2) -> dict[str, Any]:
        """Every point of the map, decoded (scaled, in the map's units)."""
        return asyncio.run(self._read(timeout_s, retries))

    def write(self, name: str, value: float) -> None:
        """Write one writable point by name (scaled as the map says)."""
        point = self.map.point(name)
        regs = point.encode(value)

        async def go() -> None:
            client = self._client(1.0, 2)
            if not await client.connect():
                raise ConnectionError(f"cannot open {self.port}")
            try:
                try:
                    rr = await client.write_registers(point.address, regs, device_id=self.unit)
                except ModbusException as exc:
                    raise ConnectionError(f"unit {self.unit} on {self.port}: {exc}") from None
                if rr.isError():
                    raise ConnectionError(f"unit {self.unit} refused {name} = {value}: {rr}")
            finally:
                client.close()

        asyncio.run(go())

    def wait_for(
        self, check: Callable[[dict[str, Any]], Any], timeout_s: float = 10
    ) -> dict[str, Any]:
        """Read until ``check(values)`` is true or ``timeout_s`` passed; the last values
        (the caller asserts on them, so a timeout shows what the node had)."""
        deadline = time.monotonic() + timeout_s * self.time_scale
        while True:
            try:
                values = self.read()
            except ConnectionError:
                values = {}
            if (values and check(values)) or time.monotonic() > deadline:
                return values
            time.sleep(0.2)

    def answers(self, timeout_s: float = 0.5) -> bool:
        """Whether the node answers a read at all (firmware running)."""
        try:
            self.read(timeout_s=timeout_s, retries=0)
        except (ConnectionError, OSError):
            return False
        return True
