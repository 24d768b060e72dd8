"""Encrypted BTHome v2 adverts (bthome.decode with a bind key and MAC): any bytes give values
or BTHomeError (DecryptionError for a bad tag). The structured inputs are sealed with the
right key, so the fuzz reaches the object parser behind the decryption."""

from __future__ import annotations

from polekit.protocols import bthome
from polekit.protocols.errors import BTHomeError

from targets import _bthome

RAISES = (BTHomeError,)


def fuzz(data: bytes) -> None:
    bthome.decode(data, key=_bthome.KEY, mac=_bthome.MAC)


def seeds() -> list[bytes]:
    spec = bytes.fromhex(_bthome.SPEC["hex"])
    sealed = [_bthome.seal(p[1:], 7, False) for p in _bthome.plain_seeds() if p]
    return [spec, *sealed]


INPUTS = _bthome.encrypted_adverts
