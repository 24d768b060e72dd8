"""One reconnect limiter for every platform session: backoff that can never become a
reconnect storm.

Platforms ban clients that reconnect too often: China Telecom CTWing blocks an IP
address after 30 connects in 60 s; Alibaba Cloud and Huawei IoTDA throttle a device that
logs in again and again. An uplink asks ``wait_s()`` before every connect attempt, and
calls ``attempted()`` when it made one: the answer is the larger of the exponential
backoff (``first_s`` doubling to ``max_s`` = 1 s, quick again after a session) and what
the sliding window of the last 60 s still allows: at most ``per_min`` connects that
reached the server (default 20: a third below CTWing's limit), the second half of them
spread over a window (6 s apart by default) so a storm is paced, never held for a
minute. A connection refused by the address (nothing listens: a broker restart) never
reaches a platform's counter and is paced by the backoff alone, so a broker that comes
back is reached within a second.

Limiters are shared by broker address (``for_broker``): two platform entries on the same
broker (or two gateways' worth of adapters in one process) count together.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

DEFAULT_PER_MIN = 20
WINDOW_S = 60.0
FIRST_S = 0.05
MAX_S = 1.0


class ConnectLimiter:
    """Backoff plus a sliding-window cap on connects (see the module doc)."""

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
        self._reached: deque[float] = deque()  # connects that reached the server
        self._delay = 0.0  # backoff before the next attempt; 0 = connect at once
        self.attempts = 0

    def wait_s(self) -> float:
        """Seconds to wait before the next attempt may be made."""
        now = self.clock()
        while self._reached and now - self._reached[0] >= WINDOW_S:
            self._reached.popleft()
        window = 0.0
        n = len(self._reached)
        if n >= self.per_min:
            window = self._reached[0] + WINDOW_S - now
        elif n >= self.per_min // 2:
            # half the budget spent: the other half spread over a window (6 s apart for
            # 20), so a storm is paced and never runs into a minute's hold
            window = self._reached[-1] + WINDOW_S / (self.per_min - self.per_min // 2) - now
        return max(self._delay, window)

    def attempted(self, reached: bool = True) -> None:
        """An attempt was made; ``reached``: it got to the server (a TCP connection was
        made: a session, a refused login, a drop). A refused TCP connection (nothing
        listens) never reaches a platform's counter and only backs off."""
        self.attempts += 1
        if reached:
            self._reached.append(self.clock())
        self._delay = self.first_s if self._delay == 0 else min(self._delay * 2, self.max_s)

    def session_lasted(self, seconds: float) -> None:
        """A session was up for ``seconds``: the next outage's retries start quick again
        (the window still counts every connect)."""
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
