"""SenML CBOR decoding (senml.decode_cbor): any bytes give a valid pack or SenMLError; a pack
it accepts encodes again (encode_cbor) and decodes back to as many records."""

from __future__ import annotations

from polekit.protocols import senml
from polekit.protocols.errors import SenMLError

from targets import _senml

RAISES = (SenMLError,)


def fuzz(data: bytes) -> None:
    pack = senml.decode_cbor(data)
    assert len(senml.decode_cbor(senml.encode_cbor(pack))) == len(pack)


def seeds() -> list[bytes]:
    return _senml.cbor_seeds()


INPUTS = _senml.cbor_packs
