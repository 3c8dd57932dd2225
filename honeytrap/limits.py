"""How big the master's port table may grow, and what it keeps ahead: the named limits of the
sizing policy (pending attempts, spare processes, descriptors per port and per process) and
`Limits`, the figures a PortTable (porttable.py) decides by, derived from the configuration."""

from __future__ import annotations

from dataclasses import dataclass

from honeytrap.config import Config

# Attempts held for one port while its previous server releases it (its STOP_GRACE in
# dynamicserver.py), and in all: an nfq packet held here is one of the kernel's QUEUE_MAXLEN
# (monitor/nfq.py).
MAX_PENDING_PER_PORT = 64
MAX_PENDING = 4096
# A held attempt whose port is not released within this long gets its verdict anyway (a stuck
# process must not hold packets for good): counted refused_pending.
PENDING_TIMEOUT = 2.0
# Empty server processes kept forked ahead, so that a new port is a handover (~0.1 ms), never a
# fork (~15 ms of CPU with the child's copy-on-write faults) on the first SYN's path. Two: a
# sweep fills one while the master forks the next when it has nothing else to do.
SPARE_PROCESSES = 2
# While a process already serving ports has room for another, a new port goes to it (the fullest
# with room), not to a spare: one spare is then enough, and the second is ~3 MiB of private
# memory for nothing (a spare's Private_Dirty; bench/idle.py). A sweep that fills the serving
# processes wants SPARE_PROCESSES again, forked while the last spare takes the next ports.
SPARES_WHILE_SERVING_HAS_ROOM = 1
# ... and none at all while one has room for this many more ports (and their descriptors): the
# next ports go to it, and once it is down to this much room a spare is forked, off the
# packet's path, well before it is full (a sweep at 5,000 new ports a second takes 100 ms to
# use it; a fork takes ~15 ms). So with ports_per_process at or above it (the default 1,024), one
# spare waits for the first port, and a sensor serving a few ports holds one server process:
# a spare at rest is ~3.7 MiB of PSS (its Private_Dirty; bench/idle.py). Below it, as before.
SPARE_HEADROOM = 512


def spares_at_rest(ports_per_process: int) -> int:
    """The spares a started sensor keeps before its first port."""
    return 1 if ports_per_process >= SPARE_HEADROOM else SPARE_PROCESSES
# Server processes that were retired (or lost their ports) but still finish their connections
# may be alive beside the ones serving: this many times what max_servers ports need.
DRAINING_FACTOR = 1
# Descriptors one connection may hold: two in mirror and proxy mode (the attacker's and ours).
FDS_PER_CONNECTION = 2
# Descriptors a process keeps for itself besides its ports' (control channel, recorder link,
# the event loop, logs, a template file being read).
FD_RESERVE = 256
# Past this the kernel refuses RLIMIT_NOFILE (fs.nr_open's default): the budget is capped here.
NR_OPEN_DEFAULT = 1024 * 1024


def port_fds(config: Config) -> int:
    """What one port may hold: its listening socket and max_connections connections."""
    return 1 + FDS_PER_CONNECTION * config.max_connections


def process_fd_budget(config: Config, nr_open: int = NR_OPEN_DEFAULT) -> int:
    """Descriptors one server process may hold (its RLIMIT_NOFILE): ports_per_process times what
    each port may hold, plus its own, capped at what the kernel allows (fs.nr_open)."""
    return min(nr_open, FD_RESERVE + config.ports_per_process * port_fds(config))


def _for_ports(limit: int) -> int:
    """Of a process's descriptor limit, what its ports may use (FD_RESERVE is its own; under a
    tiny limit, half)."""
    return max(limit - FD_RESERVE, limit // 2, 1)


@dataclass(frozen=True)
class Limits:
    max_servers: int
    ports_per_process: int
    max_server_rate: float
    max_processes: int
    fd_budget: int  # descriptors a process's ports may use (its limit less FD_RESERVE)
    port_fds: int  # descriptors a new port may need in its process
    spare_processes: int = SPARE_PROCESSES
    max_pending_per_port: int = MAX_PENDING_PER_PORT
    max_pending: int = MAX_PENDING
    pending_timeout: float = PENDING_TIMEOUT

    @classmethod
    def from_config(cls, config: Config, nr_open: int = NR_OPEN_DEFAULT) -> Limits:
        per = config.ports_per_process
        serving = -(-config.max_servers // per)
        return cls(
            max_servers=config.max_servers,
            ports_per_process=per,
            max_server_rate=config.max_server_rate,
            max_processes=(1 + DRAINING_FACTOR) * serving + SPARE_PROCESSES,
            fd_budget=_for_ports(process_fd_budget(config, nr_open)),
            # What a new port needs free in its process: what it may hold, or, where the limit
            # is capped below ports_per_process times that, its even share of the limit (else a
            # capped limit would leave room for one port per process).
            port_fds=max(1, min(port_fds(config),
                                _for_ports(process_fd_budget(config, nr_open)) // per)),
        )
