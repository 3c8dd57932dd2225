"""Unix daemon plumbing: detaching, with the starter waiting for the daemon to be ready, and
systemd readiness (sd_notify).

Without -D, the process that was started must not return before the daemon runs: init scripts
and start-stop-daemon read the pid file the moment it exits. So `detach` keeps a pipe from the
daemon to the starter; the daemon writes its pid, then any error it logs, then "ready" when
the master says READY=1 (its monitor open, its recorder started, the pid file written). The
starter exits 0 on "ready", or 1 with the daemon's errors when the pipe closes without it (the
daemon ended) or the wait times out.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import time

# How long the starter waits for the daemon to be ready: plugins are loaded and the recorder
# forked before it is, which takes seconds on a loaded machine, never minutes.
START_TIMEOUT = 120.0
# What the starter reads at once, and the daemon's last errors it repeats (the first of a
# failure is the reason, the later ones its consequences; a flood must not flood the terminal).
_READ_SIZE = 64 * 1024
_ERRORS_SHOWN = 20
_READY = "ready"


class _Report(logging.Handler):
    """The daemon's side of the pipe: errors logged before it is ready go to the starter."""

    def __init__(self, fd: int) -> None:
        super().__init__(logging.ERROR)
        self.fd = fd
        self.pid = os.getpid()  # children forked before "ready" must not write here

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() == self.pid:
            self.send("error " + " ".join(self.format(record).split()))

    def send(self, line: str) -> None:
        try:
            os.write(self.fd, (line + "\n").encode("utf-8", "replace"))
        except OSError:
            pass  # the starter gave up waiting: nobody to tell

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


_report: _Report | None = None


def notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd gave one;
    READY=1 also tells a waiting starter (detach) that the daemon runs."""
    if "READY=1" in state.split("\n"):
        _ready()
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError:
        pass


def _ready() -> None:
    global _report
    if _report is None or _report.pid != os.getpid():
        return
    _report.send(_READY)
    logging.getLogger().removeHandler(_report)
    _report.close()
    _report = None


def report_fds() -> list[int]:
    """Descriptors the master's children must close (the starter's pipe, until ready)."""
    return [_report.fd] if _report is not None and _report.fd >= 0 else []


def detach(keep_fds: list[int]) -> None:
    """Become a daemon: fork, new session, fork again (never a session leader: no controlling
    terminal can be acquired), chdir /, umask 022, stdio to /dev/null. Returns in the daemon
    only; the starting process waits for its report and exits. `keep_fds` (the pid file's lock,
    the logs) stay open: nothing else is closed, our descriptors are all close-on-exec."""
    global _report
    del keep_fds  # kept open: only stdio is replaced
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        os.waitpid(first, 0)
        _exit(_wait_for_daemon(read_end))
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _report = _Report(write_end)
    _report.send(f"pid {os.getpid()}")
    logging.getLogger().addHandler(_report)


def _exit(status: int) -> None:
    """The starter leaves without unwinding: the pid file and the logs are the daemon's now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _wait_for_daemon(fd: int, timeout: float = START_TIMEOUT) -> int:
    """The starter: 0 once the daemon reports ready; 1, with its errors on stderr, otherwise."""
    data = b""
    pid = "?"
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        lines = data.split(b"\n")
        for line in lines[:-1]:
            word, _, rest = line.decode("utf-8", "replace").partition(" ")
            if word == _READY:
                return 0
            if word == "pid":
                pid = rest
            elif word == "error" and len(errors) < _ERRORS_SHOWN:
                errors.append(rest)
        data = lines[-1]
        left = deadline - time.monotonic()
        if left <= 0:
            sys.stderr.write(
                f"honeytrap: the daemon (pid {pid}) was not ready within {timeout:g} s; "
                "it may still be starting: see its log file\n"
            )
            return 1
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            break
        data += chunk[:_READ_SIZE]
        data = data[-_READ_SIZE:]  # an unterminated flood: keep the tail only
    for error in errors:
        sys.stderr.write(f"honeytrap: {error}\n")
    sys.stderr.write(f"honeytrap: the daemon (pid {pid}) ended before it was ready"
                     + ("" if errors else ": see its log file") + "\n")
    return 1


