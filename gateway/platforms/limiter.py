"""One reconnect limiter for every platform session: backoff that can never become a
reconnect storm.

Platforms ban clients that reconnect too often: China Telecom CTWing blocks an IP
address after 30 connects in 60 s; Alibaba Cloud and Huawei IoTDA throttle a device
that logs in again and again. An uplink asks ``wait_s()`` before every connect attempt,
and calls ``attempted()`` when it makes one: the answer is the larger of the
exponential backoff (``first_s`` doubling to ``max_s``, reset by a session that lasted)
and what the sliding window of the last 60 s still allows (``per_min`` attempts,
default 20: a third below CTWing's limit). In a long outage the backoff settles at
60 s / ``per_min`` (3 s by default), so attempts are spread evenly and a broker that
comes back is reached within that, never after a minute's hold. Every attempt counts,
refused or not: the platform counts what reaches it, and we cannot tell what did.

Limiters are shared by broker address (``for_broker``): two platform entries on the
same broker (or two gateways' worth of adapters in one process) count together.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

DEFAULT_PER_MIN = 20
WINDOW_S = 60.0
FIRST_S = 0.05
MAX_S = 1.0
STABLE_S = 10.0  # a session that lasted this long ends the backoff episode


class ConnectLimiter:
    """Backoff plus a sliding-window cap on connect attempts (see the module doc)."""

    def __init__(
        self,
        per_min: int = DEFAULT_PER_MIN,
        first_s: float = FIRST_S,
        max_s: float = MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_min < 1:
            raise ValueError(f"per_min must be at least 1, not {per_min}")
        self.per_min = per_min
        self.first_s = first_s
        self.max_s = max_s
        self.clock = clock
        self._attempts: deque[float] = deque()
        self._delay = 0.0  # backoff before the next attempt; 0 = connect at once
        self.attempts = 0
        self.held_s = 0.0  # total time the window (not the backoff) held attempts back

    def wait_s(self) -> float:
        """Seconds to wait before the next attempt may be made."""
        now = self.clock()
        while self._attempts and now - self._attempts[0] >= WINDOW_S:
            self._attempts.popleft()
        window = 0.0
        if len(self._attempts) >= self.per_min:
            window = self._attempts[0] + WINDOW_S - now
        return max(self._delay, window)

    def attempted(self) -> None:
        """An attempt is being made now; the next one backs off further."""
        self._attempts.append(self.clock())
        self.attempts += 1
        # a long outage settles at the window's own pace (3 s for 20 a minute): attempts
        # spread evenly, so the window never has to hold back a burst when the broker is
        # back (a burst would leave it waiting for up to a minute)
        cap = max(self.max_s, WINDOW_S / self.per_min)
        self._delay = self.first_s if self._delay == 0 else min(self._delay * 2, cap)

    def session_lasted(self, seconds: float) -> None:
        """A session ended after ``seconds``: a long one starts the next outage's
        backoff from the beginning (the window still counts every attempt)."""
        if seconds >= STABLE_S:
            self._delay = 0.0


class Limiters:
    """The limiters of one gateway, one per broker address; the strictest ``per_min``
    asked for an address wins."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_broker: dict[tuple[str, int], ConnectLimiter] = {}

    def for_broker(self, host: str, port: int, per_min: int = DEFAULT_PER_MIN) -> ConnectLimiter:
        key = (host.lower(), port)
        limiter = self._by_broker.get(key)
        if limiter is None:
            limiter = self._by_broker[key] = ConnectLimiter(per_min, clock=self.clock)
        limiter.per_min = min(limiter.per_min, per_min)
        return limiter
