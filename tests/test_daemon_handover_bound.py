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
from daemon import Honeytrap, nfq_rules, signal_quietly, statistics, stop_resumed
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
    stop_resumed(ht)


def figures(lab: Lab) -> dict[str, float]:
    return statistics(lab, METRICS_PORT)


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
    signal_quietly(first, signal.SIGSTOP)
    stopped = [first]
    refused: list[int] = []
    most_fds = 0
    try:
        for n, port in enumerate(range(FIRST_PORT, FIRST_PORT + PORTS)):
            if n == SECOND_SPARE_AFTER:  # forked ahead; stopped before it takes a port
                [second] = wait_for(  # type: ignore[misc]
                    "a second spare", lambda: [p for p in sensor.spares() if p != first][:1])
                signal_quietly(second, signal.SIGSTOP)
                stopped.append(second)
            if not connect(lab, port):
                refused.append(port)
            if n % 100 == 0:
                most_fds = max(most_fds, master_fds(sensor))
        most_fds = max(most_fds, master_fds(sensor))
        held = figures(lab)
    finally:
        for pid in stopped:
            signal_quietly(pid, signal.SIGCONT)

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


SWEEP_FIRST = 35000
SWEEP_PORTS = 500  # more than the stopped process's socketpair buffer takes (about 280 serves)
SWEEP_MAX_SERVERS = 100  # the sweep evicts all but the last ones, their serves still queued
# SYN/s: a port is evicted SWEEP_MAX_SERVERS SYNs after its own, past handovers.DROP_AFTER
SWEEP_RATE = 60


def listening(lab: Lab) -> set[int]:
    """The sweep's ports with a listening TCP socket in the sensor namespace (held by a process,
    or by the master, or in flight to a process)."""
    found = set()
    for line in lab.sensor.cmd("ss", "-Htln").splitlines():
        port = int(line.split()[3].rsplit(":", 1)[1])
        if SWEEP_FIRST <= port < SWEEP_FIRST + SWEEP_PORTS:
            found.add(port)
    return found


@pytest.fixture
def sweep_sensor(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    ht = Honeytrap(
        lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"],
        extra_config=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"\n'
                     f'max_servers = "{SWEEP_MAX_SERVERS}"',
    )
    yield ht
    if ht.proc is not None and ht.proc.poll() is None:
        for pid in ht.spares() + ht.children():
            signal_quietly(pid, signal.SIGCONT)
        ht.stop()


@pytest.mark.slow
def test_a_port_evicted_before_its_serve_left_the_master_is_closed_at_once(
    lab: Lab, sweep_sensor: Honeytrap
) -> None:
    """A SYN sweep (nmap -sS: no connection completes) while the process taking its ports reads
    nothing: the ports evicted while their serve still waited in the master's queue are closed
    there at once (none of them listens any more), no stop is queued for them; once the process
    reads again exactly the served ports listen."""
    ht = sweep_sensor
    ht.start()
    [spare] = wait_for("a spare", ht.spares)  # type: ignore[misc]
    signal_quietly(spare, signal.SIGSTOP)
    try:
        last = SWEEP_FIRST + SWEEP_PORTS - 1
        lab.attacker.cmd("nmap", "-sS", "-n", "-Pn", "-r", f"-p{SWEEP_FIRST}-{last}",  # in order
                         "--max-retries", "0", "--min-rate", str(SWEEP_RATE), "--max-rate",
                         str(SWEEP_RATE), "-oG", "-", lab.sensor.ip4)
        stopped = figures(lab)
        held = listening(lab)
    finally:
        signal_quietly(spare, signal.SIGCONT)
    assert stopped["servers_evicted"] == stopped["servers_started"] - SWEEP_MAX_SERVERS > 0
    served = set(range(last - SWEEP_MAX_SERVERS + 1, last + 1))  # least recently used go first
    evicted_listening = held - served
    # Those the process was sent (its socketpair's buffer) still listen until it reads its
    # stops; the rest were never sent, and went at once.
    assert served <= held
    assert 0 < len(evicted_listening) < SWEEP_PORTS - SWEEP_MAX_SERVERS, len(evicted_listening)
    assert evicted_listening == set(range(SWEEP_FIRST, SWEEP_FIRST + len(evicted_listening)))
    # Once it reads, the evicted ones it had are released: exactly the served ones listen.
    wait_for("released", lambda: listening(lab) == served)
    settled = figures(lab)
    assert settled["control_queued"] == 0 and settled["servers_running"] == SWEEP_MAX_SERVERS
    assert settled.get("server_crashes", 0) == 0
    assert ht.stop() == 0
