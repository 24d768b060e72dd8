"""Plan the fewest Modbus reads that cover a device's points."""

from __future__ import annotations

from dataclasses import dataclass

from polekit.protocols.modbus import MAX_READ, Point, RegisterMap

MAX_BITS = 2000  # coils / discrete inputs in one read (spec limit)


@dataclass(frozen=True)
class Read:
    """One request: ``count`` registers (or bits) of ``table`` from ``address``."""

    table: str
    address: int
    count: int
    points: tuple[Point, ...]


def plan_reads(regmap: RegisterMap, max_registers: int = MAX_READ, max_gap: int = 0) -> list[Read]:
    """Merge contiguous points of each table into reads of at most ``max_registers``
    registers. Gaps up to ``max_gap`` unmapped registers are read through rather than split
    (0 by default: many devices refuse reads that touch unmapped registers)."""
    reads: list[Read] = []
    for table in ("holding", "input", "coil", "discrete"):
        limit = max_registers if table in ("holding", "input") else MAX_BITS
        points = sorted((p for p in regmap if p.table == table), key=lambda p: p.address)
        start = end = -1
        group: list[Point] = []
        for p in points:
            p_end = p.address + p.count
            if group and p.address - end <= max_gap and p_end - start <= limit:
                end = max(end, p_end)
                group.append(p)
                continue
            if group:
                reads.append(Read(table, start, end - start, tuple(group)))
            start, end, group = p.address, p_end, [p]
        if group:
            reads.append(Read(table, start, end - start, tuple(group)))
    return reads
