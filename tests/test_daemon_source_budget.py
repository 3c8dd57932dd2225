"""The real daemon while one source address holds thousands of trickling connections over a few
ports: past max_connections_per_source they are closed at accept, the server process holds no
more descriptors than the budget allows, and a fresh attacker is served on every port (and on a
new one)."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from daemon import Honeytrap
from netns import Lab, inside
from test_daemon import connect

from honeytrap.budget import DEFAULT_PER_SOURCE

# Bounded for this machine (the figure was 50,000): well past the per-source budget.
FLOOD = 5000
PORTS = (21, 25, 110, 143, 3306)  # templates that speak first: "served" is "got the banner"
NEW_PORT = 23
# Bounds on waiting for the flood's handshakes and for a fresh attacker's banner.
FLOOD_TIMEOUT = 60.0
BANNER_TIMEOUT = 30.0
# Descriptors a server process holds besides its connections (listeners, links, loop, logs).
OWN_FDS = 64


def open_flood(lab: Lab, source: str, address: str) -> list[socket.socket]:
    """FLOOD connections from `source`, spread over PORTS, handshakes completed (non-blocking
    connects, waited on with a selector). Each is kept open and sends nothing: a trickle."""
    socks: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    pending = 0
    for n in range(FLOOD):
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        code = sock.connect_ex((address, PORTS[n % len(PORTS)]))
        assert code in (0, errno.EINPROGRESS), os.strerror(code)
        socks.append(sock)
        selector.register(sock, selectors.EVENT_WRITE)
        pending += 1
    deadline = time.monotonic() + FLOOD_TIMEOUT
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            selector.unregister(key.fileobj)
            pending -= 1
    selector.close()
    assert pending == 0, f"{pending} handshakes not completed"
    return socks


def server_fds(ht: Honeytrap) -> dict[int, int]:
    return {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in ht.children()}


def banner(lab: Lab, source: str, address: str, port: int) -> bytes:
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(BANNER_TIMEOUT)
        sock.connect((address, port))
        return sock.recv(4096)
    finally:
        sock.close()


def wait_closed(socks: list[socket.socket], count: int) -> int:
    """Read the flood's sockets until `count` of them were closed by the sensor (EOF or RST),
    bounded by FLOOD_TIMEOUT; return how many were."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + FLOOD_TIMEOUT
    while closed < count and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                closed += 1
                selector.unregister(sock)
    selector.close()
    return closed


def test_one_source_flood_leaves_a_fresh_attacker_served(lab: Lab, ht: Honeytrap) -> None:
    # -r 2: an idle connection lives 11 read timeouts, longer than the test needs it.
    ht.args += ["-r", "2"]
    ht.start()
    address = lab.sensor.ip4
    for port in PORTS:  # start each port's server before the flood
        connect(lab.attacker, address, port).close()
    flooder = lab.add_address(lab.attacker, 50)
    fresh = lab.add_address(lab.attacker, 51)

    began = time.monotonic()
    socks = open_flood(lab, flooder.ip4, address)
    try:
        flood_seconds = time.monotonic() - began
        # Past the budget, the sensor closes them at accept; the rest it holds.
        closed = wait_closed(socks, FLOOD - DEFAULT_PER_SOURCE)
        fds = server_fds(ht)
        # A fresh attacker, on every port flooded and on a new one, all at once: the banner.
        served = time.monotonic()
        with ThreadPoolExecutor(len(PORTS) + 1) as pool:
            banners = dict(zip((*PORTS, NEW_PORT), pool.map(
                lambda port: banner(lab, fresh.ip4, address, port), (*PORTS, NEW_PORT)),
                strict=True))
        served_seconds = time.monotonic() - served
    finally:
        for sock in socks:
            sock.close()
    held = FLOOD - closed
    print(f"source budget: flood {FLOOD} connections in {flood_seconds:.1f} s, held "
          f"{held}, closed at accept {closed}, server fds {fds}, fresh attacker served on "
          f"{len(banners)} ports in {served_seconds:.2f} s")
    assert all(banners.values()), banners  # served: each port's banner (a dialogue's own)
    assert held == DEFAULT_PER_SOURCE, f"{closed} of {FLOOD} closed within {FLOOD_TIMEOUT} s"
    assert max(fds.values()) <= DEFAULT_PER_SOURCE + OWN_FDS + len(PORTS) + 2
    assert "over the per-source budgets" in ht.logfile.read_text(errors="replace")
    assert ht.stop() == 0
