"""The master runs at master_nice (it decides every SYN the kernel holds for it); its children,
the recorder and the server processes, at the priority the daemon was started with
(honeytrap/priority.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Honeytrap, nfq_rules
from netns import Lab

from honeytrap.priority import DEFAULT_MASTER_NICE

STARTED_AT = 3  # the daemon is started under `nice -n 3`: what its children must get back


def nice_of(pid: int) -> int:
    """proc(5) stat field 19."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.fixture
def niced(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"],
                   prefix=["nice", "-n", str(STARTED_AT)])
    yield ht
    if ht.proc is not None and ht.proc.poll() is None:
        ht.stop()


@pytest.mark.parametrize(("config", "master"), [("", DEFAULT_MASTER_NICE),
                                                 ('master_nice = "7"', 7)])
def test_the_master_runs_at_master_nice_and_its_children_as_started(
    niced: Honeytrap, config: str, master: int
) -> None:
    niced.extra_config = config
    niced.start()  # ready: the recorder and every spare are forked
    children = niced.recorders() + niced.spares()
    assert len(children) >= 2
    assert nice_of(niced.master_pid()) == master
    assert [nice_of(pid) for pid in children] == [STARTED_AT] * len(children)
    assert niced.stop() == 0
