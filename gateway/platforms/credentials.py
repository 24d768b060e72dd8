"""Login credentials of a platform connection, and the wall-clock checks they need.

Signed logins (IoTDA's hourly timestamp, OneNET's token expiry ``et``, Alibaba's signed
timestamp) depend on the gateway's wall clock. A gateway on a pole often boots without
a real-time clock battery and before NTP answers, at 1970 or at its image's build date:
its credentials are then refused (or expire at once) and the platform only says "bad
password". :func:`clock_problem` names that case so the log says what to fix.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass

# 2024-01-01T00:00:00Z: no gateway of ours runs before it, so a clock before it is unset
EARLIEST_PLAUSIBLE_S = calendar.timegm((2024, 1, 1, 0, 0, 0))


@dataclass(frozen=True)
class Credentials:
    """What an MQTT CONNECT carries for one platform; ``expires_at_s`` (wall-clock Unix
    seconds) is when the platform stops accepting them, None if never."""

    client_id: str
    username: str
    password: str
    expires_at_s: float | None = None

    def renew_at_s(self, margin_s: float = 300.0) -> float | None:
        """When to make new credentials: ``margin_s`` before they expire (a reconnect
        then still carries valid ones), None if they never expire."""
        return None if self.expires_at_s is None else self.expires_at_s - margin_s


def clock_problem(now_s: float) -> str | None:
    """A one-line explanation when the wall clock cannot be right (before 2024: no NTP
    yet, no RTC), else None."""
    if now_s >= EARLIEST_PLAUSIBLE_S:
        return None
    import time

    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(max(now_s, 0)))
    return (
        f"the system clock says {shown}, before 2024: it has not been set (no NTP yet, "
        "no RTC); signed platform logins will be refused until it is: check NTP "
        "(timedatectl status) and the network"
    )
