"""The nfq monitor's verdicts (honeytrap/monitor/nfq.py) against the kernel's queue: what is
released is accepted at flush(), those at the front of the queue with one batch verdict, one
behind a packet still held on its own; a held packet stays in the kernel until it is released."""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections.abc import Iterator

import pytest
from daemon import nfq_rules
from netns import Lab, inside

from honeytrap.monitor.nfq import NfqMonitor, QueuedPacket

PORTS = range(47100, 47105)
WAIT = 5.0  # seconds for a packet to reach the queue or an answer to come back (microseconds)


@pytest.fixture
def monitor(lab: Lab) -> Iterator[NfqMonitor]:
    nfq_rules(lab.sensor)
    with inside(lab.sensor):
        queue = NfqMonitor(0)
    yield queue
    queue.close()


def queued(lab: Lab) -> int:
    """Packets the sensor's kernel holds in queue 0 now (nfnetlink_queue's queue_total)."""
    return int(lab.sensor.cmd("cat", "/proc/net/netfilter/nfnetlink_queue").split()[2])


def syn(lab: Lab, monitor: NfqMonitor, port: int, clients: list[socket.socket]) -> QueuedPacket:
    """A SYN from the attacker to `port`, once the monitor has read it."""
    with inside(lab.attacker):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    clients.append(client)
    client.setblocking(False)
    assert client.connect_ex((lab.sensor.ip4, port)) == errno.EINPROGRESS
    with selectors.DefaultSelector() as selector:
        selector.register(monitor.fileno(), selectors.EVENT_READ)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            selector.select(deadline - time.monotonic())
            seen = monitor.poll()
            if seen:
                [held] = seen
                assert held.attempt.local_port == port
                return held
    raise AssertionError(f"the SYN to {port} never reached the queue")


def refused(client: socket.socket) -> bool:
    """The connection was answered with a reset (nothing listens on the port)."""
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_WRITE)
        selector.select(WAIT)
    return client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED


def test_released_packets_go_a_held_one_stays_until_it_is_released(
    lab: Lab, monitor: NfqMonitor
) -> None:
    clients: list[socket.socket] = []
    try:
        first, second, third = (syn(lab, monitor, port, clients) for port in PORTS[:3])
        assert queued(lab) == 3
        # The first is held (its port being released, say): the two behind it go one by one.
        second.release()
        third.release()
        monitor.flush()
        assert refused(clients[1]) and refused(clients[2])
        assert queued(lab) == 1  # the first is still the kernel's, unanswered
        assert clients[0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        first.release()
        monitor.flush()
        assert refused(clients[0]) and queued(lab) == 0
        # Nothing held: the released ones at the front go with one batch verdict.
        fourth, fifth = (syn(lab, monitor, port, clients) for port in PORTS[3:])
        fourth.release()
        fifth.release()
        assert queued(lab) == 2  # not before the flush
        monitor.flush()
        assert refused(clients[3]) and refused(clients[4]) and queued(lab) == 0
    finally:
        for client in clients:
            client.close()
