"""The sensor-wide UDP reply bucket (sensorbudget.py) shared by real forked processes: together
they never take more than the bucket holds plus its refill, a lock held by a live process
refuses at once instead of blocking, and a lock left by a dead one is released by forget()."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

import pytest

from honeytrap.reflector import LocalBucket, ReflectorGuard
from honeytrap.sensorbudget import LOCK_WAIT, SharedBucket

CHILDREN = 4
# A child stops after this many refusals of an empty bucket (not of a busy lock) ...
EMPTY_REFUSALS = 50
# ... or this many attempts, whichever comes first (every loop here is bounded).
MAX_ATTEMPTS = 40_000
SHARED_TOKENS = 20_000
CHILD_TIMEOUT = 30.0


def fork_all(work: Callable[[], int], count: int = CHILDREN) -> list[int]:
    """Run `work` in `count` forked children at once; their results (each a count) in a list."""
    children: list[tuple[int, int]] = []
    go_r, go_w = os.pipe()
    for _ in range(count):
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                os.close(result_r)
                os.close(go_w)
                os.read(go_r, 1)  # all start together, once every one is forked
                os.write(result_w, str(work()).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(result_w)
        children.append((pid, result_r))
    os.close(go_r)
    os.write(go_w, b"g" * count)
    os.close(go_w)
    results = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    for pid, result_r in children:
        ready, _, _ = select.select([result_r], [], [], max(0.0, deadline - time.monotonic()))
        data = os.read(result_r, 64) if ready else b""
        os.close(result_r)
        if not ready:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        assert ready and os.waitstatus_to_exitcode(status) == 0, "child failed or hung"
        results.append(int(data))
    return results


def test_forked_processes_share_one_bucket() -> None:
    """No refill (one instant): four processes together take exactly what the bucket holds,
    taking at the same time (a bucket big enough that none empties it alone at once)."""
    bucket = SharedBucket(SHARED_TOKENS, now=10.0)

    def take_until_empty() -> int:
        taken = refused = 0
        for _ in range(MAX_ATTEMPTS):
            contended = bucket.contended
            if bucket.take(10.0):
                taken += 1
            elif bucket.contended == contended:
                refused += 1
                if refused >= EMPTY_REFUSALS:
                    break
        return taken

    results = fork_all(take_until_empty)
    print(f"shared bucket of {SHARED_TOKENS}: children took {results}")
    assert sum(results) == SHARED_TOKENS
    assert len([n for n in results if n]) >= 2
    assert bucket.tokens() < 1  # the parent sees what the children spent


def test_forked_processes_stay_within_rate_and_burst() -> None:
    """On the real clock, over ~0.5 s: at most the burst plus the refill, in all."""
    rate = 200
    bucket = SharedBucket(rate, now=time.monotonic())
    began = time.monotonic()

    def take_for_half_a_second() -> int:
        taken = 0
        end = time.monotonic() + 0.5
        for _ in range(MAX_ATTEMPTS * 2):
            now = time.monotonic()
            if now >= end:
                break
            taken += bucket.take(now)
        return taken

    results = fork_all(take_for_half_a_second)
    elapsed = time.monotonic() - began
    print(f"rate {rate}/s over {elapsed:.2f} s: children took {results}")
    assert sum(results) <= rate + rate * elapsed
    assert sum(results) >= rate  # the burst at least: the bucket was full and shared


def test_a_held_lock_refuses_within_the_wait_not_blocks() -> None:
    bucket = SharedBucket(10, now=1.0)
    assert bucket._lock.acquire(timeout=1)
    try:
        began = time.monotonic()
        assert not bucket.take(1.0)
        assert time.monotonic() - began < LOCK_WAIT + 0.5
        assert bucket.contended == 1
    finally:
        bucket._lock.release()
    assert bucket.take(1.0)


def test_a_lock_left_by_a_dead_process_is_released_by_forget() -> None:
    bucket = SharedBucket(10, now=1.0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child dies holding the lock, as if killed
        bucket._lock.acquire()
        from honeytrap.sensorbudget import LAYOUT
        LAYOUT.pack_into(bucket._map, 0, 10.0, 1.0, os.getpid())
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not bucket.take(1.0)  # the lock is held by nobody alive
    assert not bucket.forget(pid + 1)  # not that one's
    assert bucket.forget(pid)
    assert bucket.take(1.0)
    assert not bucket.forget(pid)  # once only


def test_a_clock_read_before_anothers_never_empties_the_bucket() -> None:
    bucket = SharedBucket(10, now=5.0)
    assert bucket.take(5.0)
    assert bucket.take(4.0)  # a process whose clock read came first: no negative refill
    assert bucket.tokens() == pytest.approx(8.0)


@pytest.mark.parametrize("make", [SharedBucket, LocalBucket])
def test_the_guard_spends_the_given_sensor_bucket(
    make: Callable[[int, float], SharedBucket | LocalBucket]
) -> None:
    """Two guards (two processes' ports) on one bucket of 15: 15 replies in all, not 30."""
    bucket = make(15, 100.0)
    guards = [ReflectorGuard(per_source=10, per_sensor=15, clock=lambda: 100.0, sensor=bucket)
              for _ in range(2)]
    sources = [f"198.51.100.{n}" for n in range(4)]
    for guard in guards:
        for source in sources:
            guard.received(source, 1000)
    sent = sum(guard.allow(s, 1) is not None for guard in guards for s in sources
               for _ in range(10))
    assert sent == 15
    assert sum(g.counters.udp_replies_refused for g in guards) == 2 * 4 * 10 - 15
