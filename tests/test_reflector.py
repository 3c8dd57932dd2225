"""The UDP reflector guard (sans-IO, a fake clock): bytes out <= 2 x bytes in per source, at most
N replies per source and per sensor per second, refusals and cuts counted; fuzzed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.reflector import (
    DEFAULT_REPLIES_PER_SENSOR,
    DEFAULT_REPLIES_PER_SOURCE,
    REPLY_RATIO,
    ReflectorGuard,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_defaults_are_the_issues_bounds() -> None:
    assert (REPLY_RATIO, DEFAULT_REPLIES_PER_SOURCE) == (2, 10)
    assert DEFAULT_REPLIES_PER_SENSOR > DEFAULT_REPLIES_PER_SOURCE


def test_a_reply_within_twice_the_request_goes_whole() -> None:
    guard = ReflectorGuard(clock=Clock())
    guard.received("192.0.2.7", 200)
    assert guard.allow("192.0.2.7", 392) == 392


def test_a_reply_past_twice_the_request_is_cut_then_refused() -> None:
    guard = ReflectorGuard(clock=Clock())
    guard.received("192.0.2.7", 1)
    assert guard.allow("192.0.2.7", 392) == 2  # the issue's 1-byte probe: 2 bytes, not 392
    assert guard.allow("192.0.2.7", 392) is None  # nothing left
    assert guard.counters.udp_replies_cut == 1
    assert guard.counters.udp_replies_refused == 1


def test_a_source_never_heard_from_gets_nothing() -> None:
    guard = ReflectorGuard(clock=Clock())
    assert guard.allow("192.0.2.7", 10) is None
    assert guard.counters.udp_replies_refused == 1


def test_at_most_n_replies_per_source_per_second() -> None:
    clock = Clock()
    guard = ReflectorGuard(per_source=10, clock=clock)
    guard.received("192.0.2.7", 100_000)
    assert sum(guard.allow("192.0.2.7", 1) is not None for _ in range(50)) == 10
    assert guard.counters.udp_replies_refused == 40
    clock.now += 0.5
    assert sum(guard.allow("192.0.2.7", 1) is not None for _ in range(50)) == 5
    guard.received("192.0.2.8", 100)  # another source has its own budget
    assert guard.allow("192.0.2.8", 1) == 1


def test_at_most_n_replies_per_sensor_per_second() -> None:
    clock = Clock()
    guard = ReflectorGuard(per_source=10, per_sensor=25, clock=clock)
    sources = [f"198.51.100.{n}" for n in range(10)]
    for source in sources:
        guard.received(source, 1000)
    sent = sum(guard.allow(s, 1) is not None for _ in range(10) for s in sources)
    assert sent == 25
    clock.now += 1
    assert sum(guard.allow(s, 1) is not None for _ in range(10) for s in sources) == 25


def test_a_forgotten_source_starts_from_nothing_received() -> None:
    guard = ReflectorGuard(max_sources=2, clock=Clock())
    guard.received("a", 1000)
    guard.received("b", 1)
    guard.received("c", 1)  # "a" is the least recently seen: forgotten
    assert guard.allow("a", 10) is None


events = st.lists(
    st.tuples(st.sampled_from(["in", "out", "tick"]), st.sampled_from(["a", "b", "c"]),
              st.integers(0, 2000)),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_fuzz_bytes_out_never_exceed_twice_bytes_in(script: list[tuple[str, str, int]]) -> None:
    clock = Clock()
    guard = ReflectorGuard(per_source=10, per_sensor=20, max_sources=2, clock=clock)
    received = {"a": 0, "b": 0, "c": 0}
    sent = {"a": 0, "b": 0, "c": 0}
    replies: list[float] = []
    for kind, source, size in script:
        if kind == "in":
            guard.received(source, size)
            received[source] += size
        elif kind == "out":
            allowed = guard.allow(source, size)
            if allowed is not None:
                assert 0 <= allowed <= size
                sent[source] += allowed
                replies.append(clock.now)
        else:
            clock.now += size / 1000
        assert sent[source] <= REPLY_RATIO * received[source]
    for start in replies:  # in any second: at most the sensor's bucket plus its refill
        assert sum(start <= t < start + 1 for t in replies) <= 2 * 20
