"""What a runner needs to start one gateway and read what it delivers."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from peerkit.subscriber import Decoder


class Helper(Protocol):
    """Something the gateway needs beside the broker while it runs (a platform stand-in)."""

    def stop(self) -> None: ...


@dataclass
class Launch:
    """A gateway ready to run: its command, where it runs, the topic it publishes on, how
    to decode that, the signal that stops it, and notes on how it was configured (options
    the gateway's config refused, a floor applied)."""

    gateway: str
    argv: list[str]
    cwd: Path
    topic: str
    decode: Decoder
    unit_of: Callable[[str], int | None]  # the Modbus unit of a device it names
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    notes: list[str] = field(default_factory=list)
    log: Path | None = None
    helper: Callable[[str, int], Helper] | None = None  # started with (broker host, port)
