"""The master's rate limit on new servers (max_server_rate): a token bucket, the clock injected
(porttable.py's tests drive it)."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """At most `rate` events a second, with bursts up to `rate`."""

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.clock = clock
        self.last = clock()

    def ready(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return self.tokens >= 1.0

    def take(self) -> bool:
        if self.ready():
            self.tokens -= 1.0
            return True
        return False
