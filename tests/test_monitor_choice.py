"""The default monitor (`auto`: no `monitor` key) cannot black-hole traffic, end to end: with
T-Pot's queue rule (no bypass, no socket match) the very first SYN is served; with no queue rule
the pcap behaviour holds (the first SYN refused, the retry served); and pcap chosen explicitly
while a rule feeds the queue is an error in the log, loud, before READY=1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Honeytrap, tpot_rules
from netns import Lab, inside

IO_TIMEOUT = 5.0  # one connect/recv in the lab; the veth answers in microseconds
RETRY_INTERVAL = 0.2  # the pcap case's retries: sooner than a scanner's, bounded in number
RETRIES = 25
NFQ_LINE = "Trapping attacks via NFQ."


@pytest.fixture
def sensor(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    ht = Honeytrap(lab, tmp_path / "ht", monitor=None, args=["-u", "nobody", "-g", "nogroup"])
    yield ht
    if ht.proc is not None and ht.proc.poll() is None:
        ht.stop()


def connect(lab: Lab, port: int) -> socket.socket:
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    try:
        sock.connect((lab.sensor.ip4, port))
    except BaseException:
        sock.close()
        raise
    return sock


def test_default_monitor_serves_tpots_queued_first_syn(lab: Lab, sensor: Honeytrap) -> None:
    tpot_rules(lab.sensor)
    sensor.start()
    log = sensor.logfile.read_text()
    assert NFQ_LINE in log and "nfq monitor reading NFQUEUE 0" in log
    assert "monitor auto: NFQUEUE 0 and pcap together" in log
    sock = connect(lab, 31337)  # the first SYN: no refusal, no retry
    sock.sendall(b"first-syn-token")
    assert sock.recv(1)  # the port's response template (a newline without one)
    sock.close()
    records = sensor.wait_records(1)
    assert len(records) == 1
    conn = records[0]["attack_connection"]
    assert isinstance(conn, dict) and conn["local_port"] == 31337
    assert b"first-syn-token" in bytes.fromhex(conn["payload"]["data_hex"])
    assert sensor.stop() == 0


def test_default_monitor_without_queue_rule_serves_the_retry(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.start()
    refused = 0
    for _ in range(RETRIES):
        try:
            sock = connect(lab, 8080)
            break
        except ConnectionRefusedError:
            refused += 1
            time.sleep(RETRY_INTERVAL)
    else:
        pytest.fail("the retry was never served")
    assert refused >= 1  # nothing queued: the kernel refused the first SYN, pcap saw the RST
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert sock.recv(65536)
    sock.close()
    assert len(sensor.wait_records(1)) == 1
    assert "DROPS" not in sensor.logfile.read_text()
    assert sensor.stop() == 0


def test_explicit_pcap_with_a_queue_rule_warns_loudly(lab: Lab, sensor: Honeytrap) -> None:
    tpot_rules(lab.sensor)
    sensor.monitor = "pcap"
    sensor.start()
    errors = [line for line in sensor.logfile.read_text().splitlines() if " ERROR " in line]
    assert any("NFQUEUE 0 is fed by" in line and "DROPS" in line and "-j NFQUEUE" in line
               for line in errors), errors
    assert NFQ_LINE not in sensor.logfile.read_text()
    assert sensor.stop() == 0


def test_auto_does_not_count_the_kernels_reset_as_a_second_attempt(
    lab: Lab, sensor: Honeytrap
) -> None:
    """An ignored port's queued SYN is let through to the kernel, which resets it; the sniffer
    sees that reset, but it is the queued attempt's echo, not a second attempt."""
    tpot_rules(lab.sensor)
    sensor.extra_config = 'portconf = { ignore = { protocol = "tcp" port = "8081" } }'
    sensor.start()
    assert "NFQUEUE 0 and pcap together" in sensor.logfile.read_text()
    with pytest.raises(ConnectionRefusedError):
        connect(lab, 8081)
    sock = connect(lab, 8080)  # served after the reset was on the wire: the sniffer had it
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert sock.recv(1)
    sock.close()
    assert len(sensor.wait_records(1)) == 1
    assert sensor.stop() == 0
    stats = [line for line in sensor.logfile.read_text().splitlines() if "statistics:" in line]
    assert stats and " ignored=1 " in stats[-1] and " attempts=2 " in stats[-1], stats
