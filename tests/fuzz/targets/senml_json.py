"""SenML JSON decoding (senml.decode_json): any bytes give a valid pack or SenMLError; a pack
it accepts encodes again (encode_json) and decodes back."""

from __future__ import annotations

from polekit.protocols import senml
from polekit.protocols.errors import SenMLError

from targets import _senml

RAISES = (SenMLError,)


def fuzz(data: bytes) -> None:
    pack = senml.decode_json(data)
    senml.decode_json(senml.encode_json(pack))


def seeds() -> list[bytes]:
    return _senml.json_seeds()


INPUTS = _senml.json_packs
