"""What a link to a node must do for an update: tell what the node runs and how its last
update went (``status``), and deliver a bundle (``push``). The rollout (rollout.py) sees
only this, whatever the link: the RS-485 line (modbus_transfer.py) or BLE
(ble_transfer.py).

``push`` is resumable by contract: the node stages what it received on its flash and says
what it lacks, so a push cut off (a gateway restart, a power cut at the node, a noisy line)
is simply called again and sends only the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# (bytes the node holds of the bundle's files, bytes in all[, bytes sent over the link by
# this push]): called as chunks are taken. What the node holds also grows by the files it
# copies from its running version; what was sent does not (a transport that cannot tell
# leaves it out, and the rollout counts what the node gained instead)
Progress = Callable[..., None]


def rollback_text(code: int) -> str:
    """The words for a node's rollback reason code (protocols/ota.py's table)."""
    from polekit.protocols import ota

    return str(ota.rollback_text(code))


@dataclass(frozen=True)
class NodeUpdate:
    """A node's update status as it reports it. ``running``: the version it runs
    ("0.2"); ``previous``: the one it ran before its last update (None: never updated);
    ``state``: its update state's name (idle, receiving, staged, trial, ...);
    ``error``: the code of the last refusal (0: none; protocols' manifest error codes);
    ``rollback``: why it went back to ``running`` from its last update (0: it did not)."""

    running: str
    previous: str | None = None
    state: str = "idle"
    error: int = 0
    rollback: int = 0

    @property
    def on_trial(self) -> bool:
        """The new version runs and has not confirmed itself yet."""
        return self.state == "trial"

    @property
    def rolled_back(self) -> bool:
        """The node went back to its previous version by itself after a failed trial."""
        return self.state == "rolled_back"


@dataclass(frozen=True)
class Pushed:
    """What one ``push`` did: ``sent`` bytes of the files crossed the link now,
    ``resumed_at`` the node already held (an earlier push cut off)."""

    sent: int
    resumed_at: int = 0


class UpdateError(Exception):
    """An update of one node failed; the message says why, for the report."""


class NodeRefused(UpdateError):  # noqa: N818 - says what the node did
    """The node refused the bundle (``code``: its error code, ``text``: why): a bad
    signature, another board, a downgrade, a file that does not match, too big."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"refused by the node: {text} (code {code})")
        self.code = code
        self.text = text


class LinkLost(UpdateError):  # noqa: N818
    """The node stopped answering during the update (after the link's own retries)."""


class Transport(Protocol):
    """One link kind to the nodes (``device``: a device code of the gateway's config)."""

    def line_of(self, device: str) -> str:
        """The shared medium ``device`` is on (``bus:NAME``): one transfer at a time on it."""
        ...

    async def status(self, device: str) -> NodeUpdate:
        """The node's update status now; raises LinkLost when it does not answer."""
        ...

    async def push(
        self,
        device: str,
        manifest: bytes,
        sig: bytes,
        files: list[bytes],
        progress: Progress,
    ) -> Pushed:
        """Deliver the bundle (``files`` in the manifest's order) and have the node
        install it (it verifies, switches and restarts on the new version, on trial).
        Returns once the node took the install order; raises NodeRefused, LinkLost."""
        ...
