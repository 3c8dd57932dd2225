"""deadlines.py: one loop timer for many connections' deadlines, on a real event loop (every
wait ends on a callback's own signal, a future it sets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from honeytrap import eventloop
from honeytrap.config import Config
from honeytrap.deadlines import SHARED_TIMES, SWEEP_MIN, Deadlines

# Far enough apart that the order of the loop's clock cannot be mistaken.
STEP = 0.005


def run(body: Callable[[], Awaitable[None]]) -> None:
    """body() on each loop the server processes may run on."""
    for name in ("asyncio", "uvloop"):
        if eventloop.available(name):
            with asyncio.Runner(loop_factory=eventloop.factory(Config(event_loop=name))) as runner:
                runner.run(body())


def test_callbacks_run_in_time_order_never_early() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        ran: list[tuple[str, float, float]] = []
        last = loop.create_future()
        start = loop.time()
        for name, offset in (("c", 3), ("a", 1), ("b", 2)):
            when = start + offset * STEP

            def callback(name: str = name, when: float = when) -> None:
                ran.append((name, when, loop.time()))
                if name == "c":
                    last.set_result(None)

            deadlines.at(when, callback)
        assert len(deadlines) == 3
        await asyncio.wait_for(last, 5)
        assert [name for name, _, _ in ran] == ["a", "b", "c"]
        # The loop's own timers may fire a hair early (uvloop rounds to the millisecond); an
        # entry runs only once its time has come by the loop's clock.
        assert all(at >= when for _, when, at in ran)
        assert len(deadlines) == 0

    run(body)


def test_a_cancelled_entry_never_runs_and_holds_nothing() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        ran: list[str] = []
        last = loop.create_future()
        start = loop.time()
        early = deadlines.at(start + STEP, lambda: ran.append("cancelled"))
        deadlines.at(start + 2 * STEP, lambda: last.set_result(ran.append("kept")))
        deadlines.cancel(early)
        deadlines.cancel(early)  # twice: no harm
        assert early[2] is None  # the connection's callback is no longer referenced
        assert len(deadlines) == 1
        await asyncio.wait_for(last, 5)
        assert ran == ["kept"]

    run(body)


def test_an_earlier_entry_rearms_the_timer() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        ran: list[str] = []
        first = loop.create_future()
        start = loop.time()
        deadlines.at(start + 60, lambda: ran.append("late"))
        deadlines.at(start + STEP, lambda: first.set_result(ran.append("early")))
        await asyncio.wait_for(first, 5)  # not 60 s: the timer moved to the earlier entry
        assert ran == ["early"]

    run(body)


def test_entries_added_and_cancelled_by_callbacks() -> None:
    """A callback re-arming for a time already past runs on the next round of the loop, after
    what the loop queued meanwhile (a connection past its deadline until its connection_lost
    runs must not spin in one round); a callback cancelling a later entry of the same round
    keeps it from running."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        ran: list[str] = []
        done = loop.create_future()
        start = loop.time()

        def rearm() -> None:
            ran.append("first")
            loop.call_soon(ran.append, "queued by the loop")
            deadlines.at(loop.time() - 1, lambda: done.set_result(ran.append("again")))
            deadlines.cancel(victim)

        deadlines.at(start + STEP, rearm)
        victim = deadlines.at(start + STEP, lambda: ran.append("victim"))
        await asyncio.wait_for(done, 5)
        assert ran == ["first", "queued by the loop", "again"]
        assert len(deadlines) == 0

    run(body)


def test_a_failing_callback_is_reported_and_the_others_run() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        ran = loop.create_future()
        later = loop.create_future()
        start = loop.time()

        def fail() -> None:
            raise RuntimeError("a bug")

        deadlines.at(start + STEP, fail)
        deadlines.at(start + STEP, lambda: ran.set_result(None))
        deadlines.at(start + 2 * STEP, lambda: later.set_result(None))
        await asyncio.wait_for(asyncio.gather(ran, later), 5)
        assert [type(e["exception"]) for e in errors] == [RuntimeError]

    run(body)


def test_cancelled_entries_are_swept() -> None:
    """Deadlines that keep moving leave emptied entries; they do not pile up."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        far = loop.time() + 3600
        keep = [deadlines.at(far + i, lambda: None) for i in range(10)]
        for i in range(SWEEP_MIN * 4):
            deadlines.cancel(deadlines.at(far + i, lambda: None))
        assert len(deadlines) == len(keep)
        assert len(deadlines._heap) <= 2 * (SWEEP_MIN + 1) + len(keep)
        for entry in keep:
            deadlines.cancel(entry)
        assert len(deadlines) == 0

    run(body)


def test_equal_times_share_one_float_and_the_memo_stays_bounded() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        base = loop.time() + 3600.0
        first = deadlines.at(base + 1.0, lambda: None)
        again = deadlines.at(float(str(base + 1.0)), lambda: None)  # equal, another object
        assert again[0] == first[0] and again[0] is first[0]
        for n in range(SHARED_TIMES * 3):
            deadlines.cancel(deadlines.at(base + 2.0 + n, lambda: None))
        assert len(deadlines._times) <= SHARED_TIMES
        deadlines.cancel(first)
        deadlines.cancel(again)

    run(body)
