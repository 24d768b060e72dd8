"""The pipeline's packs (issue 19 item 5): a device's pack is checked against RFC 8428 once
per shape (its point names), in the poller, and encoded without checking it again; the
bytes are those of the checked encoder, and a pack that RFC 8428 refuses is refused at
every poll, not only the first. cbor2 is the reference decoder."""

from __future__ import annotations

import cbor2
import pytest

from polekit.gateway.pipeline import PackEncoder
from polekit.protocols import identity, senml
from polekit.protocols.errors import SenMLError
from polekit.protocols.modbus import Point

CODE = identity.make("371600", "PL", 7)


def test_packs_after_the_first_are_the_checked_encoders_bytes() -> None:
    enc = PackEncoder()
    points = [Point(f"r{i}", i) for i in range(10)]
    for poll in range(3):
        values = [(p, 100 * poll + i) for i, p in enumerate(points)]
        readings = enc.readings(values)
        payload = enc.packer(CODE, readings, 1_764_605_000.5 + poll)(poll + 1)
        expected = senml.pack_readings(
            CODE, [*readings, ("seq", poll + 1, None)], base_time=1_764_605_000.5 + poll
        )
        assert payload == senml.encode_cbor(expected)  # validated in full
        decoded = cbor2.loads(payload)  # RFC 8428 labels: -2 bn, 0 n, 2 v
        assert decoded[0][-2] == f"urn:dev:pk:{CODE}:"
        assert [r[2] for r in decoded] == [100 * poll + i for i in range(10)] + [poll + 1]


def test_a_pack_rfc_8428_refuses_is_refused_at_every_poll() -> None:
    enc = PackEncoder()
    bad = Point("no spaces allowed", 0)
    for _ in range(3):
        with pytest.raises(SenMLError, match="must start with a letter or digit"):
            enc.packer(CODE, enc.readings([(bad, 1)]), 1_764_605_000.0)
