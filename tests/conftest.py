"""Shared helpers: the literal test vectors in tests/vectors/, used by the CPython tests and
replayed inside the MicroPython VM (tests/mpy/replay_vectors.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).resolve().parent / "vectors"


def load_vectors(name: str) -> Any:
    """The parsed JSON vector file ``tests/vectors/{name}.json``."""
    return json.loads((VECTORS / f"{name}.json").read_text())


def from_tagged(v: Any, tag: Any = None) -> Any:
    """Turn the vector files' JSON (with $bytes/$int/$float/$tag/$map markers) into values.
    ``tag`` builds tagged values (our Tag or cbor2's CBORTag)."""
    if isinstance(v, list):
        return [from_tagged(x, tag) for x in v]
    if isinstance(v, dict):
        if "$bytes" in v:
            return bytes.fromhex(v["$bytes"])
        if "$int" in v:
            return int(v["$int"])
        if "$float" in v:
            return float(v["$float"])
        if "$tag" in v:
            return tag(v["$tag"][0], from_tagged(v["$tag"][1], tag))
        if "$map" in v:
            out = {}
            for k, x in v["$map"]:
                key = from_tagged(k, tag)
                out[tuple(key) if isinstance(key, list) else key] = from_tagged(x, tag)
            return out
        return {k: from_tagged(x, tag) for k, x in v.items()}
    return v


def ha_service_info(service_data: bytes, name: str, address: str) -> Any:
    """An advert's BTHome service data as Home Assistant's Bluetooth stack hands it to its
    parsers (bthome-ble), for checking our adverts with an independent decoder."""
    from habluetooth import BluetoothServiceInfoBleak

    return BluetoothServiceInfoBleak(
        name=name,
        address=address,
        rssi=-60,
        manufacturer_data={},
        service_data={"0000fcd2-0000-1000-8000-00805f9b34fb": service_data},
        service_uuids=["0000fcd2-0000-1000-8000-00805f9b34fb"],
        source="local",
        device=None,
        advertisement=None,
        connectable=False,
        time=0.0,
        tx_power=None,
    )
