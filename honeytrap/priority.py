"""The master's scheduling (master_realtime, master_nice): on a busy machine the master must not
wait its turn behind the processes it serves.

With the nfq monitor every new SYN is held in the kernel until the master decides, binds the port
and gives the verdict, and the kernel's SYN-ACK only follows: a scanner that sends one SYN per
port and waits a fraction of a second for the answer (nmap --max-retries 0) sees a port closed
whenever the master was runnable but not running. On this 2-core machine, loaded 9 deep, the
master had ~20% of a core, about 3,000 decisions a second, and a 5,000 SYN/s sweep overflowed the
queue (bench/sweep.py: 0.5% of its SYNs answered in time). A nice value alone did not help: with
autogroups (kernel.sched_autogroup_enabled, the default) it only ranks the master among the
processes of its own session. So the master runs under the real-time round-robin policy at the
lowest real-time priority: it runs as soon as a packet is queued, ahead of every normal process;
its work per packet is small and bounded (headers only, max_server_rate starts a second) and it
sleeps in select() otherwise, and the kernel's real-time throttling
(kernel.sched_rt_runtime_us) leaves the rest of the machine its share even if it did not. Its
children (server processes, the recorder: attacker bytes, plugins) are forked back to the normal
policy (SCHED_RESET_ON_FORK) and the nice value the daemon was started with.
"""

from __future__ import annotations

import errno
import logging
import os

from honeytrap import log as logs

log = logging.getLogger("honeytrap.priority")

# The real-time priority the master runs at (1, the lowest: any real-time task the system has
# comes first).
REALTIME_PRIORITY = 1
# The nice value the master runs at by default: under the normal policy (master_realtime off),
# a weight ~9.5x a nice-0 process's (the kernel's sched_prio_to_weight) among the processes of
# its session; -20 is left for what the operator's own system needs first.
DEFAULT_MASTER_NICE = -10
# setpriority(2)'s range.
LOWEST_NICE = -20
HIGHEST_NICE = 19

_inherited: int | None = None  # the nice value the daemon was started with: its children's


def _current() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_master(nice: int, realtime: bool) -> None:
    """Run the master at `nice`, and under SCHED_RR if `realtime` (at start and on a reload); a
    refusal (no CAP_SYS_NICE, a container without real-time time) is logged and the master goes
    on as it is. Its children are forked under the normal policy either way."""
    global _inherited
    if _inherited is None:
        _inherited = _current()
    if _current() != nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:
            _refused(exc, f"at nice {nice}")
    policy, level = (os.SCHED_RR, REALTIME_PRIORITY) if realtime else (os.SCHED_OTHER, 0)
    try:
        os.sched_setscheduler(0, policy | os.SCHED_RESET_ON_FORK, os.sched_param(level))
    except OSError as exc:
        _refused(exc, f"under the {'real-time' if realtime else 'normal'} scheduling policy")


def _refused(exc: OSError, what: str) -> None:
    """Without CAP_SYS_NICE (a container such as T-Pot's, a non-root user) the master runs as it
    was started: said once at level 3 without the system's error text, which T-Pot's health
    check treats as a failure ("Operation not permitted", "Permission denied")."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        log.log(logs.NOTICE, "the master runs %s only with CAP_SYS_NICE: it stays at nice %d, "
                "%s policy", what, _current(), "real-time" if _realtime() else "normal")
    else:
        log.warning("cannot run the master %s (%s)", what, exc.strerror)


def _realtime() -> bool:
    return os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK in (os.SCHED_RR, os.SCHED_FIFO)


def for_child() -> None:
    """First thing in a forked child: back to the priority the daemon was started with (a
    higher nice value, which an unprivileged process may take too)."""
    if _inherited is not None and _current() != _inherited:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, _inherited)
        except OSError as exc:
            log.warning("cannot set a child's nice value back to %d (%s)", _inherited,
                        exc.strerror)
