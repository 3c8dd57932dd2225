"""The master's scheduling priority (master_nice): on a busy machine the master must not wait
its turn behind the processes it serves.

With the nfq monitor every new SYN is held in the kernel until the master decides, binds the port
and gives the verdict, and the kernel's SYN-ACK follows the verdict. A scanner that sends one SYN
per port and waits a fraction of a second for the answer (nmap --max-retries 0) sees a port
closed whenever the master was runnable but not running: on a 2-core machine loaded 9 deep the
master had ~20% of a core, about 3,000 decisions a second, and a 5,000 SYN/s sweep filled the
queue (bench/sweep.py: 0.5% of its SYNs answered in time). The master's work per packet is small
and bounded (headers only, max_server_rate starts a second), so a higher priority costs the
rest of the machine little and keeps the sensor's ports looking open under load. Its children
(server processes and the recorder: attacker bytes, plugins) run at the priority the daemon was
started with.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("honeytrap.priority")

# The nice value the master runs at by default: a weight ~9.5x a nice-0 process's (the kernel's
# sched_prio_to_weight), enough to take the core it needs from a loaded machine, short of the
# -20 kept for what the operator's own system needs first.
DEFAULT_MASTER_NICE = -10
# setpriority(2)'s range.
LOWEST_NICE = -20
HIGHEST_NICE = 19

_inherited: int | None = None  # the nice value the daemon was started with: its children's


def _current() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_master(nice: int) -> None:
    """Run the master at `nice` (at start and on a reload); a refusal (no CAP_SYS_NICE) is
    logged and the master goes on at the priority it has."""
    global _inherited
    if _inherited is None:
        _inherited = _current()
    if _current() == nice:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("cannot run the master at nice %d (%s): it stays at %d", nice, exc.strerror,
                    _current())


def for_child() -> None:
    """First thing in a forked child: back to the priority the daemon was started with (a
    higher nice value, which an unprivileged process may take too)."""
    if _inherited is not None and _current() != _inherited:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, _inherited)
        except OSError as exc:
            log.warning("cannot set a child's nice value back to %d (%s)", _inherited,
                        exc.strerror)
