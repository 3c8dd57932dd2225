"""The real daemon with ports_per_process = 1 (every UDP port in a process of its own) under a
UDP flood from many sources to several ports with templates: the replies of the whole sensor per
second stay within udp_replies_per_sensor (the bucket shared by the server processes,
sensorbudget.py), counted in the attacker namespace over a measured interval, and the refusals
are counted in the daemon's statistics; a reload that changes the key gives the processes started
after it the new budget."""

from __future__ import annotations

import select
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import REPO, Honeytrap, nfq_rules
from netns import Lab, inside

PORTS = (5060, 1900, 161, 123)  # each with a template, each in its own process
SOURCES = 20
PER_SENSOR = 40  # udp_replies_per_sensor: a tenth of what the per-source limits would allow
PER_SOURCE = 10  # udp_replies_per_source (its default): 20 x 4 x 10 = 800 replies/s allowed
FLOOD_SECONDS = 3.0
ROUND_PAUSE = 0.02  # between rounds (one datagram per source and port): ~4,000 datagrams/s
MAX_ROUNDS = 400  # the flood's bound, whatever the clock does
DRAIN_TIMEOUT = 0.5  # the attacker sockets are read this long after the last datagram
STATS_TIMEOUT = 15.0
SIGNAL_INTERVAL = 0.5


# As large as the largest template: the bytes rule (2x) never cuts, only the rates limit.
DATAGRAM = b"OPTIONS sip:x SIP/2.0\r\n" + b"p" * 400
RELOADED_PER_SENSOR = 5  # udp_replies_per_sensor after the reload test's SIGHUP


@pytest.fixture
def ht(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    daemon = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"])
    daemon.extra_config = config(PER_SENSOR)
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.stop()
    if daemon.notify is not None:
        daemon.notify.close()


def config(per_sensor: int) -> str:
    return (f'ports_per_process = "1"\nudp_replies_per_sensor = "{per_sensor}"\n'
            f'udp_replies_per_source = "{PER_SOURCE}"\n')


def sources(lab: Lab, first: int) -> list[socket.socket]:
    """SOURCES sockets on addresses of their own (each a forged source), fresh ports."""
    socks = []
    for n in range(SOURCES):
        host = lab.add_address(lab.attacker, first + n)
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((host.ip4, 0))
        sock.setblocking(False)
        socks.append(sock)
    return socks


def start_ports(lab: Lab, ht: Honeytrap, sock: socket.socket) -> None:
    """Every port started (one reply each) before a measured flood: then one process per port."""
    warm: Counter[tuple[int, int]] = Counter()
    for port in PORTS:
        sock.sendto(DATAGRAM, (lab.sensor.ip4, port))
    deadline = time.monotonic() + 20
    while len({port for _, port in warm}) < len(PORTS) and time.monotonic() < deadline:
        drain([sock], warm, 0.2)
    assert {port for _, port in warm} == set(PORTS)
    names = sorted(ht.server_names().values())
    assert names == sorted(f"ht-{port}/udp" for port in PORTS), names


def flood(lab: Lab, socks: list[socket.socket], seconds: float) -> tuple[Counter[int], int, float]:
    """Every source to every port, paced, for `seconds`: replies per port, datagrams sent, and
    the interval from the first datagram to the last reply."""
    replies: Counter[tuple[int, int]] = Counter()
    sent = 0
    last = 0.0
    began = time.monotonic()
    for _ in range(MAX_ROUNDS):
        if time.monotonic() - began >= seconds:
            break
        for sock in socks:
            for port in PORTS:
                sock.sendto(DATAGRAM, (lab.sensor.ip4, port))
                sent += 1
        last = drain(socks, replies, 0, last)
        time.sleep(ROUND_PAUSE)  # pacing the sender, not waiting for an event
    last = drain(socks, replies, DRAIN_TIMEOUT, last)
    return Counter(port for _, port in replies.elements()), sent, max(last, began) - began


def drain(socks: list[socket.socket], replies: Counter[tuple[int, int]], timeout: float,
          last: float = 0.0) -> float:
    """Read every reply waiting (or arriving within `timeout`); when the last one came (or
    `last`, if none did)."""
    while True:
        ready, _, _ = select.select(socks, [], [], timeout)
        if not ready:
            return last
        for sock in ready:
            while True:
                try:
                    _, (_, port) = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                replies[(socks.index(sock), port)] += 1
                last = time.monotonic()


def refused_count(ht: Honeytrap, at_least: int) -> int:
    """udp_replies_refused in the statistics SIGUSR1 logs, once it reaches `at_least` (server
    processes report their counters within a second of a change), or the last seen."""
    deadline = time.monotonic() + STATS_TIMEOUT
    refused = 0
    while refused < at_least and time.monotonic() < deadline:
        ht.signal(signal.SIGUSR1)
        time.sleep(SIGNAL_INTERVAL)
        lines = [line for line in ht.logfile.read_text(errors="replace").splitlines()
                 if "statistics: " in line]
        if lines:
            fields = dict(f.partition("=")[::2] for f in lines[-1].split("statistics: ")[1].split())
            refused = int(fields.get("udp_replies_refused", "0"))
    return refused


@pytest.mark.slow
def test_udp_replies_of_the_sensor_stay_within_its_budget_across_processes(
    lab: Lab, ht: Honeytrap
) -> None:
    for port in PORTS:
        assert (REPO / "templates" / f"{port}_udp").exists()
    ht.start()
    socks = sources(lab, 10)
    start_ports(lab, ht, socks[0])
    per_port, sent, interval = flood(lab, socks, FLOOD_SECONDS)
    total = sum(per_port.values())
    bound = PER_SENSOR + PER_SENSOR * interval  # the full bucket, then its refill
    print(f"UDP sensor budget {PER_SENSOR}/s, {len(PORTS)} processes, {SOURCES} sources: "
          f"{sent} datagrams, {total} replies over {interval:.2f} s "
          f"({total / max(interval, 0.001):.1f}/s, bound {bound:.0f}), per port {dict(per_port)}")
    assert total <= bound + 1  # + 1: the float refill's rounding at the boundary
    # The budget is spent (not everything refused), by more than one process.
    assert total >= PER_SENSOR
    assert len(per_port) >= 2
    refused = refused_count(ht, sent - total - len(PORTS))
    print(f"udp_replies_refused {refused}")
    # Every datagram not answered was refused (a veth and 1 MiB buffers lose few, if any).
    assert refused >= (sent - total) * 9 // 10
    for sock in socks:
        sock.close()
    assert ht.stop() == 0


@pytest.mark.slow
def test_a_reload_that_changes_the_sensor_budget_gives_new_processes_the_new_one(
    lab: Lab, ht: Honeytrap
) -> None:
    ht.start()
    before = sources(lab, 10)
    start_ports(lab, ht, before[0])
    ht.extra_config = config(RELOADED_PER_SENSOR)
    ht.write_config()
    ht.signal(signal.SIGHUP)
    ht.wait_for("RELOADING=1")
    ht.wait_for("READY=1")
    # The ports were retired with their processes: fresh sources (new flows, queued to the
    # master again) start them in new processes, forked with the new bucket.
    after = sources(lab, 10 + SOURCES)
    deadline = time.monotonic() + 20
    while ht.server_names() and time.monotonic() < deadline:  # the old ones gone
        time.sleep(0.05)
    start_ports(lab, ht, after[0])
    per_port, sent, interval = flood(lab, after, FLOOD_SECONDS / 2)
    total = sum(per_port.values())
    bound = RELOADED_PER_SENSOR + RELOADED_PER_SENSOR * interval
    old = PER_SENSOR * (1 + interval)
    print(f"after the reload to {RELOADED_PER_SENSOR}/s: {sent} datagrams, {total} replies over "
          f"{interval:.2f} s (bound {bound:.0f}, the old budget's {old:.0f})")
    assert 1 <= total <= bound + 1
    for sock in before + after:
        sock.close()
    assert ht.stop() == 0
