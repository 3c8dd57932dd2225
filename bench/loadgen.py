"""The benchmark's load generator (ours): raw non-blocking sockets on one epoll loop.

Modes (each prints one JSON line on stdout):
  burst    connect, send --payload bytes, half-close (SHUT_WR), read until the server closes;
           --concurrency connections in flight; ports --port .. --port + --ports - 1 in turn;
           with --rate, at most that many started per second (a steady load, not a burst);
           with --duration, none started after that many seconds, those in flight waited for
           until --deadline (the soak: a load of a given length, every connection it started
           finished). A connection is *completed* when the server closed cleanly after our
           half-close; *failed* when refused or reset; *timeout* when not finished within
           CONNECT_TIMEOUT; *unfinished* when still in flight at --deadline (its bytes sent and
           half-closed: a server that takes it later, e.g. from its listen backlog, records it
           although it is neither completed nor failed here).
  idle     open --count connections (--window handshakes in flight) and keep them open; one is
           *served* when its first bytes (the banner) arrive. Prints the counts, then holds every
           connection until a line arrives on stdin (the benchmark measures memory meanwhile).
  latency  one connection at a time to each of --ports fresh ports: the time from connect()
           (the SYN) to its completion (the SYN-ACK arrived), in milliseconds.

Every loop is bounded in count and by --deadline seconds. Run by bench/run.py inside the attacker
namespace (`ip netns exec`), several processes at once when one cannot saturate the server.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import socket
import sys
import time

# Descriptors: the largest idle test's share plus room.
FD_LIMIT = 65536
# A connection not finished in this long counts as timed out (a held SYN waits for a fork).
CONNECT_TIMEOUT = 30.0
# How often in-flight connections are checked against their timeout.
SWEEP_INTERVAL = 0.5


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _open(address: str, port: int) -> socket.socket | None:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex((address, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


def burst(args: argparse.Namespace) -> dict[str, object]:
    payload = (b"BENCH" * (args.payload // 5 + 1))[: args.payload]
    sel = selectors.DefaultSelector()
    counts = {"completed": 0, "failed": 0, "timeout": 0, "unfinished": 0}
    started = 0
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    # --duration: the last start (the soak's 600 s: starting until its deadline instead, a load
    # slowed by a server holding back left its last connections in flight, never waited for,
    # then recorded by the server: 200 "failed" that were served).
    last_start = t0 + args.duration if args.duration else deadline
    next_sweep = t0 + SWEEP_INTERVAL
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= last_start or started >= args.count:
            if not sel.get_map():
                break
            allowed = started
        elif args.rate:  # no more starts than the rate allows so far (the soak's steady load)
            allowed = int(args.rate * (now - t0)) + 1
        else:
            allowed = args.count
        while started < min(args.count, allowed) and len(sel.get_map()) < args.concurrency:
            port = args.port + (started * args.stride + args.offset) % args.ports
            started += 1
            sock = _open(args.address, port)
            if sock is None:
                counts["failed"] += 1
                continue
            sel.register(sock, selectors.EVENT_WRITE, [0, time.monotonic()])
        for key, _ in sel.select(timeout=0.1 if not args.rate else 0.005):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            outcome = _step(sel, sock, key.data, payload)
            if outcome:
                counts[outcome] += 1
        now = time.monotonic()
        if now >= next_sweep:
            next_sweep = now + SWEEP_INTERVAL
            for key in list(sel.get_map().values()):
                if now - key.data[1] > CONNECT_TIMEOUT:
                    _finish(sel, key.fileobj)  # type: ignore[arg-type]
                    counts["timeout"] += 1
    for key in list(sel.get_map().values()):  # in flight at the deadline
        _finish(sel, key.fileobj)  # type: ignore[arg-type]
        counts["unfinished"] += 1
    # ended_at: the wall clock at the burst's end (bench/harness.py's recorded rate compares
    # it with the outputs' modification times).
    return {**counts, "started": started, "elapsed": time.monotonic() - t0,
            "ended_at": time.time()}


def _step(sel: selectors.BaseSelector, sock: socket.socket, state: list[float],
          payload: bytes) -> str:
    """Advance one connection; returns its outcome when it ended, else ""."""
    try:
        if state[0] == 0:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                _finish(sel, sock)
                return "failed"
            sock.send(payload)  # 200 bytes fit the empty send buffer whole
            sock.shutdown(socket.SHUT_WR)
            state[0] = 1
            sel.modify(sock, selectors.EVENT_READ, state)
            return ""
        if sock.recv(65536):
            return ""
        _finish(sel, sock)
        return "completed"
    except (BlockingIOError, InterruptedError):
        return ""
    except OSError:
        _finish(sel, sock)
        return "failed"


def _finish(sel: selectors.BaseSelector, sock: socket.socket) -> None:
    sel.unregister(sock)
    sock.close()


def idle(args: argparse.Namespace) -> dict[str, object]:
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []
    counts = {"served": 0, "failed": 0, "timeout": 0}
    started = 0
    connecting = 0
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    while (started < args.count or sel.get_map()) and time.monotonic() < deadline:
        while started < args.count and connecting < args.window:
            started += 1
            sock = _open(args.address, args.port)
            if sock is None:
                counts["failed"] += 1
                continue
            connecting += 1
            sel.register(sock, selectors.EVENT_WRITE, "connect")
        for key, _ in sel.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "connect":
                connecting -= 1
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    _finish(sel, sock)
                    counts["failed"] += 1
                else:
                    sel.modify(sock, selectors.EVENT_READ, "banner")
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            sel.unregister(sock)
            if data:
                counts["served"] += 1
                held.append(sock)
            else:
                sock.close()
                counts["failed"] += 1
    for key in list(sel.get_map().values()):
        _finish(sel, key.fileobj)  # type: ignore[arg-type]
        counts["timeout"] += 1
    return {**counts, "started": started, "elapsed": time.monotonic() - t0, "held": held}


def latency(args: argparse.Namespace) -> dict[str, object]:
    # The client under the real-time policy, for the floor and honeytrap alike: what is measured
    # is the SYN-ACK's coming, not this process's wait for a core once it came. Against the
    # floor the handshake completes inside connect() (the sensor's kernel answers in the same
    # softirq); against honeytrap the SYN waits in NFQUEUE and this process sleeps, and on a
    # loaded machine a normal process woken by the SYN-ACK waited milliseconds for its turn
    # (p99 7.5 ms at load 8.5, with the master itself answering within a fraction of one).
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        realtime = True
    except OSError:
        realtime = False
    samples: list[float] = []
    failed = 0
    deadline = time.monotonic() + args.deadline
    for port in range(args.port, args.port + args.ports):
        if time.monotonic() >= deadline:
            break
        sock = socket.socket(_family(args.address), socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        t0 = time.perf_counter()
        try:
            sock.connect((args.address, port))
            samples.append((time.perf_counter() - t0) * 1000.0)
        except OSError:
            failed += 1
        finally:
            sock.close()
    return {"samples_ms": samples, "failed": failed, "realtime_client": realtime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("burst", "idle", "latency"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ports", type=int, default=1)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--offset", type=int, default=0, help="this process's index")
    parser.add_argument("--stride", type=int, default=1, help="how many processes share ports")
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="burst: start at most this many connections per second (0: no cap)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="burst: start none after this many seconds, finish those in flight "
                             "(0: start until --count or --deadline)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(FD_LIMIT, hard)))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE (a container): as far as allowed
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.mode == "burst":
        result = burst(args)
    elif args.mode == "latency":
        result = latency(args)
    else:
        result = idle(args)
        held = result.pop("held")
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        sys.stdin.readline()  # the benchmark measured; let go
        for sock in held:  # type: ignore[attr-defined]
            sock.close()
        return
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
