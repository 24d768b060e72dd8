"""BTHome v2 service data in clear (bthome.decode without a key): any bytes give values or
BTHomeError."""

from __future__ import annotations

from polekit.protocols import bthome
from polekit.protocols.errors import BTHomeError

from targets import _bthome

RAISES = (BTHomeError,)


def fuzz(data: bytes) -> None:
    bthome.decode(data)


def seeds() -> list[bytes]:
    return _bthome.plain_seeds()


INPUTS = _bthome.plain_adverts
