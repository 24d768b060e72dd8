"""Node modules (firmware/node, MicroPython code) imported under CPython for host tests and
the fuzz suite: the node imports ``protocols`` as a top-level package (/lib/protocols on
the board); here that is polekit.protocols, so the same module objects serve both names."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_PROTOCOLS = ("protocols", "protocols.errors", "protocols.cbor", "protocols.ccm")


def node_module(name: str) -> ModuleType:
    """``polekit.firmware.node.<name>``, with ``protocols`` resolvable as the board has it."""
    for mod in _PROTOCOLS:
        sys.modules.setdefault(mod, importlib.import_module("polekit." + mod))
    return importlib.import_module("polekit.firmware.node." + name)
