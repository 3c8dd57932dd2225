"""End to end with the pcap monitor (the man page's default): no firewall rule at all. The first
attempt is refused by the kernel; honeytrap sees the RST (or ICMP port unreachable) and starts a
server, so the attacker's retry is served and recorded."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import REPO, Honeytrap
from netns import Lab, inside

RETRY_INTERVAL = 0.2  # a scanner's retry comes ~1 s later; we try sooner, a bounded number of times
RETRIES = 25


@pytest.fixture
def sensor(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    ht = Honeytrap(lab, tmp_path / "ht", monitor="pcap", args=["-u", "nobody", "-g", "nogroup"])
    yield ht
    if ht.proc is not None and ht.proc.poll() is None:
        ht.stop()


def payload_of(record: dict[str, object]) -> bytes:
    conn = record["attack_connection"]
    assert isinstance(conn, dict)
    return bytes.fromhex(conn["payload"]["data_hex"])


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_tcp_first_attempt_refused_retry_served(
    lab: Lab, sensor: Honeytrap, family: int
) -> None:
    sensor.start()
    address = lab.sensor.ip4 if family == socket.AF_INET else lab.sensor.ip6
    refused = 0
    for _ in range(RETRIES):
        with inside(lab.attacker):
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect((address, 8080))
            break
        except ConnectionRefusedError:
            refused += 1
            sock.close()
            time.sleep(RETRY_INTERVAL)
    else:
        pytest.fail("the retry was never served")
    assert refused >= 1  # the first SYN met the kernel's RST: that is what pcap watches for
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.")
    sock.close()
    records = sensor.wait_records(1)
    assert [payload_of(r) for r in records] == [b"GET / HTTP/1.0\r\n\r\n"]
    assert sensor.stop() == 0


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_udp_retry_is_answered_once(lab: Lab, sensor: Honeytrap, family: int) -> None:
    sensor.start()
    address = lab.sensor.ip4 if family == socket.AF_INET else lab.sensor.ip6
    with inside(lab.attacker):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:  # closed on a failed assertion too (a leak warns in a later test)
        sock.settimeout(RETRY_INTERVAL)
        reply = None
        for attempt in range(RETRIES):
            try:
                # Half the reply at least: the reflector guard sends at most twice what came in.
                sock.sendto(b"probe-%d " % attempt + b"p" * 60, (address, 161))
                reply = sock.recv(65535)
                break
            except (ConnectionRefusedError, TimeoutError):
                continue  # the ICMP port unreachable of the first try, or not bound yet
        assert reply == (REPO / "templates" / "161_udp").read_bytes()
        sock.settimeout(2.5)
        with pytest.raises(TimeoutError):
            sock.recv(65535)  # one reply per datagram, never a storm
    records = sensor.wait_records(1)
    assert len(records) == 1
    assert payload_of(records[0]).startswith(b"probe-")
    assert sensor.stop() == 0
