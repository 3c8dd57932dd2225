from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

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
