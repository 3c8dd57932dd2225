"""The benchmark's load generator (bench/loadgen.py) against a server of the test's own on
loopback: how a burst's connections are counted. --duration ends the starts, not the load: every
connection in flight then is waited for and counted as it ends; one still in flight at --deadline
is *unfinished*, neither failed nor timed out (its bytes were sent: a server holding back takes
it from its listen backlog later and records it; the soak counted 200 of those as failed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

LOADGEN = Path(__file__).resolve().parent.parent / "bench" / "loadgen.py"
CONCURRENCY = 8
COUNT = 10**7  # never reached: --duration or --deadline ends the starts
PAYLOAD = 200
BANNER = b"hello\n"
RUN_TIMEOUT = 60.0


def loadgen(port: int, *argv: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, str(LOADGEN), "burst", "--address", "127.0.0.1", "--port", str(port),
         "--count", str(COUNT), "--concurrency", str(CONCURRENCY), "--payload", str(PAYLOAD),
         *argv],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4 * CONCURRENCY)
    yield sock
    sock.close()


def serve(listener: socket.socket, stop: threading.Event) -> None:
    """Banner, read to the client's half-close, close: what honeytrap does, one at a time."""
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(10)
            conn.sendall(BANNER)
            while conn.recv(65536):
                pass


def test_a_duration_ends_the_starts_and_every_connection_in_flight_is_finished(
    listener: socket.socket,
) -> None:
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(listener, stop))
    server.start()
    try:
        got = loadgen(listener.getsockname()[1], "--duration", "0.5", "--deadline", "30")
    finally:
        stop.set()
        server.join()
    assert got["started"] > CONCURRENCY
    assert got["completed"] == got["started"]
    assert got["failed"] == got["timeout"] == got["unfinished"] == 0
    assert got["elapsed"] < 30  # it ended once the last one finished, not at the deadline


def test_connections_in_flight_at_the_deadline_are_unfinished_not_failed(
    listener: socket.socket,
) -> None:
    # Nothing is accepted: the kernel completes the handshakes and holds the bytes and the
    # half-close in the listen backlog, as for a server holding back.
    got = loadgen(listener.getsockname()[1], "--deadline", "1")
    assert got["started"] == CONCURRENCY
    assert got["unfinished"] == CONCURRENCY
    assert got["completed"] == got["failed"] == got["timeout"] == 0
