"""The sensor-wide bound on unacknowledged attacks (unacknowledged_limit, honeytrap/unacked.py) on
the real daemon: its recorder is stopped (SIGSTOP) while attacks come to several ports, each
served by a server process of its own (ports_per_process 1). Together the processes hold no more
than the limit (and each at most one attack and PUBLISH_BYTES past it), every one of them holds
back new connections, logs it and counts it (held_back); the connections made meanwhile wait in
the kernel's backlog. Once the recorder goes on (SIGCONT), they accept again and every attack is
recorded exactly once."""

from __future__ import annotations

import collections
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import (
    Honeytrap,
    nfq_rules,
    signal_quietly,
    statistics,
    stop_resumed,
    wait_statistics,
)
from netns import Lab, inside

from honeytrap import unacked

METRICS_PORT = 9118  # on the sensor namespace's loopback
FIRST_PORT = 32100  # fresh ports: no template, no real service
PORTS = 4  # a server process each
LIMIT = 1024 * 1024  # unacknowledged_limit: the smallest allowed
PAYLOAD = 64 * 1024  # bytes per attack: a frame publishes the process's share at once
ATTACKS = 64  # 4 MiB in all: four times the limit
# What a frame adds to its payload (the attack's fields, wire.py): generous.
FRAME_OVERHEAD = 4096
WAIT = 30.0  # every bounded wait on the daemon's own state
# -l: a port without connections expires after this long; one held back must not (its stop
# would take its backlog in at once, past the limit).
LISTEN_TIMEOUT = 2


@pytest.fixture
def sensor(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    ht = Honeytrap(
        lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup", "-l", str(LISTEN_TIMEOUT)],
        extra_config=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"\nports_per_process = "1"\n'
                     f'unacknowledged_limit = "{LIMIT}"',
    )
    yield ht
    stop_resumed(ht)


def figures(lab: Lab) -> dict[str, float]:
    return statistics(lab, METRICS_PORT)


def wait_figures(lab: Lab, done: Callable[[dict[str, float]], bool],
                 what: str) -> dict[str, float]:
    return wait_statistics(lab, METRICS_PORT, done, what, WAIT)


def attack(lab: Lab, port: int, number: int) -> None:
    """One attack: its number, then padding to PAYLOAD bytes, and the connection closed (the
    kernel completes it and holds the bytes whether or not the server accepted it)."""
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(10)
        sock.connect((lab.sensor.ip4, port))
        marker = f"attack {number:05d} ".encode()
        sock.sendall(marker + b"x" * (PAYLOAD - len(marker)))


def numbers(records: list[dict[str, object]]) -> list[int]:
    found = []
    for record in records:
        conn = record["attack_connection"]
        assert isinstance(conn, dict)
        data = bytes.fromhex(conn["payload"]["data_hex"])
        found.append(int(data.split(b" ", 2)[1]))
    return found


@pytest.mark.slow
def test_a_stopped_recorder_holds_the_whole_sensor_to_the_limit_and_loses_nothing(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.start()
    ports = [FIRST_PORT + n for n in range(PORTS)]
    for number, port in enumerate(ports):  # a server process for each port, all linked
        attack(lab, port, number)
    assert len(sensor.wait_records(PORTS, timeout=WAIT)) == PORTS
    [recorder] = sensor.recorders()

    signal_quietly(recorder, signal.SIGSTOP)
    try:
        # One attack at a time per process (the next one waits until the last was taken, or
        # its process is known to hold back), so that none had two open when it held back.
        held_ports: set[int] = set()
        for number in range(PORTS, PORTS + ATTACKS):
            port = ports[number % PORTS]
            before = figures(lab)
            attack(lab, port, number)
            if port in held_ports:
                continue
            total = before["unacknowledged_bytes"]
            taken = wait_figures(lab, lambda got, t=total: got["unacknowledged_bytes"] > t,
                                 f"attack {number} taken")
            if taken["unacknowledged_bytes"] > LIMIT:  # it held back (the figures lag ~1 s)
                holds = before.get("held_back", 0)
                wait_figures(lab, lambda got, h=holds: got.get("held_back", 0) > h,
                             f"port {port} holding back")
                held_ports.add(port)
        assert held_ports == set(ports)
        # None accepts more until the recorder catches up: held back for longer than the
        # listen timeout (the behaviour is about time passing: nothing to wait on but the
        # clock), no port expired (a port may have expired before, idle while the others were
        # attacked, not held back yet: its next attack went to another process) and nothing
        # more was taken.
        held = wait_figures(lab, lambda got: got.get("held_back", 0) >= PORTS,
                            "every server process held back")
        time.sleep(LISTEN_TIMEOUT + 1)
        later = figures(lab)
        assert later["servers_expired"] == held["servers_expired"]
        assert later["unacknowledged_bytes"] == held["unacknowledged_bytes"]
        # The sensor's total, not each process's: one attack past the limit at most in each
        # process that held back (each process alone bounded by the limit would hold four
        # times it). Frames past PUBLISH_BYTES are published at once.
        holds = later["held_back"]
        assert PAYLOAD >= unacked.PUBLISH_BYTES
        assert LIMIT < later["unacknowledged_bytes"] <= LIMIT + holds * (PAYLOAD + FRAME_OVERHEAD)
        assert later["connections"] < PORTS + ATTACKS  # the rest waits in the kernel's backlog
        assert later["unacknowledged"] == later["connections"] - PORTS
        assert sensor.logfile.read_text().count("the recorder is behind") == holds
    finally:
        signal_quietly(recorder, signal.SIGCONT)

    # Accepting again: every connection made meanwhile is served and recorded, each once.
    records = sensor.wait_records(PORTS + ATTACKS, timeout=WAIT)
    counts = collections.Counter(numbers(records))
    assert sorted(counts) == list(range(PORTS + ATTACKS))
    assert set(counts.values()) == {1}
    done = wait_figures(lab, lambda got: got["unacknowledged"] == 0
                        and got["unacknowledged_bytes"] == 0, "everything acknowledged")
    assert done["connections"] == PORTS + ATTACKS
    # The backlogs taken at once may pass the limit again (they hold four times it): each hold
    # logged; the processes still serving then caught up (one whose port expired meanwhile may
    # have exited first, everything of it acknowledged, while the sensor was still full).
    log = sensor.logfile.read_text()
    assert done["held_back"] >= PORTS
    assert log.count("the recorder is behind") == done["held_back"]
    assert 1 <= log.count("the recorder caught up") <= done["held_back"]
    # A new connection is taken at once.
    attack(lab, ports[0], PORTS + ATTACKS)
    assert len(sensor.wait_records(PORTS + ATTACKS + 1, timeout=WAIT)) == PORTS + ATTACKS + 1
    assert sensor.stop() == 0
