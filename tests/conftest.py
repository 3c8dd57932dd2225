from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from daemon import Honeytrap, nfq_rules  # noqa: E402
from netns import Lab  # noqa: E402


@pytest.fixture
def lab() -> Iterator[Lab]:
    """An attacker and a sensor namespace joined by a veth pair, removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the tests run as root: they create network namespaces")
    lab = Lab.create()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def ht(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    """The daemon (servers as nobody) behind the NFQUEUE rules; stopped, or its notify socket
    closed, whatever the test did."""
    nfq_rules(lab.sensor)
    daemon = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"])
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.stop()
    if daemon.notify is not None:
        daemon.notify.close()
