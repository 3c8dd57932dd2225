"""Dropping root, as the man page asks: "use the -u and -g flags to drop privileges early".

Dynamic servers get their listening socket bound by the master (root) and drop to the
configured user and group before they read a single attacker byte.

Started without root (T-Pot's container: uid 2000 with only CAP_NET_ADMIN), -u/-g naming the
current user and group mean nothing to change; naming someone else needs CAP_SETUID and
CAP_SETGID, checked at start. Either way the children give up every capability they hold.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass

from honeytrap import capabilities
from honeytrap.errors import ConfigError

log = logging.getLogger("honeytrap.privileges")


@dataclass(frozen=True)
class Identity:
    """Who dynamic servers run as. None: stay as we are (root; warned about at start)."""

    uid: int | None
    gid: int | None
    user: str = ""
    group: str = ""


def resolve(user: str, group: str) -> Identity:
    """Look up -u/-g (names or numbers). A missing user or group is a configuration error:
    starting anyway as root would silently defeat the operator's intent."""
    uid = gid = None
    if user:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except (KeyError, OverflowError) as exc:
            raise ConfigError(f"no such user: {user!r}", key="user") from exc
        uid = entry.pw_uid
        gid = entry.pw_gid  # the user's primary group unless -g says otherwise
    if group:
        try:
            gentry = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except (KeyError, OverflowError) as exc:
            raise ConfigError(f"no such group: {group!r}", key="group") from exc
        gid = gentry.gr_gid
    if os.geteuid() != 0 and uid in (None, os.geteuid()) and gid in (None, os.getegid()):
        return Identity(None, None, user, group)  # already them: nothing to drop
    return Identity(uid, gid, user, group)


def check_can_become(identity: Identity) -> None:
    """ConfigError if, without root, we would have to switch to another user or group and lack
    the capability to (rather than fail in every server process)."""
    if os.geteuid() == 0:
        return
    mask = capabilities.effective()
    for wanted, now, cap, what in (
        (identity.uid, os.geteuid(), capabilities.CAP_SETUID, identity.user),
        (identity.gid, os.getegid(), capabilities.CAP_SETGID, identity.group),
    ):
        if wanted not in (None, now) and not capabilities.has(cap, mask):
            raise ConfigError(
                f"cannot switch to {what!r}: running as uid {os.geteuid()} without "
                f"{capabilities.NAMES[cap]}; run as that user, or name yourself",
                key="user" if cap == capabilities.CAP_SETUID else "group",
            )


def drop(identity: Identity) -> None:
    """setgroups, setgid, setuid, in that order, then check root cannot be regained."""
    if identity.gid is not None:
        os.setgroups([])
        os.setgid(identity.gid)
    if identity.uid is not None:
        os.setuid(identity.uid)
        if identity.uid != 0:
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise RuntimeError("privileges were not dropped: setuid(0) succeeded")
    if identity.gid is not None and os.getgid() != identity.gid:
        raise RuntimeError("group was not changed")
    if os.geteuid() != 0:
        # Whatever the master held (CAP_NET_ADMIN, ...) is not for a process reading attacker
        # bytes; its sockets are already bound.
        capabilities.clear()



def closed_to(path: str, identity: Identity) -> str | None:
    """The first directory on the way to `path` (itself included) that `identity` cannot enter,
    by the mode bits, with no supplementary groups (drop() clears them); None if every one can
    be entered, or when `identity` keeps root. Checked as root before the drop: a directory the
    unprivileged processes open by path must be reachable, or they fail on every attack."""
    if identity.uid is None or identity.uid == 0:
        return None
    current = os.path.abspath(path)
    chain = [current]
    while (parent := os.path.dirname(current)) != current:
        chain.append(parent)
        current = parent
    for directory in reversed(chain):
        try:
            st = os.stat(directory)
        except OSError:
            return directory
        if st.st_uid == identity.uid:
            bit = stat.S_IXUSR
        elif identity.gid is not None and st.st_gid == identity.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None
