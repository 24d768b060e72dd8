"""From register values to the SenML pack the platform receives.

One poll of one device becomes one pack: base name ``urn:dev:pk:{code}:``, base time, a
record per point (named from the reference model, in its primary units, or secondary
units with bver 26 when configured) and a ``seq`` record, the device's pack counter,
assigned by the durable queue so that it survives restarts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from polekit.protocols import senml
from polekit.protocols.modbus import Point


class PackEncoder:
    """Builds and encodes packs in the configured format (``senml+cbor`` or ``senml+json``)."""

    def __init__(self, fmt: str = "senml+cbor", secondary_units: bool = False) -> None:
        self.fmt = fmt
        self.secondary_units = secondary_units
        self.invalid_values = 0  # NaN/infinite values dropped (a meter's "no value" float)
        # (name, unit) -> the unit it is sent in: the model is searched once a point
        self._targets: dict[tuple[str, str | None], str | None] = {}
        # (device, point names) of packs RFC 8428 accepted: names and units do not change
        # from one poll to the next, and the values are the decoders' numbers and booleans
        # (non-finite floats dropped above), so a device's pack is validated once
        self._valid_shapes: set[tuple[str, ...]] = set()

    def readings(self, values: list[tuple[Point, Any]]) -> list[tuple[str, Any, str | None]]:
        """(name, value, unit) for each polled point whose value is a real number or bool."""
        out = []
        for point, value in values:
            if isinstance(value, float) and not math.isfinite(value):
                self.invalid_values += 1
                continue
            out.append((point.name, value, point.unit))
        return out

    def packer(
        self, device_code: str, readings: list[tuple[str, Any, str | None]], time_s: float
    ) -> Callable[[int], bytes]:
        """A function of the pack's sequence number that returns the encoded pack.

        The records are built now (conversion errors surface in the poller); only the
        ``seq`` record waits for the number the queue assigns."""
        # the seq record is built with the rest (so an empty poll still names its device)
        # and gets its number at encode time
        records = senml.pack_readings(
            device_code,
            [*readings, ("seq", 0, None)],
            base_time=round(time_s, 3),
            secondary=self.secondary_units,
            targets=self._targets,
        )

        shape = (device_code, *[r[0] for r in readings])
        if shape not in self._valid_shapes:
            senml.validate(records)  # a bad point name fails this poll, in the poller
            self._valid_shapes.add(shape)

        def encode(seq: int) -> bytes:
            pack = [*records[:-1], {**records[-1], "v": seq}]
            if self.fmt == "senml+json":
                return senml.encode_json(pack).encode()
            return senml.encode_cbor(pack, checked=True)

        return encode

    def decode(self, payload: bytes) -> list[dict[str, Any]]:
        """The pack in ``payload`` (for tests, tools and the status command)."""
        if self.fmt == "senml+json":
            return senml.decode_json(payload)
        return senml.decode_cbor(payload)


def encode_body(obj: dict[str, Any], fmt: str) -> bytes:
    """A command result or event body in the configured encoding (JSON or CBOR)."""
    if fmt == "senml+json":
        return json.dumps(obj, separators=(",", ":")).encode()
    from polekit.protocols import cbor

    return cbor.dumps(obj)
