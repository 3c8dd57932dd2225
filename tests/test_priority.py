"""The master runs under SCHED_RR (master_realtime) at master_nice: it decides every SYN the
kernel holds for it; its children, the recorder and the server processes, under the normal policy
at the nice value the daemon was started with (honeytrap/priority.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Honeytrap, nfq_rules
from netns import Lab

from honeytrap.config import DEFAULT_PORTS_PER_PROCESS
from honeytrap.limits import spares_at_rest
from honeytrap.priority import DEFAULT_MASTER_NICE, REALTIME_PRIORITY

STARTED_AT = 3  # the daemon is started under `nice -n 3`: what its children must get back
NAMED_WAIT = 10.0  # seconds for a forked child to name itself (milliseconds, loaded)


def scheduling(pid: int) -> tuple[int, int, int]:
    """(policy, real-time priority, nice): proc(5) stat fields 41, 40 and 19."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[38]), int(fields[37]), int(fields[16])


@pytest.fixture
def niced(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"],
                   prefix=["nice", "-n", str(STARTED_AT)])
    yield ht
    if ht.proc is not None and ht.proc.poll() is None:
        ht.stop()


@pytest.mark.parametrize(
    ("config", "master"),
    [("", (os.SCHED_RR, REALTIME_PRIORITY, DEFAULT_MASTER_NICE)),
     ('master_realtime = "no"\nmaster_nice = "7"', (os.SCHED_OTHER, 0, 7))],
)
def test_the_master_runs_as_configured_and_its_children_as_started(
    niced: Honeytrap, config: str, master: tuple[int, int, int]
) -> None:
    niced.extra_config = config
    niced.start()  # ready: the recorder and every spare are forked
    # Each takes its name after its scheduling is set back (forked.fork_child): named, set.
    deadline = time.monotonic() + NAMED_WAIT
    while (len(children := niced.recorders() + niced.spares())
           < 1 + spares_at_rest(DEFAULT_PORTS_PER_PROCESS)):
        assert time.monotonic() < deadline, "the recorder and the spares never took their names"
        time.sleep(0.02)
    assert scheduling(niced.master_pid()) == master
    assert [scheduling(pid) for pid in children] == [(os.SCHED_OTHER, 0, STARTED_AT)] * len(
        children)
    assert niced.stop() == 0
