"""The login a platform dialect computes: what an MQTT CONNECT carries, and until when.

The dialect modules (iotda_dialect, onenet_dialect, alink_dialect) return one; their
adapters copy it into the interface's ``Connection``. Whether the wall clock can be
trusted for a signed login is ``base.clock_problem``'s job (the uplink asks it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Credentials:
    """``expires_at_s`` (wall-clock Unix seconds): when the platform stops accepting
    them at CONNECT, None if never."""

    client_id: str
    username: str
    password: str = field(repr=False)
    expires_at_s: float | None = None
