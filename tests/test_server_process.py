"""Server processes hosting several dynamic servers (ports_per_process), end to end: the real
daemon in a sensor namespace, real SYNs and datagrams from the attacker namespace.

A new port goes to a running process with room (its bound socket and template file handed over
with SCM_RIGHTS); a process is forked only when none has room; each port keeps its own listen
timeout; a process serving no port exits; a crash frees its ports for a new process."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon import Honeytrap, tpot_rules
from netns import Lab
from test_daemon import connect, payload_of, udp_socket

WAIT = 20.0


@pytest.fixture
def sensor(ht: Honeytrap) -> Honeytrap:
    """conftest.py's daemon, 3 ports a process, -l 30, -r 0.2."""
    ht.args += ["-l", "30", "-r", "0.2"]
    ht.extra_config = 'ports_per_process = "3"'
    return ht


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def exchange(lab: Lab, port: int, data: bytes) -> bytes:
    """Connect, send, read the answer (the template, one read timeout later), close."""
    sock = connect(lab.attacker, lab.sensor.ip4, port)
    try:
        sock.sendall(data)
        return sock.recv(65536)
    finally:
        sock.close()


def test_ports_share_processes_up_to_ports_per_process(lab: Lab, sensor: Honeytrap) -> None:
    sensor.start()
    ports = [7101, 7102, 7103, 7104, 7105]
    for port in ports:
        assert exchange(lab, port, f"to {port}".encode()) == b"\n"  # no template: a newline
    names = sorted(sensor.server_names().values())
    assert names == ["ht-7101/tcp+2", "ht-7104/tcp+1"]  # 3 + 2 ports, two forks for five
    records = sensor.wait_records(len(ports))
    assert sorted(payload_of(r) for r in records) == [f"to {p}".encode() for p in ports]
    log = sensor.logfile.read_text()
    for port in ports:
        assert f"dynamic server for {port}/tcp started" in log
    assert sensor.stop() == 0
    assert len(sensor.records()) == len(ports)


def test_a_handed_over_port_gets_its_template_from_a_directory_only_root_reads(
    lab: Lab, sensor: Honeytrap, tmp_path: Path
) -> None:
    """The process runs as nobody and cannot open the template; the master opens it and hands
    the open file over with the socket."""
    private = tmp_path / "templates"
    private.mkdir(mode=0o700)
    (private / "7202_tcp").write_bytes(b"220 second port\r\n")
    (private / "7203_udp").write_bytes(b"udp answer")
    os.mkfifo(private / "7204_tcp")  # not a regular file: refused, never opened to block
    sensor.response_dir = private
    sensor.start()
    assert exchange(lab, 7201, b"first") == b"\n"
    (pid,) = sensor.children()
    assert exchange(lab, 7202, b"second") == b"220 second port\r\n"
    udp = udp_socket(lab.attacker, socket.AF_INET)
    try:
        udp.sendto(b"third", (lab.sensor.ip4, 7203))
        assert udp.recvfrom(65535)[0] == b"udp answer"
    finally:
        udp.close()
    assert exchange(lab, 7204, b"fourth") == b"\n"
    assert pid in sensor.children()  # the first three ports in the one process
    assert "7204_tcp is not a regular file" in sensor.logfile.read_text()
    wait_until(lambda: len(sensor.records()) == 4, "four records")
    assert sensor.stop() == 0


@pytest.mark.slow
def test_each_port_expires_on_its_own_and_an_empty_process_exits(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.args = ["-u", "nobody", "-g", "nogroup", "-l", "1"]  # -r 1: `held` lasts 11 s
    sensor.start()
    exchange(lab, 7301, b"a")
    (pid,) = sensor.children()
    # Keep 7302 in use past the listen timeout of 7301.
    held = connect(lab.attacker, lab.sensor.ip4, 7302)
    wait_until(lambda: sensor.server_names().get(pid) == "ht-7302/tcp", "7301 let go")
    assert exchange(lab, 7302, b"b") == b"\n"  # 7302 still served meanwhile
    held.close()
    wait_until(lambda: sensor.children() == [], "the empty process to exit")
    assert exchange(lab, 7301, b"again") == b"\n"  # a new process for the port
    assert sorted(payload_of(r) for r in sensor.wait_records(4)) == [b"", b"a", b"again", b"b"]
    assert sensor.stop() == 0


def test_a_crashed_process_frees_its_ports_for_a_new_one(lab: Lab, sensor: Honeytrap) -> None:
    sensor.start()
    for port in (7401, 7402):
        exchange(lab, port, b"before")
    (pid,) = sensor.children()
    # A server hands an attack to the recorder up to FLUSH_DELAY after its connection closed:
    # a kill before that loses the two (by design: this test is about the ports, not loss).
    wait_until(lambda: len(sensor.records()) == 2, "the two records before the kill")
    os.kill(pid, signal.SIGKILL)
    # The master's line, logged once it reaped the process and freed its ports (ps stops listing
    # it as a server once it is a zombie, before the master has seen anything).
    crashed = f"server process {pid} (ports 7401/tcp 7402/tcp) exited with status -9"
    wait_until(lambda: crashed in sensor.logfile.read_text(), "the master to see the crash")
    for port in (7401, 7402):
        assert exchange(lab, port, b"after") == b"\n"
    (new,) = sensor.children()
    assert new != pid
    wait_until(lambda: len(sensor.records()) == 4, "four records")
    assert sensor.stop() == 0


def queued_in_nfqueue(lab: Lab) -> int:
    """Packets the sensor's NFQUEUE holds for the master now (/proc/net/netfilter/nfnetlink_queue,
    its third field)."""
    fields = lab.sensor.cmd("cat", "/proc/net/netfilter/nfnetlink_queue", check=False).split()
    return int(fields[2]) if len(fields) > 2 else 0


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_a_syn_read_with_its_process_death_is_decided_after_it(
    lab: Lab, sensor: Honeytrap
) -> None:
    """A SYN to a port whose process died, read in the same pass as the process's end (its
    channel's EOF, SIGCHLD), is decided once the table knows: a new process serves it. The
    master is stopped while the SYN queues and the process dies, so both wait for one pass; the
    SYN came first, so it is first in the master's epoll list (before, it got the served port's
    verdict: a reset). T-Pot's rules, which queue every new SYN, a served port's too: with the
    README's socket match a served port's SYN never reaches the master."""
    for tool in ("iptables", "ip6tables"):
        lab.sensor.cmd(tool, "-F", "INPUT")
    tpot_rules(lab.sensor)
    sensor.start()
    assert exchange(lab, 7451, b"before") == b"\n"
    (pid,) = sensor.children()
    master = sensor.master_pid()
    os.kill(master, signal.SIGSTOP)
    answer: list[bytes | BaseException] = []
    client = threading.Thread(target=lambda: answer.append(_exchange_or_error(lab, 7451)))
    try:
        client.start()
        wait_until(lambda: queued_in_nfqueue(lab) >= 1, "the SYN to wait in the queue")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: process_state(pid) == "Z", "the process to die")
    finally:
        os.kill(master, signal.SIGCONT)
        client.join(WAIT)
    assert answer == [b"\n"]
    wait_until(lambda: len(sensor.records()) == 2, "two records")
    assert sensor.stop() == 0


def _exchange_or_error(lab: Lab, port: int) -> bytes | BaseException:
    try:
        return exchange(lab, port, b"after")
    except OSError as exc:
        return exc


def test_reload_retires_every_process_and_new_ports_go_to_a_new_one(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.start()
    exchange(lab, 7501, b"old")
    (old,) = sensor.children()
    sensor.signal(signal.SIGHUP)
    sensor.wait_for("READY=1")
    wait_until(lambda: old not in sensor.children(), "the old process to exit")
    exchange(lab, 7502, b"new")
    (new,) = sensor.children()
    assert sensor.server_names()[new] == "ht-7502/tcp"
    wait_until(lambda: len(sensor.records()) == 2, "two records")
    assert sensor.stop() == 0


def test_one_port_per_process_as_the_original(lab: Lab, sensor: Honeytrap) -> None:
    sensor.extra_config = 'ports_per_process = "1"'
    sensor.start()
    for port in (7601, 7602, 7603):
        exchange(lab, port, b"x")
    assert sorted(sensor.server_names().values()) == ["ht-7601/tcp", "ht-7602/tcp",
                                                      "ht-7603/tcp"]
    assert sensor.stop() == 0
    assert len(sensor.records()) == 3
