from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from daemon import DIALOGUE_READ_TIMEOUT, Honeytrap, nfq_rules  # noqa: E402
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


def _stopped(daemon: Honeytrap) -> None:
    """Stopped, or its notify socket closed, whatever the test did."""
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.stop()
    if daemon.notify is not None:
        daemon.notify.close()


@pytest.fixture
def ht(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    """The daemon (servers as nobody) behind the NFQUEUE rules, not started yet."""
    nfq_rules(lab.sensor)
    daemon = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"])
    yield daemon
    _stopped(daemon)


@pytest.fixture
def dialogue_sensor(
    lab: Lab, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Honeytrap]:
    """The dialogue tests' daemon (test_dialogue_daemon*.py) behind the NFQUEUE rules, not
    started yet: servers as nobody, a 10 s listen timeout, the test module's READ_TIMEOUT as -r
    (DIALOGUE_READ_TIMEOUT without one), the sensor's certificate under tmp_path/state."""
    nfq_rules(lab.sensor)
    read_timeout = getattr(request.module, "READ_TIMEOUT", DIALOGUE_READ_TIMEOUT)
    daemon = Honeytrap(lab, tmp_path / "ht", extra_config=f'state_dir = "{tmp_path / "state"}"',
                       args=["-u", "nobody", "-g", "nogroup", "-l", "10", "-r", str(read_timeout)])
    yield daemon
    _stopped(daemon)
