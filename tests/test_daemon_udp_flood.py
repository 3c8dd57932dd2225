"""The real daemon under a UDP flood from many source addresses (extra addresses on the attacker
host, each standing for a forged source): what it sends to a source never exceeds twice what it
received from it, at most udp_replies_per_source replies per source per second, and a UDP port
without a template sends nothing at all. Bytes in are the sensor's own records' payloads, bytes
out what reached the attacker's sockets."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest
from daemon import REPO, Honeytrap
from netns import Lab, inside
from test_daemon import payload_of

SOURCES = 30
DATAGRAMS = 30  # per source and port, as fast as the attacker can send them
# Ports with templates of 392 and 109 bytes (the 335x was 5060/udp), and one without.
PORTS_WITH_TEMPLATE = (5060, 161)
PORT_WITHOUT_TEMPLATE = 4444
PER_SOURCE = 10  # udp_replies_per_source's default
# How long the attacker sockets are read after the last record (replies precede records).
DRAIN_TIMEOUT = 0.5


@pytest.mark.slow
def test_udp_flood_from_many_sources_is_not_amplified(lab: Lab, ht: Honeytrap) -> None:
    assert not (REPO / "templates" / f"{PORT_WITHOUT_TEMPLATE}_udp").exists()
    ht.args += ["-l", "30"]
    ht.start()
    hosts = [lab.add_address(lab.attacker, 10 + n) for n in range(SOURCES)]
    socks = []
    for host in hosts:
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((host.ip4, 0))
        socks.append(sock)
    ports = (*PORTS_WITH_TEMPLATE, PORT_WITHOUT_TEMPLATE)
    began = time.monotonic()
    for _ in range(DATAGRAMS):
        for sock in socks:
            for port in ports:
                sock.sendto(b"\x01", (lab.sensor.ip4, port))
    flood_seconds = time.monotonic() - began

    # One record per source and port once each exchange went quiet for the read timeout.
    records = ht.wait_records(SOURCES * len(ports), timeout=60)
    assert len(records) == SOURCES * len(ports)
    bytes_in: Counter[str] = Counter()
    for record in records:
        conn = record["attack_connection"]
        assert isinstance(conn, dict)
        bytes_in[conn["remote_ip"]] += len(payload_of(record))

    bytes_out: Counter[str] = Counter()
    replies: Counter[tuple[str, int]] = Counter()
    for host, sock in zip(hosts, socks, strict=True):
        sock.settimeout(DRAIN_TIMEOUT)
        while True:
            try:
                data, (_, port) = sock.recvfrom(65535)
            except TimeoutError:
                break
            bytes_out[host.ip4] += len(data)
            replies[(host.ip4, port)] += 1
        sock.close()

    total_in, total_out = sum(bytes_in.values()), sum(bytes_out.values())
    print(f"UDP flood: {SOURCES} sources, bytes in {total_in}, out {total_out}, "
          f"ratio {total_out / total_in:.2f}, replies {sum(replies.values())}, "
          f"flood {flood_seconds:.2f} s")
    assert total_in > 0
    for host in hosts:
        assert bytes_out[host.ip4] <= 2 * bytes_in[host.ip4]
        per_source = sum(n for (ip, _), n in replies.items() if ip == host.ip4)
        # The bucket (PER_SOURCE) plus its refill while the flood and the exchange lasted.
        assert per_source <= PER_SOURCE + PER_SOURCE * (flood_seconds + 2)
    assert total_out <= 2 * total_in
    assert not [key for key in replies if key[1] == PORT_WITHOUT_TEMPLATE]
    assert {port for _, port in replies} <= set(PORTS_WITH_TEMPLATE)
    assert ht.stop() == 0


def test_a_udp_request_as_large_as_half_the_reply_gets_it_whole(
    lab: Lab, ht: Honeytrap
) -> None:
    """The guard leaves real clients alone: their requests are not much smaller than replies."""
    ht.start()
    template = (REPO / "templates" / "5060_udp").read_bytes()
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    try:
        sock.sendto(b"OPTIONS sip:x SIP/2.0\r\n" + b"p" * (len(template) // 2), (
            lab.sensor.ip4, 5060))
        assert sock.recvfrom(65535)[0] == template
        sock.sendto(b"\x01", (lab.sensor.ip4, 5060))  # what is left of 2x: cut, not refused
        assert len(sock.recvfrom(65535)[0]) == 2 * (23 + len(template) // 2 + 1) - len(template)
    finally:
        sock.close()
    assert ht.stop() == 0
