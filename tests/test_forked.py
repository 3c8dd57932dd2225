"""How the master's children end: kill_now kills a live child and returns once its descriptors
are closed (a port it listened on can be bound at once), before it is reaped; the crash and kill
lines name LOG_PORTS ports at most."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys

from honeytrap import forked

# A child that listens on a port of its own and says which, then waits to be killed.
LISTENER = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_kill_now_returns_once_the_childs_sockets_are_closed() -> None:
    child = subprocess.Popen([sys.executable, "-c", LISTENER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        os.kill(child.pid, signal.SIGSTOP)  # a stopped one too: SIGKILL still ends it
        assert forked.kill_now(child.pid)
        # Not reaped yet (a zombie), its listening socket already gone: the port binds again.
        assert os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))
            again.listen()
    finally:
        child.kill()
        assert child.wait(10) == -signal.SIGKILL
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_kill_now_with_descriptors_past_1024() -> None:
    """The master holds thousands of descriptors: the pidfd's number may be past select's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1200, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert forked.kill_now(child.pid)
    finally:
        for fd in held:
            os.close(fd)
        child.kill()
        assert child.wait(10) == -signal.SIGKILL


def test_kill_now_of_a_process_already_gone() -> None:
    child = subprocess.Popen(["true"])
    child.wait(10)
    assert forked.kill_now(child.pid)


def test_port_list_capped_with_the_count_of_the_rest() -> None:
    ports = [("tcp", 31000 + n) for n in range(1024)]
    line = forked.port_list(ports)
    assert line.split()[: forked.LOG_PORTS] == [f"{31000 + n}/tcp" for n in range(forked.LOG_PORTS)]
    assert line.endswith(f" and {1024 - forked.LOG_PORTS} more")
    assert len(line.split()) == forked.LOG_PORTS + 3
    exact = ports[: forked.LOG_PORTS]
    assert forked.port_list(exact) == " ".join(f"{p}/tcp" for _, p in exact)
    assert forked.port_list([("udp", 53)]) == "53/udp" and forked.port_list([]) == "none"
