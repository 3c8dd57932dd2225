"""One loop timer for the deadlines of every connection of a server process.

Each open connection has a next deadline (its dialogue's idle or quiet time, its read timeout,
its lifetime: session.py). A timer of the loop's own per connection costs a timer handle made
and cancelled each time the deadline moves (twice per short connection; ~3 us each on uvloop,
measured); here a deadline is an entry in one heap, and the loop has one timer, at the earliest
entry. Moving a deadline leaves the old entry behind, emptied: it holds no reference to its
connection (a closed connection is freed at once, not when its last deadline would have come),
and is dropped when its time comes or when emptied entries outnumber live ones.

`Deadlines.at(when, callback)` returns the entry; `cancel(entry)` empties it. The callback runs
once, from the loop, at or after `when` (the loop's clock, loop.time()).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

# Emptied entries are swept out of the heap when there are more than this many and they
# outnumber the live ones (bounds the heap of a process whose deadlines keep moving).
SWEEP_MIN = 1024

# Recent deadline times remembered to share their floats (`at`): the times of a few rounds of
# the loop; the memo is emptied when it reaches this many.
SHARED_TIMES = 256

# _timer_at while _fire runs its callbacks: below every time, so `at` arms nothing meanwhile.
_FIRING = float("-inf")

# An entry: [when, order, callback]; callback None once cancelled or run. A list, so that it can
# be emptied in place; `order` breaks ties, so callbacks are never compared.
Entry = list[object]


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[Entry] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._cancelled = 0
        self._times: dict[float, float] = {}  # recent times, each as one float (`at`)

    def __len__(self) -> int:
        """Live entries."""
        return len(self._heap) - self._cancelled

    def at(self, when: float, callback: Callable[[], object]) -> Entry:
        # Equal times share one float: the connections of one round of the loop (one accept
        # batch, data read in one round) often arm the same time (24 bytes each otherwise).
        times = self._times
        if len(times) >= SHARED_TIMES:
            times.clear()
        when = times.setdefault(when, when)
        entry: Entry = [when, next(self._order), callback]
        heapq.heappush(self._heap, entry)
        if when < self._timer_at:
            self._arm(when)
        return entry

    def cancel(self, entry: Entry) -> None:
        if entry[2] is not None:
            entry[2] = None
            self._cancelled += 1
            if (self._cancelled > SWEEP_MIN and self._cancelled * 2 > len(self._heap)
                    and self._timer_at != _FIRING):
                self._sweep()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # While callbacks run (they add and cancel entries), no timer is armed and no sweep
        # replaces the heap: the timer is armed once, at the earliest entry left, at the end.
        self._timer_at = _FIRING
        heap = self._heap
        now = self.loop.time()
        due: list[Entry] = []
        while heap and heap[0][0] <= now:  # type: ignore[operator]  # floats
            entry = heapq.heappop(heap)
            if entry[2] is None:
                self._cancelled -= 1
            else:
                due.append(entry)
        # Only what was due when the timer fired: an entry a callback adds for a time already
        # past waits for the next round of the loop (as a loop timer would), so the callbacks
        # the loop has queued meanwhile run first (a connection whose deadline is past until
        # its connection_lost runs must not spin here).
        done = 0
        try:
            for entry in due:
                done += 1
                callback = entry[2]
                if callback is None:  # cancelled by an earlier callback of this round (and
                    self._cancelled -= 1  # counted there, though no longer in the heap)
                    continue
                entry[2] = None
                try:
                    callback()  # type: ignore[operator]  # a Callable, typed object in the list
                except Exception as exc:  # as the loop does with a failing timer: logged
                    self.loop.call_exception_handler(
                        {"message": "deadline callback failed", "exception": exc}
                    )
        finally:
            for entry in due[done:]:  # not run (a BaseException): back in the heap
                heapq.heappush(heap, entry)
            while heap and heap[0][2] is None:  # leave no emptied entry at the top
                heapq.heappop(heap)
                self._cancelled -= 1
            self._timer_at = float("inf")
            if heap:
                self._arm(heap[0][0])  # type: ignore[arg-type]  # a float

    def _sweep(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2] is not None]
        heapq.heapify(self._heap)
        self._cancelled = 0
        if not self._heap and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = float("inf")
