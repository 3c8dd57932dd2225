"""The descriptor limit (RLIMIT_NOFILE) of the master and so of every server process it forks:
raised at start to the per-process descriptor budget (limits.process_fd_budget)."""

from __future__ import annotations

import logging
import resource

from honeytrap import limits
from honeytrap.config import Config

log = logging.getLogger("honeytrap.master")

NR_OPEN = "/proc/sys/fs/nr_open"


def nr_open() -> int:
    """The kernel's ceiling for RLIMIT_NOFILE (fs.nr_open), or its default if unreadable."""
    try:
        with open(NR_OPEN, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return limits.NR_OPEN_DEFAULT


def raise_fd_limit(config: Config) -> int:
    """RLIMIT_NOFILE for the master and so for every server process it forks: the per-process
    descriptor budget (limits.process_fd_budget), or the hard limit where root may not raise
    it (logged). Returns the limit in force."""
    wanted = limits.process_fd_budget(config, nr_open())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.warning("descriptor limit %d is below the %d budget of a server process "
                    "(ports_per_process x what each port may hold)", hard, wanted)
        return hard
