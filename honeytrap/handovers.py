"""The master's handovers: a fresh port bound as root and its listening socket (with its template
file) handed to a server process over its control channel, corked (control.HANDOVER_BATCH), and
what is in flight meanwhile.

A bound socket stays the master's descriptor until its batch is delivered: when the server
processes are starved of CPU (a 65,535-port sweep at 5,000 SYN/s on a saturated machine) the
handovers pile up in the channels' queues, and the master once filled its 20,000-descriptor limit
with them and could no longer bind anything (7,102 bind failures). So the descriptors held in
undelivered handovers are bounded (`handover_fd_limit`): past it a new port is refused before it
is bound (refused_handovers: the packet is accepted, the kernel answers it with a reset), and the
master keeps descriptors for its own work. And a port stopped while its Serve still waits in the
channel is dropped there, both messages and its socket at once (`stop`): the process never
hears of it, the port table has it released without a round trip.
"""

from __future__ import annotations

import logging
import socket

from honeytrap import capabilities, control, templates
from honeytrap.config import Config, PortConf
from honeytrap.control import Channel
from honeytrap.listener import PortInUse, bind_port
from honeytrap.refusals import RefusalLog

log = logging.getLogger("honeytrap.master")

# Of the master's RLIMIT_NOFILE, what it keeps for itself whatever its handovers hold: its
# monitor, signal socketpair, selector, metrics listener and scrapes, log files, a template
# file being opened, the recorders' channels and links, and a fork's new socketpair (two). The
# server processes' channels (one each, max_processes of them) are added to it.
MASTER_FD_RESERVE = 512


# A port stopped while its serve still waits in the master is dropped there only if it was
# started at least this long ago: a handshake to it may be in progress (the SYN-ACK sent, the
# client's ACK on its way: its connect() has returned), which closing the listener would reset
# with the connection lost; the client's ACK comes back within a round trip, and a lost one is
# retried with the SYN-ACK, after 1 s. Younger ports get their stop sent as before (the process
# drains them). A sweep's evictions hit ports started a second or more ago.
DROP_AFTER = 1.0


def handover_fd_limit(nofile: int, max_processes: int) -> int:
    """Descriptors the master may hold in handovers not yet delivered: its descriptor limit less
    MASTER_FD_RESERVE and a channel per server process (a quarter of the limit at least, so a
    tiny limit still serves)."""
    return max(nofile - MASTER_FD_RESERVE - max_processes, nofile // 4)


class Handovers:
    def __init__(self, limit: int, refusals: RefusalLog) -> None:
        self.limit = limit
        self.tally = control.FdTally()  # shared by every server process's channel
        self.refusals = refusals
        self.bind_refusals = capabilities.BindRefusals()
        self.corked: list[Channel] = []  # channels gathering this round's handovers

    def full(self) -> bool:
        """No room for another port's descriptors (its socket, its template) in flight."""
        return self.tally.held + 2 > self.limit

    def channel(self, sock: socket.socket) -> Channel:
        """A server process's control channel, counted in this tally."""
        return Channel(sock, tally=self.tally)

    def start(self, config: Config, conf: PortConf, family: int, channel: Channel | None,
              template_names: frozenset[str]) -> str:
        """Bind `conf`'s port and hand its socket (and template) to `channel`'s process, corked:
        "" if it is on its way, else the port table's START_FAILURES counter it failed under."""
        if self.full():
            self.refusals.note(logging.WARNING, "refused_handovers",
                               "refusing %d/%s: %d descriptors in handovers not yet delivered",
                               conf.port, conf.protocol, self.tally.held)
            return "refused_handovers"
        try:
            sock = bind_port(conf.protocol, conf.port, config.bind_address, family)
        except PortInUse:
            log.debug("port %d/%s is served by someone else", conf.port, conf.protocol)
            return "ports_in_use"
        except PermissionError:  # a policy beyond the capability check (LSM, sysctl changed)
            self.bind_refusals.refuse(conf.port, conf.protocol, "a permission the system refuses")
            return "refused_privileged"
        except OSError as exc:
            self.refusals.note(logging.ERROR, "bind", "cannot bind %d/%s: %s", conf.port,
                               conf.protocol, exc)
            return "bind_failures"
        if channel is None:  # the process went while the port was decided on
            sock.close()
            handed = False
        else:
            handed = self._hand(channel, config, conf, sock.detach(), template_names)
        if not handed:
            self.refusals.note(logging.ERROR, "handover", "cannot hand %d/%s to its process",
                               conf.port, conf.protocol)
            return "handover_failures"
        return ""

    def _hand(self, channel: Channel, config: Config, conf: PortConf, sock: int,
              template_names: frozenset[str]) -> bool:
        """The port's bound socket (the channel's now) and template to the process, corked."""
        fds = [sock]
        if f"{conf.port}_{conf.protocol}" in template_names:
            template = templates.open_template(config.response_dir, conf.protocol, conf.port)
            fds += [] if template is None else [template]
        serve = control.Serve((conf.protocol, conf.port), len(fds))
        return control.later(channel, self.corked).hand(serve, fds)

    def stop(self, channel: Channel, key: control.Key, age: float) -> bool:
        """Stop `key` (started `age` seconds ago) in `channel`'s process: True if its Serve was
        still undelivered and is dropped with its socket (the port is free now: no Stop sent),
        else the Stop goes with the round's others (one send: control.later)."""
        if age >= DROP_AFTER and channel.cancel_serve(key):
            return True
        control.later(channel, self.corked).send_message(control.Stop(key))
        return False

    def uncork(self) -> None:
        """Send what the round gave the processes."""
        control.uncork(self.corked)
