"""The benchmark's lab (bench/harness.py prepare_lab) and its stall watch (bench/stallwatch.py).

Issue 13's one sweep stall (360 connections never answered in a rep, 107 s) was the lab's: the
nfq rules make the sensor's kernel track every connection, a closed one stays tracked for the
kernel's TIME_WAIT (120 s), the bench's bursts made more than the table holds (nf_conntrack_max)
within that, and the kernel dropped new SYNs ("table full"). These tests hold the lab to what
the bench needs: each load starts from an empty table, a connection the bench completed leaves
it within CONNTRACK_TIME_WAIT, the drops are counted, and the stall watch's capture says what
every part is doing."""

from __future__ import annotations

import errno
import importlib
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Host, Lab, inside

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
conntrack = importlib.import_module("conntrack")
harness = importlib.import_module("harness")
stallwatch = importlib.import_module("stallwatch")

PORT = 4444
# The bound on waiting for the kernel to forget a closed connection: its timeout, then the
# listing's own granularity (a second, /proc/net/nf_conntrack) with room for a loaded machine;
# far below the kernel's default 120 s, which the lab had.
FORGET_WAIT = conntrack.TIME_WAIT + 10.0
POLL = 0.2
# The longest wait for a capture to be written (py-spy dumps of a few processes).
CAPTURE_WAIT = 60.0


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
    tracked = conntrack.counters(bench_lab.sensor)
    assert tracked["max"] >= 3 * conntrack.TIME_WAIT * conntrack.PEAK_RATE
    assert tracked["drop"] == 0


def test_a_full_table_turns_a_connection_away_unanswered_until_it_is_flushed(
        bench_lab: Lab) -> None:
    """The stall's mechanism, made on purpose: with the sensor's table full the kernel drops
    the SYN (counted) before any socket sees it, the client stays in SYN-SENT, and a flush lets
    its next retransmission in."""
    with inside(bench_lab.sensor):
        listener = socket.create_server((bench_lab.sensor.ip4, PORT))
    conntrack.fill(bench_lab.sensor, 0)
    before = conntrack.counters(bench_lab.sensor)
    assert before["entries"] == before["max"]
    with inside(bench_lab.attacker):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, client:
        client.setblocking(False)
        assert client.connect_ex((bench_lab.sensor.ip4, PORT)) == errno.EINPROGRESS
        deadline = time.monotonic() + FORGET_WAIT
        while conntrack.dropped(before, conntrack.counters(bench_lab.sensor)) == 0:
            assert time.monotonic() < deadline, "the SYN was not dropped"
            time.sleep(POLL)  # polling the kernel's counter: no event says it moved
        assert select.select([], [client], [], 0) == ([], [], [])  # no answer: SYN-SENT
        conntrack.flush(bench_lab.sensor)
        _, writable, _ = select.select([], [client], [], FORGET_WAIT)  # the retransmission
        assert writable and client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        listener.accept()[0].close()


def test_every_load_starts_with_the_sensors_table_flushed(bench_lab: Lab, tmp_path: Path) -> None:
    """A burst (Bench.start_burst: every throughput, soak and sweep load) begins by flushing
    the sensor's table: whatever the loads before it left there (here a full table), its
    connections are all answered, and the kernel drops none."""
    bench = harness.Bench(bench_lab, tmp_path, harness.QUICK)
    floor = bench.floor("asyncio", PORT, 1)
    try:
        conntrack.fill(bench_lab.sensor, 0)
        result = bench.measure_floor(floor, 10)
    finally:
        floor.stop()
    assert (result["completed"], result["timeout"], result["conntrack_drops"]) == (10, 0, 0)


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
        dumps = {d.name: d.read_text() for d in where.glob(f"py-spy-{name}-*.txt")}
        assert dumps and all("Thread" in text for text in dumps.values()), dumps
    assert "honeytrap_" in (where / "metrics.txt").read_text()
    assert f":{PORT}" in (where / "ss-listen.txt").read_text()


def flush_once(lab: Lab, summary: Path) -> None:
    """Flush the sensor's table once `summary` (a capture's last file) is written."""
    deadline = time.monotonic() + CAPTURE_WAIT
    while not summary.exists() and time.monotonic() < deadline:
        time.sleep(POLL)  # polling a file another thread writes: the capture has no event
    conntrack.flush(lab.sensor)


def test_a_honeytrap_burst_that_runs_long_is_captured_while_it_still_runs(
        bench_lab: Lab, tmp_path: Path) -> None:
    """Bench.watched (every honeytrap burst of bench/run.py): a burst stuck on a full table
    (not flushed) is captured while it is stuck, and the capture shows the table full; the
    table flushed once the capture is written, the burst ends served."""
    captures = tmp_path / "captures"
    bench = harness.Bench(bench_lab, tmp_path, harness.QUICK)
    bench.captures, bench.capture_floor, bench.flush_conntrack = captures, 1.0, False
    ht = bench.honeytrap()
    unstall = threading.Thread(target=flush_once,
                               args=(bench_lab, captures / "burst-1" / "summary.txt"))
    try:
        conntrack.fill(bench_lab.sensor, 0)
        unstall.start()
        result = bench.measure_honeytrap(ht, PORT, 1, 5)
    finally:
        unstall.join()
        bench.stop_honeytrap(ht)
    assert result["captured"] == str(captures / "burst-1")
    assert (result["completed"], result["timeout"]) == (5, 0)
    assert result["conntrack_drops"] > 0
    summary = (captures / "burst-1" / "summary.txt").read_text()
    full = conntrack.counters(bench_lab.sensor)["max"]
    assert f"'entries': {full}, 'max': {full}" in summary
