"""Modbus RTU framing (protocols/modbus.py): the stream framer (request_length), the frame
check and the request decoder raise only FrameError (CRCError is one) on any bytes, and
every register map decodes whatever registers a device answers with."""

from __future__ import annotations

from polekit.protocols import modbus
from polekit.protocols.errors import FrameError, ModbusException

from targets import _modbus

RAISES = (FrameError,)
POINTS = [p for name in modbus.map_names() for p in modbus.register_map(name)]


def fuzz(data: bytes) -> None:
    need = modbus.request_length(data)
    assert need in (-1, 0) or need >= 8, need
    if need > 0 and len(data) >= need:
        try:
            modbus.decode_request(data[:need])
        except FrameError:
            pass
    # a device's answer, as registers: every point decodes them, and encodes the value back
    regs = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]
    for point in POINTS:
        if len(regs) >= point.count:
            value = point.decode(regs[: point.count])
            try:
                point.encode(value)
            except ModbusException:
                pass  # outside the point's low..high: the documented refusal
    request = modbus.decode_request(data)
    assert 0 <= request.error <= 3 and 0 <= request.unit <= 255, vars(request)


def seeds() -> list[bytes]:
    return _modbus.seeds()


INPUTS = _modbus.frames
