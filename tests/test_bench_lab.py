"""The benchmark's lab (bench/harness.py prepare_lab) and its stall watch (bench/stallwatch.py).

Issue 13's one sweep stall (360 connections never answered in a rep, 107 s) was the lab's: the
nfq rules make the sensor's kernel track every connection, a closed one stays tracked for the
kernel's TIME_WAIT (120 s), the bench's bursts made more than the table holds (nf_conntrack_max)
within that, and the kernel dropped new SYNs ("table full"). These tests hold the lab to what
the bench needs: each load starts from an empty table, a connection the bench completed leaves
it within CONNTRACK_TIME_WAIT, the drops are counted, and the stall watch's capture says what
every part is doing."""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Host, Lab, inside

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
harness = importlib.import_module("harness")
stallwatch = importlib.import_module("stallwatch")

PORT = 4444
# The bound on waiting for the kernel to forget a closed connection: its timeout, then the
# listing's own granularity (a second, /proc/net/nf_conntrack) with room for a loaded machine;
# far below the kernel's default 120 s, which the lab had.
FORGET_WAIT = harness.CONNTRACK_TIME_WAIT + 10.0
POLL = 0.2


@pytest.fixture
def bench_lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the tests run as root: they create network namespaces")
    lab = Lab.create()
    try:
        harness.prepare_lab(lab)
        yield lab
    finally:
        lab.close()


def tracked_state(sensor: Host, client_port: int) -> str | None:
    """The conntrack state of the connection from `client_port` to PORT (None: not tracked)."""
    for line in sensor.cmd("cat", "/proc/net/nf_conntrack").splitlines():
        fields = line.split()
        if f"sport={client_port}" in fields and f"dport={PORT}" in fields:
            return fields[5]  # ipv4 2 tcp 6 <seconds left> STATE ...
    return None


def completed_connection(lab: Lab) -> int:
    """One connection as the load generator makes them (bytes, half-close, read to the server's
    close) to a listener in the sensor; the client's port."""
    with inside(lab.sensor):
        listener = socket.create_server((lab.sensor.ip4, PORT))
    with inside(lab.attacker):
        client = socket.create_connection((lab.sensor.ip4, PORT), timeout=10)
    with listener, client:
        conn, _ = listener.accept()
        with conn:
            client.sendall(b"BENCH")
            client.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"BENCH" and conn.recv(100) == b""
            conn.sendall(b"\n")
        assert client.recv(100) == b"\n" and client.recv(100) == b""  # the server closed
        port = int(client.getsockname()[1])
    return port


def test_a_closed_connection_leaves_the_sensors_connection_tracking_in_time(
        bench_lab: Lab) -> None:
    """The lab tracks a closed connection CONNTRACK_TIME_WAIT, not the kernel's 120 s: at the
    bench's rates that many seconds of connections stay far below nf_conntrack_max, so no burst
    finds the table full (the kernel then drops its SYNs unanswered)."""
    client_port = completed_connection(bench_lab)
    assert tracked_state(bench_lab.sensor, client_port) == "TIME_WAIT"
    deadline = time.monotonic() + FORGET_WAIT
    while tracked_state(bench_lab.sensor, client_port) is not None:
        assert time.monotonic() < deadline, "the closed connection is still tracked"
        time.sleep(POLL)  # polling the kernel's table: no event says an entry expired
    tracked = harness.conntrack(bench_lab.sensor)
    assert tracked["max"] >= 3 * harness.CONNTRACK_TIME_WAIT * harness.PEAK_RATE
    assert harness.conntrack_drops(tracked, harness.conntrack(bench_lab.sensor)) == 0


def test_every_load_starts_with_the_sensors_connection_tracking_empty(
        bench_lab: Lab, tmp_path: Path) -> None:
    """A burst (Bench.start_burst: every throughput, soak and sweep load) begins by flushing
    the sensor's table: what the loads before it left there is gone at once, whatever its
    timeout (the kernel's 120 s here, so only the flush can take it), and the burst's own
    connections are tracked from an empty table."""
    bench_lab.sensor.cmd("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait="
                         f"{stallwatch.KERNEL_TIME_WAIT}")
    earlier = completed_connection(bench_lab)
    assert tracked_state(bench_lab.sensor, earlier) == "TIME_WAIT"
    bench = harness.Bench(bench_lab, tmp_path, harness.QUICK)
    floor = bench.floor("asyncio", PORT, 1)
    try:
        result = bench.burst(PORT, 1, 10)
    finally:
        floor.stop()
    assert result["completed"] == 10
    assert tracked_state(bench_lab.sensor, earlier) is None
    tracked = harness.conntrack(bench_lab.sensor)
    assert 10 <= tracked["entries"] < 20  # the burst's ten, and the floor's few of its own
    assert tracked["drop"] == 0


def test_the_stall_watch_captures_every_process_of_a_running_daemon(
        bench_lab: Lab, tmp_path: Path) -> None:
    """capture() on a live daemon: the sensor's queues and counters, the daemon's metrics, and
    a state and a Python stack for the master, the recorder and a server process."""
    bench = harness.Bench(bench_lab, tmp_path, harness.QUICK)
    ht = bench.honeytrap(extra=f'metrics_listen = "127.0.0.1:{harness.METRICS_PORT}"\n')
    try:
        result = bench.burst(PORT, 1, 20)  # a server process on PORT
        assert result["completed"] == 20
        where = tmp_path / "capture"
        stallwatch.capture(bench, ht.master_pid(), where)
    finally:
        bench.stop_honeytrap(ht)
    summary = (where / "summary.txt").read_text()
    assert "sensor conntrack: {'entries':" in summary
    assert "listening sockets with connections queued (Recv-Q > 0): 0" in summary
    for name in ("master", "recorder", "servers"):
        assert f" {name}: " in summary
        dumps = list(where.glob(f"py-spy-{name}-*.txt"))
        assert dumps and all("Thread" in d.read_text() for d in dumps), name
    assert "honeytrap_" in (where / "metrics.txt").read_text()
    assert f":{PORT}" in (where / "ss-listen.txt").read_text()
