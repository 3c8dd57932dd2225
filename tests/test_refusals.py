"""The master's rate-limited refusal lines (honeytrap/refusals.py): one line per kind and
interval, carrying the count since the kind's last line."""

from __future__ import annotations

import logging

import pytest

from honeytrap.refusals import REFUSAL_LOG_INTERVAL, RefusalLog


def test_one_line_per_kind_and_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        for port in range(5):
            refusals.note(logging.WARNING, "rate", "refused %d", port)
        refusals.note(logging.ERROR, "bind", "cannot bind %d", 9)
        now[0] += REFUSAL_LOG_INTERVAL
        refusals.note(logging.WARNING, "rate", "refused %d", 7)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "refused 0; 1 since the last report"),
        (logging.ERROR, "cannot bind 9; 1 since the last report"),
        (logging.WARNING, "refused 7; 5 since the last report"),
    ]
