"""The benchmark's cases: which devices, how often polled, what a perfect gateway delivers."""

from __future__ import annotations

from dataclasses import dataclass

from peerkit.simulator import DeviceSpec

TCP_UNITS = tuple(range(1, 51))  # 50 units behind one Modbus TCP endpoint
RTU_UNITS = tuple(range(1, 10))  # 9 slaves that answer ...
RTU_SILENT = (10,)  # ... and one that never does
REGISTERS = 10


@dataclass(frozen=True)
class Case:
    """One workload: ``spec`` devices polled every ``poll_s`` seconds."""

    name: str
    spec: DeviceSpec
    poll_s: float

    @property
    def nominal(self) -> float:
        """Values a second if every answering unit is read on time (silent ones excluded)."""
        return len(self.spec.units) * self.spec.registers / self.poll_s


CASES = {
    "tcp-100ms": Case("tcp-100ms", DeviceSpec("tcp", TCP_UNITS, REGISTERS), 0.1),
    "tcp-50ms": Case("tcp-50ms", DeviceSpec("tcp", TCP_UNITS, REGISTERS), 0.05),
    "tcp-20ms": Case("tcp-20ms", DeviceSpec("tcp", TCP_UNITS, REGISTERS), 0.02),
    "tcp-10ms": Case("tcp-10ms", DeviceSpec("tcp", TCP_UNITS, REGISTERS), 0.01),
    # 10 slaves on a 19200 baud line paced like a real one, polled every second; one is dead
    "rtu-silent": Case(
        "rtu-silent", DeviceSpec("rtu", RTU_UNITS, REGISTERS, RTU_SILENT, 19200), 1.0
    ),
}
