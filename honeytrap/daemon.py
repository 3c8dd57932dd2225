"""Unix daemon plumbing: detaching (python-daemon) and systemd readiness (sd_notify)."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd gave one."""
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


def detach(keep_fds: list[int]) -> None:
    """Become a daemon: fork, new session, chdir /, umask 022, stdio to /dev/null."""
    import daemon  # python-daemon

    context = daemon.DaemonContext(
        files_preserve=keep_fds,
        working_directory="/",
        umask=0o022,
        detach_process=True,
        prevent_core=False,
        signal_map={},  # the master installs its own handlers
    )
    context.open()
