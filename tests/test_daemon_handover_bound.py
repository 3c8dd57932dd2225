"""The master's descriptors held in handovers not yet delivered are bounded (handovers.py), on
the real daemon: under a descriptor limit of NOFILE (prlimit), the two server processes that
take a run of fresh ports are stopped (SIGSTOP: a starved process reads nothing), so each bound
socket past what their socketpairs' buffers take stays one of the master's descriptors. Past
the bound a new port is refused before it is bound (the SYN let through: the kernel resets it)
and counted as refused_handovers, never a failed bind; the master stays under its limit; once
the processes read again the queues drain and a fresh port is served again."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Honeytrap, metrics, nfq_rules
from netns import Lab, inside

METRICS_PORT = 9118  # on the sensor namespace's loopback
NOFILE = 1100  # the daemon's RLIMIT_NOFILE (soft and hard): its processes' too
FIRST_PORT = 33000  # fresh ports: no template, no real service
PORTS = 1500  # more than the first process has room for (NOFILE less its reserve) and more
# than the two stopped processes' socket buffers and the master's bound take together
SECOND_SPARE_AFTER = 400  # by then the first process is down to its spare headroom
WAIT = 30.0  # every bounded wait on the daemon's own state


@pytest.fixture
def sensor(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    ht = Honeytrap(
        lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"],
        extra_config=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"',
        prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"],
    )
    yield ht
    if ht.proc is not None and ht.proc.poll() is None:
        for pid in ht.spares() + ht.children():  # never leave one stopped behind a failure
            _signal(pid, signal.SIGCONT)
        ht.stop()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def figures(lab: Lab) -> dict[str, float]:
    return {
        name.removeprefix("honeytrap_").removesuffix("_total"): value
        for name, value in metrics(lab, METRICS_PORT).items()
    }


def wait_for(what: str, done: object) -> object:
    """Poll (bounded) until `done()` is truthy; its value."""
    deadline = time.monotonic() + WAIT
    while not (got := done()):  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {WAIT} s")
        time.sleep(0.02)
    return got


def connect(lab: Lab, port: int) -> bool:
    """Connect and close: True once the master bound the port (the kernel's backlog holds it),
    False on a reset (refused)."""
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(10)
        try:
            sock.connect((lab.sensor.ip4, port))
        except ConnectionRefusedError:
            return False
        return True


def master_fds(ht: Honeytrap) -> int:
    return len(os.listdir(f"/proc/{ht.master_pid()}/fd"))


@pytest.mark.slow
def test_handovers_past_the_masters_bound_are_refused_before_binding(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.start()
    [first] = wait_for("a spare", sensor.spares)  # type: ignore[misc]
    _signal(first, signal.SIGSTOP)
    stopped = [first]
    refused: list[int] = []
    most_fds = 0
    try:
        for n, port in enumerate(range(FIRST_PORT, FIRST_PORT + PORTS)):
            if n == SECOND_SPARE_AFTER:  # forked ahead; stopped before it takes a port
                [second] = wait_for(  # type: ignore[misc]
                    "a second spare", lambda: [p for p in sensor.spares() if p != first][:1])
                _signal(second, signal.SIGSTOP)
                stopped.append(second)
            if not connect(lab, port):
                refused.append(port)
            if n % 100 == 0:
                most_fds = max(most_fds, master_fds(sensor))
        most_fds = max(most_fds, master_fds(sensor))
        held = figures(lab)
    finally:
        for pid in stopped:
            _signal(pid, signal.SIGCONT)

    assert held.get("refused_handovers", 0) >= len(refused) > 0, (len(refused), held)
    assert held["servers_started"] + len(refused) == PORTS, held  # each port one or the other
    for name in ("bind_failures", "handover_failures", "fork_failures", "server_crashes"):
        assert held.get(name, 0) == 0, (name, held)
    assert most_fds < NOFILE, most_fds
    assert refused[0] > FIRST_PORT + SECOND_SPARE_AFTER  # the first process's queue alone fit

    # The processes read again: the queues drain, and a fresh port is served again.
    wait_for("drained", lambda: figures(lab)["control_queued"] == 0)
    assert connect(lab, FIRST_PORT + PORTS)
    after = figures(lab)
    assert after.get("refused_handovers", 0) == held.get("refused_handovers", 0)
    assert sensor.stop() == 0
