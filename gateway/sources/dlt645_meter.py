"""DL/T 645-2007 meters on a serial line the Modbus bus owns.

A pole cabinet's RS-485 pair often carries the lighting meter (DL/T 645) and Modbus sensors
together. One task owns the port (``ModbusBus``, one owner per line); a meter is one more
device on its schedule, with the same backoff, offline and half-duplex rules. Its
transactions travel over the same open port: the request goes out through pymodbus's
transport and, for the length of the exchange, the bytes that come back are taken off the
transport instead of going to pymodbus's RTU framer (``ModbusProtocol.callback_data``, the
one hook pymodbus 3.16 gives for received bytes: it is called with the bytes buffered so
far and returns how many it consumed). Both protocols share the line's settings (baud
rate, parity): see docs/field-protocols.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from polekit.protocols import dlt645
from polekit.protocols.errors import DLT645Error

if TYPE_CHECKING:
    from polekit.gateway.sources.modbus_bus import DeviceState, ModbusBus, _Link

log = logging.getLogger("polekit.gateway.dlt645")


class MeterRefused(Exception):  # noqa: N818 - what the meter said
    """The meter answered with an exception (its ERR byte names why)."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(f"{what}: meter refused ({dlt645.error_text(err)})")
        self.err = err


async def exchange(bus: ModbusBus, link: _Link, request: bytes, what: str) -> dict[str, Any]:
    """Send one DL/T 645 request on the bus's port and return the parsed answer; raises
    DeviceNoResponse (nothing, or no whole frame, within the bus's timeout)."""
    from polekit.gateway.sources.modbus_bus import DeviceNoResponse

    client = link.client
    assert client is not None
    ctx = client.ctx
    if bus.config.inter_frame_s:  # the same silence before talking as a Modbus request
        await bus._until(link.last_wire + bus.config.inter_frame_s)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    seen = 0

    def take(data: bytes, addr: Any = None) -> int:
        nonlocal seen
        link.trace(False, data[seen:])
        seen = len(data)
        start = 0
        while start < len(data) and data[start] not in (0xFE, 0x68):
            start += 1  # noise at line turn-around: a meter's answer starts FE or 68
        try:
            n = dlt645.frame_length(data[start:])
        except DLT645Error:
            n = len(data) - start  # not a frame: hand it to parse, which says why
        if n and not answer.done():
            answer.set_result(bytes(data[start : start + n]))
            seen = 0
            return len(data)
        return 0

    bus.counters.transactions += 1
    link.rx_bytes = 0
    ctx.callback_data = take  # the port's received bytes are this exchange's until it ends
    try:
        ctx.recv_buffer = b""
        link.trace(True, request)
        ctx.send(request)
        try:
            async with asyncio.timeout(bus.config.timeout_s):
                raw = await answer
        except TimeoutError:
            if not (answer.done() and not answer.cancelled()):
                if link.rx_bytes:
                    bus.counters.bad_response += 1
                    raise DeviceNoResponse(
                        f"{what}: corrupt or truncated answer ({link.rx_bytes} bytes)"
                    ) from None
                bus.counters.no_response += 1
                raise DeviceNoResponse(
                    f"{what}: no answer within {bus.config.timeout_s} s"
                ) from None
            raw = answer.result()  # it came in the turn the time ran out
    finally:
        del ctx.callback_data  # pymodbus's own handler again
        ctx.recv_buffer = b""
    try:
        return dlt645.parse(raw)
    except DLT645Error as exc:
        bus.counters.bad_response += 1
        raise DeviceNoResponse(f"{what}: {exc}") from None


async def find_address(bus: ModbusBus, link: _Link) -> str:
    """The address of the only meter on the line, by the broadcast read-address query."""
    frame = await exchange(bus, link, dlt645.read_address_request(), "broadcast address query")
    if frame["control"] != dlt645.READ_ADDRESS | dlt645.ANSWER or len(frame["data"]) != 6:
        raise DLT645Error(f"answer 0x{frame['control']:02X} to the address query")
    return "".join(f"{b:02X}" for b in reversed(frame["data"]))


async def poll(bus: ModbusBus, state: DeviceState, link: _Link) -> list[tuple[Any, Any]]:
    """Read every item of a meter's data set: [(item, value)], items carrying the
    reference model's name and unit. Raises DeviceNoResponse / MeterRefused."""
    dev = state.config
    address = dev.meter_address or state.meter_address
    if address is None:
        address = await find_address(bus, link)
        state.meter_address = address
        log.info("device %s: the broadcast query found meter %s", dev.code, address)
    values: list[tuple[Any, Any]] = []
    for item in dev.items:
        what = f"meter {address} DI {item.di:08X} ({item.name})"
        frame = await exchange(bus, link, dlt645.read_request(address, item.di), what)
        if frame["address"] != address:
            bus.counters.bad_response += 1
            raise DLT645Error(f"{what}: answer from meter {frame['address']}")
        if frame["error"] is not None:
            bus.counters.exceptions += 1
            raise MeterRefused(frame["error"], what)
        if frame["di"] != item.di:
            bus.counters.bad_response += 1
            raise DLT645Error(f"{what}: answer for DI {frame['di']}")
        values.append((item, dlt645.decode_value(item, frame["data"])))
    return values
