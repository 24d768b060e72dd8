"""Northbound platforms: one module per dialect behind ``base.Adapter``.

``KINDS`` is the registry: ``[platform] kind = "..."`` -> the module that holds its
``ADAPTER`` class. A kind whose module is not there (not built yet) is refused by the
config check with what is available. The interface is described in base.py and in
docs/platforms.md; the reconnect limiter all platforms share is in limiter.py.
"""

from __future__ import annotations

import importlib

from polekit.gateway.platforms.base import Adapter

DEFAULT_KIND = "senml"

KINDS: dict[str, str] = {
    "senml": "polekit.gateway.platforms.senml",
    "thingsboard": "polekit.gateway.platforms.thingsboard",
    "sparkplug": "polekit.gateway.platforms.sparkplug",
    "iotda": "polekit.gateway.platforms.iotda",
    "onenet": "polekit.gateway.platforms.onenet",
    "aliyun": "polekit.gateway.platforms.aliyun",
    "hj212": "polekit.gateway.platforms.hj212",
}

# keys every [platform] entry may carry; an adapter adds its own (Adapter.KEYS)
COMMON_KEYS = (
    "kind",
    "name",
    "url",
    "ca_file",
    "cert_file",
    "key_file",
    "keepalive",
    "mqtt_version",
    "max_connects_per_min",
    "names",
)

MQTT_VERSIONS = ("3.1.1", "5")


class UnknownKindError(LookupError):
    """``kind`` names no adapter of this build; the message lists those that exist."""


def available() -> list[str]:
    """The kinds whose module is installed, in ``KINDS`` order."""
    out = []
    for kind, module in KINDS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module is there but a dependency of it is not
                raise
            continue
        out.append(kind)
    return out


def adapter_class(kind: str) -> type[Adapter]:
    """The ``ADAPTER`` class of ``kind``; ``UnknownKindError`` when there is none."""
    module = KINDS.get(kind)
    if module is not None:
        try:
            cls: type[Adapter] = importlib.import_module(module).ADAPTER
            return cls
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    raise UnknownKindError(kind)
