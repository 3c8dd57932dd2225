"""The real daemon with ports_per_process = 1 (every UDP port in a process of its own) under a
UDP flood from many sources to several ports with templates: the replies of the whole sensor per
second stay within udp_replies_per_sensor (the bucket shared by the server processes,
sensorbudget.py), counted in the attacker namespace over a measured interval, and the refusals
are counted in the daemon's statistics."""

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


@pytest.fixture
def ht(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    daemon = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"])
    daemon.extra_config = (f'ports_per_process = "1"\nudp_replies_per_sensor = "{PER_SENSOR}"\n'
                           f'udp_replies_per_source = "{PER_SOURCE}"\n')
    yield daemon
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.stop()
    if daemon.notify is not None:
        daemon.notify.close()


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
    socks = []
    for n in range(SOURCES):
        host = lab.add_address(lab.attacker, 10 + n)
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((host.ip4, 0))
        sock.setblocking(False)
        socks.append(sock)
    # As large as the largest template: the bytes rule (2x) never cuts, only the rates limit.
    datagram = b"OPTIONS sip:x SIP/2.0\r\n" + b"p" * 400

    # Every port started (one reply each) before the measured flood: then one process per port.
    warm: Counter[tuple[int, int]] = Counter()
    for port in PORTS:
        socks[0].sendto(datagram, (lab.sensor.ip4, port))
    deadline = time.monotonic() + 20
    while len({port for _, port in warm}) < len(PORTS) and time.monotonic() < deadline:
        drain(socks[:1], warm, 0.2)
    assert {port for _, port in warm} == set(PORTS)
    names = sorted(ht.server_names().values())
    assert names == sorted(f"ht-{port}/udp" for port in PORTS), names

    replies: Counter[tuple[int, int]] = Counter()
    sent = 0
    last = 0.0
    began = time.monotonic()
    for _ in range(MAX_ROUNDS):
        if time.monotonic() - began >= FLOOD_SECONDS:
            break
        for sock in socks:
            for port in PORTS:
                sock.sendto(datagram, (lab.sensor.ip4, port))
                sent += 1
        last = drain(socks, replies, 0, last)
        time.sleep(ROUND_PAUSE)  # pacing the sender, not waiting for an event
    last = drain(socks, replies, DRAIN_TIMEOUT, last)
    interval = max(last, began) - began
    total = sum(replies.values())
    per_port = Counter(port for _, port in replies.elements())
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
