"""Capabilities (honeytrap.capabilities): the sets read from a /proc status text, which ports may
be bound, and the refusals' rate-limited log."""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Callable

import pytest

from honeytrap import capabilities as caps
from honeytrap import privileges
from honeytrap.errors import ConfigError

# /proc/<pid>/status of `setpriv --inh-caps +net_admin --ambient-caps +net_admin` as uid 2000.
STATUS = """Name:\tpython3
Uid:\t2000\t2000\t2000\t2000
CapInh:\t0000000000001000
CapPrm:\t0000000000001000
CapEff:\t0000000000001000
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000001000
NoNewPrivs:\t0
"""


def test_status_sets_and_names() -> None:
    sets = caps.parse_status(STATUS)
    assert sets["CapEff"] == 1 << caps.CAP_NET_ADMIN and sets["CapAmb"] == sets["CapEff"]
    assert caps.names(sets["CapEff"]) == ["CAP_NET_ADMIN"]
    assert not caps.has(caps.CAP_NET_RAW, sets["CapEff"])


@pytest.mark.parametrize(("mask", "port", "missing"), [
    (1 << caps.CAP_NET_ADMIN, 23, "CAP_NET_BIND_SERVICE"),
    (1 << caps.CAP_NET_ADMIN, 1023, "CAP_NET_BIND_SERVICE"),
    (1 << caps.CAP_NET_ADMIN, 1024, None),
    (1 << caps.CAP_NET_BIND_SERVICE, 23, None),
])
def test_ports_below_the_unprivileged_start_need_the_capability(
    mask: int, port: int, missing: str | None
) -> None:
    assert caps.PortPrivilege(mask, port_start=1024).missing_for(port) == missing


def test_a_lowered_unprivileged_start_opens_the_low_ports() -> None:
    assert caps.PortPrivilege(0, port_start=0).missing_for(23) is None


def test_refusals_are_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    refusals = caps.BindRefusals(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="honeytrap.capabilities"):
        for port in (23, 80, 443):
            refusals.refuse(port, "tcp", "CAP_NET_BIND_SERVICE")
        now[0] += caps.REFUSAL_LOG_INTERVAL
        refusals.refuse(25, "tcp", "CAP_NET_BIND_SERVICE")
    lines = [r.getMessage() for r in caplog.records]
    assert refusals.count == 4
    assert len(lines) == 2
    assert lines[0].startswith("not serving 23/tcp: binding it needs CAP_NET_BIND_SERVICE")
    assert "(3 refused since the last report)" in lines[1]  # 80, 443 and 25
    assert all("Permission denied" not in line for line in lines)


def _as_nobody(check: Callable[[], bool]) -> bool:
    """Run `check` in a child that became nobody:nogroup (no capability left); its verdict."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgroups([])
            os.setgid(grp.getgrnam("nogroup").gr_gid)
            os.setuid(pwd.getpwnam("nobody").pw_uid)
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_without_root_naming_yourself_changes_nothing() -> None:
    """-u/-g naming the user and group we already are: nothing to drop, nothing to check."""
    def check() -> bool:
        identity = privileges.resolve("nobody", "nogroup")
        privileges.check_can_become(identity)
        return identity.uid is None and identity.gid is None
    assert _as_nobody(check)


def test_without_root_another_user_needs_cap_setuid() -> None:
    def check() -> bool:
        try:
            privileges.check_can_become(privileges.resolve("root", "root"))
        except ConfigError as exc:
            return "without CAP_SETUID" in str(exc) and exc.key == "user"
        return False
    assert _as_nobody(check)
