"""Process names: `ps`, `top` and /proc/<pid>/comm tell the master's children apart.

The recorder is `honeytrap-rec`; a server process `ht-<port>/<protocol>` (e.g. `ht-8080/tcp`),
with `+N` when it serves N more ports (`ht-8080/tcp+3`). The master keeps its command line.
Set with the maintained `setproctitle` package: it rewrites the command line that `ps -o args`
and `top -c` show, and the kernel's name (`ps -o comm`, truncated there to 15 bytes).
"""

from __future__ import annotations

import logging

import setproctitle

log = logging.getLogger("honeytrap.proctitle")

# The kernel's limit for /proc/<pid>/comm (TASK_COMM_LEN, 16 with the terminating NUL): the
# names below are chosen to fit, so `ps -o comm` shows them whole.
MAX_NAME = 15

RECORDER = "honeytrap-rec"


def server_name(port: int, protocol: str, others: int = 0) -> str:
    """A server process: its oldest port, and how many more it serves ("ht-8080/tcp+3")."""
    return f"ht-{port}/{protocol}" + (f"+{others}" if others else "")


def set_name(name: str) -> None:
    """Best effort: a failure is logged, never fatal."""
    try:
        setproctitle.setproctitle(name)
    except (OSError, ValueError) as exc:
        log.debug("cannot set the process name: %s", exc)
