"""The sensor-wide bound on unacknowledged attacks (honeytrap/unacked.py), without a daemon: the
shared total across forked processes, a dead process's share taken back (also when it died
holding the lock), and a process's hold-back decisions."""

from __future__ import annotations

import os
import signal

from honeytrap import unacked
from honeytrap.unacked import Holdback, PrivateShare, UnackedBudget

LIMIT = 1024 * 1024


def in_child(body: object) -> int:
    """Run `body()` in a forked child; its pid, once it exited with status 0."""
    pid = os.fork()
    if pid == 0:
        try:
            body()  # type: ignore[operator]
        finally:
            os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid


def test_what_forked_processes_add_is_one_total_for_the_master() -> None:
    budget = UnackedBudget(LIMIT, slots=4)
    first, second = budget.share(), budget.share()
    assert first is not None and second is not None and first.slot != second.slot
    in_child(lambda: first.add(300))
    in_child(lambda: second.add(500))
    assert budget.total() == 800
    assert first.add(-100) == (700, LIMIT)


def test_a_reaped_process_share_is_taken_back_and_its_slot_reused() -> None:
    budget = UnackedBudget(LIMIT, slots=2)
    first, second = budget.share(), budget.share()
    assert first is not None and second is not None
    assert budget.share() is None  # every slot taken: the next process bounds itself alone
    pid = in_child(lambda: first.add(4000))
    second.add(1000)
    budget.release(first, pid)
    assert budget.total() == 1000
    again = budget.share()
    assert again is not None and again.slot == first.slot
    assert again.add(0) == (1000, LIMIT)  # its slot starts empty


def test_a_process_killed_holding_the_lock_leaves_the_total_right_and_the_lock_free() -> None:
    budget = UnackedBudget(LIMIT, slots=2)
    dying, living = budget.share(), budget.share()
    assert dying is not None and living is not None
    living.add(2000)
    dying.add(3000)

    def die_holding_it() -> None:
        assert dying._lock.acquire(timeout=1)
        unacked.WORD.pack_into(dying._map, unacked.HOLDER, os.getpid())
        unacked.WORD.pack_into(dying._map, dying.offset, 3500)  # its slot, not yet the total
        os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:
        die_holding_it()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    assert living.add(0) is None  # the lock is still held by the dead one
    budget.release(dying, pid)
    assert living.add(0) == (2000, LIMIT)  # summed again from the slots, the lock free


def test_a_process_holds_back_past_the_limit_and_accepts_again_at_the_low_mark() -> None:
    calls: list[bool] = []
    hold = Holdback(PrivateShare(LIMIT), calls.append)
    hold.added(LIMIT)
    assert calls == [] and not hold.full  # at the limit, not past it
    hold.added(unacked.PUBLISH_BYTES)
    assert calls == [True] and hold.full and hold.holds == 1
    hold.acked(LIMIT // 2)
    assert calls == [True]  # still above half the limit
    hold.acked(unacked.PUBLISH_BYTES)
    assert calls == [True, False] and not hold.full
    hold.added(LIMIT)
    assert calls == [True, False, True] and hold.holds == 2


def test_small_frames_are_published_in_batches_of_publish_bytes() -> None:
    budget = UnackedBudget(LIMIT, slots=1)
    share = budget.share()
    assert share is not None
    hold = Holdback(share, lambda full: None)
    hold.added(100)
    assert budget.total() == 0  # not yet: with the next send (publish) or PUBLISH_BYTES
    hold.publish()
    assert budget.total() == 100
    for _frame in range(unacked.PUBLISH_BYTES // 1000 + 1):
        hold.added(1000)
    assert budget.total() >= unacked.PUBLISH_BYTES


def test_a_new_limit_applies_to_the_processes_already_forked() -> None:
    budget = UnackedBudget(LIMIT, slots=1)
    share = budget.share()
    assert share is not None
    calls: list[bool] = []
    hold = Holdback(share, calls.append)
    hold.added(LIMIT // 2 + unacked.PUBLISH_BYTES)
    assert calls == []
    budget.set_limit(LIMIT // 2)
    hold.publish()
    hold.added(unacked.PUBLISH_BYTES)
    assert calls == [True]
