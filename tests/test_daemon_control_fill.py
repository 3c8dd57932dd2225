"""The master's control channel filled on the real daemon (issue 14, item 8): the server process
that takes a sweep's ports is stopped (SIGSTOP) so it reads nothing, while SYNs to hundreds of
fresh ports make the master hand it every port (serve, with the bound socket) and evict the
oldest (stop) past max_servers: far more than the socketpair's buffer holds (about 280 such
messages), so the rest waits in the channel's queue (the master's control_queued gauge). Then
SIGCONT, and every port and process must end in the right state: each connection made meanwhile
is answered and recorded once, the ports not evicted are listening exactly once in a live server
process, the evicted ones nowhere, the master's figures match what ps and ss show, the process
retires after the listen timeout, no crash, and SIGTERM exits 0."""

from __future__ import annotations

import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import (
    Honeytrap,
    nfq_rules,
    signal_quietly,
    statistics,
    stop_resumed,
    wait_statistics,
)
from netns import Lab, inside

from honeytrap import forked
from honeytrap.limits import SPARE_PROCESSES

METRICS_PORT = 9117  # on the sensor namespace's loopback: no other test's daemon sees it
FIRST_PORT = 31000  # fresh ports: no template, no real service
PORTS = 800  # serve messages alone: about three times what the socketpair's buffer takes
MAX_SERVERS = 600  # the first PORTS - MAX_SERVERS ports are evicted (a stop each) meanwhile
# The stopped process fills up half-way: the next port goes to another process, and a spare is
# forked while the master holds the stopped one's queued descriptors (which it must not inherit).
PORTS_PER_PROCESS = 500
LISTEN_TIMEOUT = 3  # -l: the ports expire this long after their last connection
WAIT = 30.0  # every bounded wait on the daemon's own state
REQUEST = b"GET /control-fill HTTP/1.0\r\n\r\n"
CRASH_LINE = re.compile(r"server process (\d+) \(ports ([^)]*)\) exited with status -9")


@pytest.fixture
def sensor(lab: Lab, tmp_path: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    ht = Honeytrap(
        lab, tmp_path / "ht",
        args=["-u", "nobody", "-g", "nogroup", "-l", str(LISTEN_TIMEOUT)],
        extra_config=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"\nmax_servers = "{MAX_SERVERS}"\n'
                     f'ports_per_process = "{PORTS_PER_PROCESS}"',
    )
    yield ht
    stop_resumed(ht)


def figures(lab: Lab) -> dict[str, float]:
    return statistics(lab, METRICS_PORT)


def wait_figures(lab: Lab, done: Callable[[dict[str, float]], bool],
                 what: str) -> dict[str, float]:
    return wait_statistics(lab, METRICS_PORT, done, what, WAIT)


def listeners(lab: Lab) -> dict[int, list[int]]:
    """Our port range's listening TCP sockets in the sensor namespace: port -> pids holding one
    (ss -p lists each process holding the socket)."""
    out = lab.sensor.cmd("ss", "-Htlnp")
    found: dict[int, list[int]] = {}
    for line in out.splitlines():
        fields = line.split()
        port = int(fields[3].rsplit(":", 1)[1])
        if not FIRST_PORT <= port < FIRST_PORT + PORTS:
            continue
        pids = [int(part.split("=", 1)[1]) for part in line.replace(")", ",").split(",")
                if part.startswith("pid=")]
        found.setdefault(port, []).extend(pids)
    return found


def wait_spares(ht: Honeytrap) -> list[int]:
    deadline = time.monotonic() + WAIT
    while len(spares := ht.spares()) < SPARE_PROCESSES and time.monotonic() < deadline:
        time.sleep(0.02)
    return spares


def alive(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def start_with_spares_stopped(ht: Honeytrap) -> list[int]:
    """Start the daemon and SIGSTOP its spares (whichever takes the first port takes the next
    ones while it has room); their pids."""
    ht.start()
    spares = wait_spares(ht)
    assert len(spares) == SPARE_PROCESSES
    for pid in spares:
        signal_quietly(pid, signal.SIGSTOP)
    return spares


def connect_each(lab: Lab, ports: list[int]) -> list[int]:
    """Connect to each port and close (a connect completes once the master bound the port:
    the kernel's backlog holds it); the ports that refused."""
    refused = []
    for port in ports:
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect((lab.sensor.ip4, port))
        except ConnectionRefusedError:
            refused.append(port)
        finally:
            sock.close()
    return refused


def answered(lab: Lab, port: int) -> bytes:
    """The sensor's answer to REQUEST on port."""
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(10)
        sock.connect((lab.sensor.ip4, port))
        sock.sendall(REQUEST)
        return sock.recv(4096)


@pytest.mark.slow
def test_a_filled_control_channel_leaves_every_port_and_process_right(
    lab: Lab, sensor: Honeytrap
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < PORTS + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, PORTS + 1024), hard))
    spares = start_with_spares_stopped(sensor)  # one takes PORTS_PER_PROCESS ports

    ports = list(range(FIRST_PORT, FIRST_PORT + PORTS))
    clients: dict[int, socket.socket] = {}
    try:
        for port in ports:
            with inside(lab.attacker):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients[port] = sock
            sock.settimeout(10)
            # Completes once the master bound the port (the kernel's backlog holds it).
            sock.connect((lab.sensor.ip4, port))
        stopped = figures(lab)
        # The master kept what the stopped process's socket did not take, in order.
        assert stopped["control_queued"] > 0, stopped
        assert stopped["servers_started"] == PORTS
        assert stopped["servers_evicted"] == PORTS - MAX_SERVERS
        assert stopped["servers_running"] == MAX_SERVERS
        for name in ("refused_no_room", "refused_rate", "refused_draining", "handover_failures",
                     "refused_pending", "server_crashes"):
            assert stopped.get(name, 0) == 0, (name, stopped)

        for pid in spares:
            signal_quietly(pid, signal.SIGCONT)

        # Every connection made meanwhile is served: its port's socket reached the process
        # (an evicted port's too: its stop comes after its serve, and the stop drains it).
        for sock in clients.values():
            sock.sendall(REQUEST)
        answered: set[int] = set()
        answers: dict[int, bytes] = {}
        selector = selectors.DefaultSelector()
        for port, sock in clients.items():
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, port)
        deadline = time.monotonic() + WAIT
        while len(answered) < PORTS and time.monotonic() < deadline:
            for key, _mask in selector.select(timeout=1.0):
                try:
                    answers[key.data] = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except OSError as exc:  # a reset: not served
                    answers[key.data] = repr(exc).encode()
                answered.add(key.data)
                selector.unregister(key.fileobj)
        selector.close()
        assert sorted(set(ports) - answered) == []
        # Each one by the HTTP dialogue (a reset or an EOF would be a port nobody served).
        wrong = {port: answer[:40] for port, answer in answers.items()
                 if not answer.startswith(b"HTTP/1.0 ")}
        assert wrong == {}
    finally:
        for sock in clients.values():
            sock.close()

    # The queue drained, the evicted ports let go: each port still served listens exactly once,
    # in a live server process, and the master's figures say the same.
    served = ports[PORTS - MAX_SERVERS:]  # least recently used first: the oldest were evicted
    settled = wait_figures(
        lab, lambda got: got["control_queued"] == 0 and got["servers_alive"] == MAX_SERVERS,
        "drained")
    held = listeners(lab)
    assert sorted(held) == served
    assert all(len(pids) == 1 for pids in held.values()), {p: v for p, v in held.items()
                                                           if len(v) != 1}
    owners = {pid for pids in held.values() for pid in pids}
    processes = sensor.children() + sensor.spares()
    assert owners <= set(sensor.children()), (owners, processes, sensor.master_pid())
    assert len(owners) == 2  # the stopped one, and the one that took the ports past its room
    assert settled["servers_running"] == MAX_SERVERS
    assert settled["server_processes"] == len(processes)

    # Each connection recorded once, on its own port.
    records = sensor.wait_records(PORTS, timeout=WAIT)
    recorded = sorted(r["attack_connection"]["local_port"] for r in records)  # type: ignore[index]
    assert recorded == ports

    # After the listen timeout every port expires (stop, released) and the emptied process
    # retires and exits; the spares stay.
    done = wait_figures(
        lab, lambda got: got["servers_alive"] == 0 and got["server_processes"] == SPARE_PROCESSES,
        "expired and retired")
    assert done["servers_expired"] == MAX_SERVERS
    assert done["server_crashes"] == 0
    assert listeners(lab) == {}
    assert not any(alive(pid) for pid in owners)
    assert sensor.children() == []
    assert len(sensor.spares()) == SPARE_PROCESSES
    assert sensor.stop() == 0


@pytest.mark.slow
def test_a_process_killed_with_a_filled_channel_frees_its_ports_and_the_master_goes_on(
    lab: Lab, sensor: Honeytrap
) -> None:
    """A hung process (stopped, its channel full) killed: the master's queued messages for it
    go (their descriptors closed), its ports are free, one crash is counted, and new ports are
    served by the other processes."""
    spares = start_with_spares_stopped(sensor)
    count = 400  # past the socketpair's buffer: the master holds the rest
    ports = list(range(FIRST_PORT, FIRST_PORT + count))
    assert connect_each(lab, ports) == []
    stopped = figures(lab)
    assert stopped["control_queued"] > 0, stopped
    # Nothing served yet: the ports' sockets are in the channel's buffer or the master's queue.
    owners = {pid for pids in listeners(lab).values() for pid in pids}
    assert owners == {sensor.master_pid()}, owners
    # Which spare took the ports: the one whose channel the master is still writing to has
    # them; kill both stopped ones (the other never had a port: it is just a spare lost).
    for pid in spares:
        signal_quietly(pid, signal.SIGKILL)
    gone = wait_figures(
        lab, lambda got: got["server_crashes"] == SPARE_PROCESSES and got["servers_alive"] == 0
        and got["control_queued"] == 0, "crashes counted and ports freed")
    assert gone["servers_running"] == 0
    # The crash lines name LOG_PORTS ports at most, then how many more (not all 400).
    crashes = dict(CRASH_LINE.findall(sensor.logfile.read_text()))
    assert sorted(crashes) == sorted(str(pid) for pid in spares), crashes
    named = [f"{port}/tcp" for port in ports[:forked.LOG_PORTS]]
    assert sorted(crashes.values()) == [" ".join(named) + f" and {count - forked.LOG_PORTS} more",
                                        "none"]
    # New ports are served by processes forked since (the master's selector holds no stale
    # entry for the dead channels' descriptors, which new channels reuse).
    fresh = list(range(FIRST_PORT + count, FIRST_PORT + count + 20))
    for port in fresh + ports[:20]:
        assert answered(lab, port).startswith(b"HTTP/1.0 "), port
    assert sensor.proc is not None and sensor.proc.poll() is None
    held = listeners(lab)
    assert sorted(held) == sorted(fresh + ports[:20])
    assert all(len(pids) == 1 for pids in held.values())
    after = figures(lab)
    assert after["server_processes"] == len(sensor.children() + sensor.spares())
    assert sensor.stop() == 0


# The daemon of the overflow test, with control.MAX_QUEUED lowered: 65,536 messages unread by
# one process take 32,768 ports' serve and stop (and their descriptors) in the master's queue.
SMALL_QUEUE = 64
OVERFLOW_PORTS = 450  # past the socketpair's ~280 messages and SMALL_QUEUE; under twice that
SMALL_QUEUE_DAEMON = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
    f"from honeytrap import control; control.MAX_QUEUED = {SMALL_QUEUE}; "
    "from honeytrap.cli import main; sys.exit(main())"
)


@pytest.mark.slow
def test_a_live_process_whose_channel_overflows_is_killed_and_its_ports_freed_at_once(
    lab: Lab, sensor: Honeytrap
) -> None:
    """A stopped process (it reads nothing) handed ports until the master's queue for it is
    full: the master closes the channel, kills the process (counted: server_kills, not a
    crash) and frees its ports; every port then answers, listening once in a live process."""
    sensor.program = [sys.executable, "-c", SMALL_QUEUE_DAEMON]
    spares = start_with_spares_stopped(sensor)
    ports = list(range(FIRST_PORT, FIRST_PORT + OVERFLOW_PORTS))
    refused = connect_each(lab, ports)
    killed = wait_figures(lab, lambda got: got.get("server_kills", 0) == 1, "the process killed")
    # The one attempt whose serve found the queue full is refused (a reset, counted); the
    # channel closes on it.
    assert len(refused) == 1 and killed["handover_failures"] == 1, (refused, killed)
    assert killed["server_crashes"] == 0
    [line] = [line for line in sensor.logfile.read_text().splitlines()
              if "left its control channel unread: killed;" in line]
    dead = int(line.split("server process ", 1)[1].split()[0])
    assert dead in spares and not alive(dead)
    # It had the first ports, all of them until it overflowed; they are the table's again and
    # go to the other processes (the other stopped spare among them: let it go on).
    assert f"its ports freed ({FIRST_PORT}/tcp {FIRST_PORT + 1}/tcp" in line
    for pid in spares:
        signal_quietly(pid, signal.SIGCONT)
    wrong = {port: answer[:40] for port in ports
             if not (answer := answered(lab, port)).startswith(b"HTTP/1.0 ")}
    assert wrong == {}
    # Listening once each (those not expired yet: the listen timeout is short), never in the
    # killed process.
    held = listeners(lab)
    assert held and all(len(pids) == 1 for pids in held.values())
    owners = {pid for pids in held.values() for pid in pids}
    assert dead not in owners and owners <= set(sensor.children())
    after = figures(lab)
    assert (after["server_kills"], after["server_crashes"]) == (1, 0)
    assert sensor.proc is not None and sensor.proc.poll() is None
    assert sensor.stop() == 0
