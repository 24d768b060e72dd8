"""Modbus RTU bus throughput on a line paced at the real baud rate.

The gateway's own bus poller (gateway/sources/modbus_bus.py) polls a pymodbus field device
across hil's virtual RS-485 line, which releases bytes no faster than the baud rate allows
(11 bits a character). Achieved transactions/s are compared with the theoretical maximum
from the Modbus timing rules: request and response frames at 11 bits a character, plus a
t3.5 silence after each (1.75 ms fixed above 19200 baud). Target: ratio >= 0.90.

    .venv/bin/python bench/modbus_line.py [--seconds 5] [--registers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

from polekit.gateway.config import parse_config
from polekit.gateway.sources.modbus_bus import ModbusBus
from polekit.hil.fieldbus import SimulatedBus
from polekit.hil.line import VirtualLine
from polekit.protocols import identity, modbus
from polekit.protocols.modbus import Point, RegisterMap


def theoretical_tps(baud: int, registers: int) -> float:
    request = 8  # unit, fc, address, count, crc
    response = 5 + 2 * registers  # unit, fc, byte count, data, crc
    seconds = (request + response) * modbus.char_time_s(baud) + 2 * modbus.t35_s(baud)
    return 1 / seconds


def _bench_map(registers: int) -> RegisterMap:
    return RegisterMap("bench", [Point(f"r{i}", i, "input", "u16") for i in range(registers)])


def _serve(port: str, baud: int, registers: int) -> None:
    # the field device runs in its own process, as a real one has its own CPU
    async def serve() -> None:
        await SimulatedBus(
            {1: _bench_map(registers)}, serial_port=port, baudrate=baud, parity="N", stopbits=2
        ).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


async def measure(baud: int, registers: int, seconds: float) -> tuple[float, int]:
    regmap = _bench_map(registers)
    code = identity.make("371600", "EN", 1)
    with VirtualLine(baudrate=baud) as line:
        gw_port, dev_port = line.endpoint(), line.endpoint()
        device_proc = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(dev_port, baud, registers), daemon=True
        )
        device_proc.start()
        await asyncio.sleep(1.0)  # the device process opens its port
        config = parse_config(
            {
                "gateway": {"id": "bench"},
                "mqtt": {},
                "bus": [
                    {
                        "name": "b",
                        "type": "rtu",
                        "port": gw_port,
                        "baudrate": baud,
                        "parity": "N",
                        "timeout": 1.0,
                    }
                ],
                "device": [
                    {"code": code, "bus": "b", "unit": 1, "map": "pole-env", "poll_interval": 0.05}
                ],
            }
        )
        polls = 0

        async def sink(*_: object) -> None:
            nonlocal polls
            polls += 1

        device = config.devices[0]
        device = type(device)(device.code, device.bus, device.unit, "bench", regmap, 0.05)
        bus = ModbusBus(config.buses["b"], [device], sink)
        state = bus.devices[code]
        await bus.connect()
        await bus.poll(state)  # warm up
        start_tx = bus.counters.transactions
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            await bus.poll(state)
        elapsed = time.monotonic() - start
        done = bus.counters.transactions - start_tx
        errors = bus.counters.no_response + bus.counters.bad_response
        bus.close()
        device_proc.terminate()
        device_proc.join()
        return done / elapsed, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--registers", type=int, default=10)
    args = parser.parse_args()
    print(f"{'baud':>7} {'theory tx/s':>12} {'achieved tx/s':>14} {'ratio':>6} {'errors':>7}")
    for baud in (9600, 19200, 115200):
        achieved, errors = asyncio.run(measure(baud, args.registers, args.seconds))
        theory = theoretical_tps(baud, args.registers)
        print(f"{baud:>7} {theory:>12.1f} {achieved:>14.1f} {achieved / theory:>6.2f} {errors:>7}")


if __name__ == "__main__":
    main()
