"""The master's refusals and failed starts, logged at most once per REFUSAL_LOG_INTERVAL with the
count since the last line (the port table counts every one): a sweep refused, or a master out of
descriptors, would otherwise write a line per SYN, from the master's loop, on the SYNs' path."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# A kind of refusal is logged at most once per this many seconds (with the count since its last
# line).
REFUSAL_LOG_INTERVAL = 5.0


class RefusalLog:
    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self._logged: dict[str, float] = {}  # kind -> when its last line was written
        self._unlogged: dict[str, int] = {}

    def note(self, level: int, kind: str, text: str, *args: object) -> None:
        """One more of `kind`; `text % args` is logged with the count if its interval is over."""
        now = self.clock()
        count = self._unlogged.get(kind, 0) + 1
        if now - self._logged.get(kind, -REFUSAL_LOG_INTERVAL) < REFUSAL_LOG_INTERVAL:
            self._unlogged[kind] = count
            return
        self.log.log(level, text + "; %d since the last report", *args, count)
        self._logged[kind], self._unlogged[kind] = now, 0
