"""The node's Modbus RTU slave (firmware/node/uplinks/modbus_slave.py, MicroPython code run
here under CPython) with the pole-env register file, fed a byte stream in timed chunks.
Nothing may escape it: an exception would stop the node's RS-485 uplink. Every answer it
sends is a whole frame from its own unit.

Input format: chunks of ``gap_ms length bytes...``; ``gap_ms`` is the line's silence
before the chunk, ``length`` how many bytes follow (fewer at the end of the input)."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from hypothesis import strategies as st

from polekit.protocols import modbus

from targets import _modbus

RAISES: tuple[type[BaseException], ...] = ()
UNIT = 1


def _node_modules() -> tuple[ModuleType, ModuleType]:
    # The node imports ``protocols`` as a top-level package (/lib/protocols on the board);
    # on the host that is polekit.protocols, so the same module objects serve both names.
    if "protocols" not in sys.modules:
        for name in ("protocols", "protocols.errors", "protocols.modbus"):
            sys.modules[name] = importlib.import_module("polekit." + name)
    slave = importlib.import_module("polekit.firmware.node.uplinks.modbus_slave")
    registers = importlib.import_module("polekit.firmware.node.registers")
    return slave, registers


class _Uart:
    def __init__(self) -> None:
        self.pending = b""
        self.sent: list[bytes] = []

    def read(self) -> bytes | None:
        data, self.pending = self.pending, b""
        return data or None

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def fuzz(data: bytes) -> None:
    slave_module, registers_module = _node_modules()
    regs = registers_module.RegisterFile(modbus.register_map("pole-env"))
    uart = _Uart()
    slave = slave_module.ModbusSlave(uart, UNIT, regs, 9600)
    now, pos = 0, 0
    while pos < len(data):
        gap = data[pos]
        length = data[pos + 1] if pos + 1 < len(data) else 0
        chunk = data[pos + 2 : pos + 2 + length]
        pos += 2 + length
        now += gap
        slave.poll(now)  # the silence before the chunk: ends a cut-off frame
        uart.pending = chunk
        slave.poll(now)
    slave.poll(now + 1000)  # a long silence ends the last frame
    for reply in uart.sent:
        unit, pdu = modbus.check(reply)
        assert unit == UNIT and pdu, reply.hex()


def _chunks(frames: list[bytes], gaps: list[int]) -> bytes:
    out = b""
    for frame, gap in zip(frames, gaps, strict=False):
        half = len(frame) // 2 if gap % 3 == 0 else len(frame)  # some frames in two pieces
        for piece in (frame[:half], frame[half:]):
            for at in range(0, len(piece), 255):
                out += bytes((gap & 0xFF, len(piece[at : at + 255]))) + piece[at : at + 255]
    return out


def seeds() -> list[bytes]:
    frames = [f for f in _modbus.seeds() if len(f) < 256]
    return [_chunks([f], [5]) for f in frames] + [_chunks(frames, [3] * len(frames))]


INPUTS = st.builds(
    _chunks,
    st.lists(_modbus.frames, min_size=1, max_size=6),
    st.lists(st.sampled_from([0, 1, 2, 4, 5, 49, 50, 60, 255]), min_size=6, max_size=6),
)
