"""The node firmware's heap over time on the emulated ESP32 (110 KiB budget).

Boots the emulated pole board with the firmware, drives the physical world (temperature
and light drift, the pole tilting past its alarm and back, the door opening), polls the
node over Modbus like the gateway does, and samples the node's free heap (its `free_heap`
register: gc.mem_free() right after the node's once-a-second collection). A steady
downward trend is a leak.

    .venv/bin/python bench/firmware_heap.py [--seconds 60] [--every 5]   (an hour: --seconds 3600)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time

from pymodbus.client import AsyncModbusSerialClient

from polekit.firmware.install import install
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import modbus


async def poll(port: str) -> dict[str, object]:
    regmap = modbus.register_map("pole-env")
    client = AsyncModbusSerialClient(
        port, baudrate=9600, parity="N", stopbits=2, timeout=1, retries=2
    )
    await client.connect()
    try:
        rr = await client.read_input_registers(0, count=24, device_id=1)
    finally:
        client.close()
    return {
        p.name: p.decode(rr.registers[p.address : p.address + p.count])
        for p in regmap
        if p.table == "input"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--every", type=float, default=5)
    args = parser.parse_args()
    flash = tempfile.mkdtemp(prefix="polekit-heap-")
    install(flash, "pole-env-esp32", {"watchdog_ms": 5000})
    samples: list[tuple[float, int]] = []
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        time.sleep(3)  # boot and first samples
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            t = time.monotonic() - start
            board.set("sht3x.temperature", 20 + 8 * math.sin(t / 30))
            board.set("bh1750.illuminance", 500 + 400 * math.sin(t / 20))
            board.set("adxl345.tilt", 12 if int(t / 15) % 2 else 2)
            board.set("door.active", int(t / 25) % 2)
            values = asyncio.run(poll(board.uarts["rs485"]))
            samples.append((t, int(values["free_heap"])))  # type: ignore[call-overload]
            time.sleep(args.every)
    budget = board.board.heap_bytes
    frees = [f for _, f in samples]
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_f = sum(frees) / n
    slope = sum((t - mean_t) * (f - mean_f) for t, f in samples) / max(
        1e-9, sum((t - mean_t) ** 2 for t, _ in samples)
    )
    print(f"free heap over {args.seconds:.0f} s ({n} samples), budget {budget} bytes:")
    print("  " + " ".join(str(f) for f in frees))
    print(
        f"  min {min(frees)} ({min(frees) / budget:.0%} of budget), max {max(frees)}, "
        f"first {frees[0]}, last {frees[-1]}"
    )
    q = max(1, n // 4)
    first_q, last_q = sum(frees[:q]) / q, sum(frees[-q:]) / q
    print(
        f"  mean of the first quarter {first_q:.0f}, of the last quarter {last_q:.0f} "
        f"(ratio {last_q / first_q:.3f}; below 1 means less free memory at the end)"
    )
    print(
        f"  trend {slope * 3600:+.0f} bytes/hour (least squares; noise from GC timing is expected)"
    )


if __name__ == "__main__":
    main()
