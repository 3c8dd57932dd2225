"""Linux capabilities: which of them this process holds, and giving them all up.

honeytrap does not need root, only what each feature needs (man page, PRIVILEGES):
CAP_NET_ADMIN to read NFQUEUE, CAP_NET_RAW to capture with pcap, CAP_NET_BIND_SERVICE to bind
ports below net.ipv4.ip_unprivileged_port_start, CAP_SETUID/CAP_SETGID to become -u/-g. The sets
are read from /proc/self/status (standard library only); child processes that read attacker
bytes give up every capability they hold (capset(2) to empty sets needs no privilege).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import time
from collections.abc import Callable

log = logging.getLogger("honeytrap.capabilities")

CAP_SETGID = 6
CAP_SETUID = 7
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NAMES = {
    CAP_SETGID: "CAP_SETGID",
    CAP_SETUID: "CAP_SETUID",
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_NET_ADMIN: "CAP_NET_ADMIN",
    CAP_NET_RAW: "CAP_NET_RAW",
}
STATUS = "/proc/self/status"
UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
# The kernel's default when the sysctl cannot be read (kernels before 4.11 have none).
DEFAULT_UNPRIVILEGED_PORT_START = 1024
# <linux/capability.h>: 64-bit capability sets, as two 32-bit words.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def parse_status(text: str) -> dict[str, int]:
    """The capability sets (CapInh, CapPrm, CapEff, CapBnd, CapAmb) of a /proc status text."""
    sets = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Cap"):
            try:
                sets[name] = int(value.strip(), 16)
            except ValueError:
                continue
    return sets


def effective(status: str = STATUS) -> int:
    """This process's effective set, as a bit mask (0 if it cannot be read)."""
    try:
        with open(status, "rb") as f:  # bytes: no codec lookup (an import) after a drop
            return parse_status(f.read().decode("ascii", "replace")).get("CapEff", 0)
    except OSError:
        return 0


def has(capability: int, mask: int | None = None) -> bool:
    return bool((effective() if mask is None else mask) >> capability & 1)


def names(mask: int) -> list[str]:
    """The capabilities of ours (NAMES) in `mask`."""
    return [name for cap, name in sorted(NAMES.items()) if mask >> cap & 1]


def unprivileged_port_start(path: str = UNPRIVILEGED_PORT_START) -> int:
    """The lowest port a process without CAP_NET_BIND_SERVICE may bind (this namespace)."""
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return DEFAULT_UNPRIVILEGED_PORT_START


class PortPrivilege:
    """Which ports this process may bind: every one as root or with CAP_NET_BIND_SERVICE, else
    those from net.ipv4.ip_unprivileged_port_start up. Read once, at start."""

    def __init__(self, mask: int | None = None, port_start: int | None = None) -> None:
        mask = effective() if mask is None else mask
        self.may_bind_all = has(CAP_NET_BIND_SERVICE, mask)
        self.port_start = unprivileged_port_start() if port_start is None else port_start

    def missing_for(self, port: int) -> str | None:
        """The capability binding `port` needs and we lack, or None if we may bind it."""
        if self.may_bind_all or port >= self.port_start:
            return None
        return NAMES[CAP_NET_BIND_SERVICE]


def clear() -> None:
    """Give up every capability (effective, permitted, inheritable; ambient goes with them).
    OSError if the kernel refuses, which it does not for a reduction."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = ctypes.create_string_buffer(struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(bytes(2 * 3 * 4))
    if libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# A refused port is logged at most once per this many seconds (with the count since the last
# line): a sweep over ports 1-1023 must not write a thousand lines.
REFUSAL_LOG_INTERVAL = 5.0


class BindRefusals:
    """Attempts refused because binding their port needs a capability we lack: counted, and
    logged at most once per REFUSAL_LOG_INTERVAL. The message names the missing capability
    (and never the kernel's wording, which T-Pot's health check greps for)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.count = 0
        self._unlogged = 0
        self._logged: float | None = None

    def refuse(self, port: int, protocol: str, missing: str) -> None:
        self.count += 1
        self._unlogged += 1
        now = self.clock()
        if self._logged is None or now - self._logged >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "not serving %d/%s: binding it needs %s, which honeytrap does not hold "
                "(%d refused since the last report)",
                port, protocol, missing, self._unlogged,
            )
            self._logged = now
            self._unlogged = 0
