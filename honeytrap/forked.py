"""The master's children (server processes, the recorder): how they are forked, what each does
first, and how each ends. One place, so every child leaves the master's state behind alike."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import select
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from honeytrap import priority, proctitle

log = logging.getLogger("honeytrap.forked")

# A crash or kill line names this many of the process's ports, then "and N more": a process
# may host ports_per_process (1,024) of them, a line of 10 KiB that syslog would cut anyway.
LOG_PORTS = 16
# A child killed (SIGKILL) is waited for this long at most: one in uninterruptible sleep (a hung
# disk) may take longer, and the master's loop must go on.
KILL_WAIT = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim(3), None where the C library has none (musl)."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return cast(Callable[[int], int], function)


_MALLOC_TRIM = _malloc_trim()


def fork_child(what: str, main: Callable[[], int]) -> int | None:
    """Fork; the child runs `main` and exits with its status (1, logged, if it raised), never
    returning here. The parent gets the child's pid, or None (logged) if fork failed."""
    # Everything the master allocated so far goes to the collector's permanent generation, so
    # that a child's collections never write to those objects' pages: each server process would
    # otherwise copy most of the master's heap (bench/sweep.py: 7 MiB of a spare's PSS).
    gc.freeze()
    # The C heap's free pages go back to the kernel before the fork (malloc_trim(0): ~130 us the
    # first time, a few after): free pages of the master's heap are then neither shared with the
    # child nor copied into it when it allocates there (measured, master, recorder and one
    # server process: 0.35 MiB of anonymous PSS less in all, at rest and at 5,000 idle).
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    try:
        pid = os.fork()
    except OSError as exc:
        log.error("cannot fork %s: %s", what, exc.strerror)
        return None
    if pid == 0:
        status = 1
        try:
            priority.for_child()  # the master's higher priority is its own
            status = main()
        except BaseException:
            log.exception("%s failed", what)
        finally:
            logging.shutdown()
            os._exit(status)
    return pid


def leave_master(close_fds: Iterable[int], name: str) -> None:
    """First thing in a child: close the master's descriptors, leave signals to the master (it
    says what to do over the control channel; SIGTERM ends the child), and take a process name."""
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    proctitle.set_name(name)


def kill_unreachable(pid: int, ports: Sequence[tuple[str, int]]) -> None:
    """A server process that reads none of the master's messages (its control channel
    overflowed: hung, or stopped) is killed; its listening sockets are closed once this returns
    (unless it is still exiting after KILL_WAIT, as its log line says)."""
    exited = kill_now(pid)
    log.error("server process %d left its control channel unread: killed%s; its ports freed (%s)",
              pid, "" if exited else " (still exiting)", port_list(ports))


def kill_now(pid: int, wait: float = KILL_WAIT) -> bool:
    """SIGKILL a child and wait, `wait` seconds at most, until it has exited and its descriptors
    (listening sockets included) are closed; it is not reaped (SIGCHLD's handler does that, as
    for any child). True if it has exited. Through a pidfd: the pid cannot be another's."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        # Readable once the process has exited (a zombie: its files are closed by then). poll,
        # not select: the master's descriptors go past select's 1024.
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(wait * 1000))
    except ProcessLookupError:
        return True
    finally:
        os.close(pidfd)


def kill_all(pids: Iterable[int], what: str) -> None:
    """SIGKILL the children that did not stop in time, and reap them (at shutdown)."""
    for pid in list(pids):
        log.error("%s pid %d did not stop in time: killing it", what, pid)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def port_list(ports: Sequence[tuple[str, int]]) -> str:
    """A process's ports for its crash or kill line: LOG_PORTS at most, then "and N more"."""
    names = [f"{port}/{proto}" for proto, port in ports[:LOG_PORTS]]
    if len(ports) > LOG_PORTS:
        names.append(f"and {len(ports) - LOG_PORTS} more")
    return " ".join(names) or "none"
