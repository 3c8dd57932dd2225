"""The one configuration object, built and validated up front (STYLE.md).

`load_config(path)` reads a file in the original's syntax (see confparse.py) into a `Config`;
`apply_options` lays command-line values over it (the man page: the command line wins).
Nothing here is read at import time; the CLI passes the object down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from honeytrap.attack import Mode

# A plugin option value as the config syntax can express it: a string, a list, or a block.
OptionValue: TypeAlias = "str | list[OptionValue] | dict[str, OptionValue]"

# Named limits and defaults. Each says why.
DEFAULT_CONFIG_FILE = "/etc/honeytrap/honeytrap.conf"  # man page / REFERENCE.md
DEFAULT_LOGFILE = "/var/log/honeytrap.log"
DEFAULT_PIDFILE = "/var/run/honeytrap.pid"
DEFAULT_LISTEN_TIMEOUT = 30.0  # man page: "-l ... Default is 30" (the C code used 120)
DEFAULT_READ_TIMEOUT = 1.0  # man page: "-r ... Default is 1"
DEFAULT_LOGLEVEL = 3  # man page: "-t ... Default is 3"
DEFAULT_READ_LIMIT = 20 * 1024 * 1024  # the shipped honeytrap.conf's read_limit (20971520)
# An Internet-wide sweep touches every port: at most this many dynamic servers live at once;
# past it the least recently used idle server is stopped, else the port is refused and counted.
DEFAULT_MAX_SERVERS = 64
# Concurrent connections one dynamic server serves; more wait in the kernel's backlog.
DEFAULT_MAX_CONNECTIONS = 4096
# New dynamic servers started per second at most (a fork costs a few ms; a sweep must not
# turn into a fork storm). Attempts over the rate are refused and counted.
DEFAULT_MAX_SERVER_RATE = 200
# Normal mode: how often the template is repeated on an idle connection, as the C original
# did (sent after each read timeout without data, 10 times; closed after 11 idle timeouts).
DEFAULT_TEMPLATE_REPEAT = 10


@dataclass(frozen=True)
class ProxyTarget:
    host: str
    port: int
    protocol: str  # "tcp" or "udp"


@dataclass(frozen=True)
class PortConf:
    """How one protocol/port pair is handled."""

    protocol: str  # "tcp" or "udp"
    port: int
    mode: Mode
    proxy: ProxyTarget | None = None
    name: str = ""  # the proxy section's name, e.g. "smtp-relay"


@dataclass(frozen=True)
class PluginSpec:
    """A `plugin-<Name>` line: the module to load and its options, in file order."""

    name: str
    options: dict[str, OptionValue]
    file: str = ""
    line: int = 0


@dataclass
class Config:
    # The original's top-level keys.
    logfile: str = DEFAULT_LOGFILE
    pidfile: str = DEFAULT_PIDFILE
    response_dir: str = "/etc/honeytrap/responses"
    plugin_dir: str = "/usr/lib/honeytrap/plugins"
    read_limit: int = DEFAULT_READ_LIMIT
    bind_address: str = ""  # empty: all addresses
    replace_private_ips: bool = False
    promisc: bool = False
    user: str = ""
    group: str = ""
    portconf_default: Mode = Mode.NORMAL
    ports: dict[tuple[str, int], PortConf] = field(default_factory=dict)
    plugins: list[PluginSpec] = field(default_factory=list)
    # Command-line only in the original (also accepted as keys here).
    listen_timeout: float = DEFAULT_LISTEN_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    loglevel: int = DEFAULT_LOGLEVEL
    foreground: bool = False
    interface: str = ""
    address: str = ""
    mirror_all: bool = False  # -m
    bpf_expression: str = ""
    # Our extensions (documented in man/honeytrap.8).
    monitor: str = "pcap"  # "pcap" | "nfq"
    nfq_queue: int = 0
    max_servers: int = DEFAULT_MAX_SERVERS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_server_rate: int = DEFAULT_MAX_SERVER_RATE
    template_repeat: int = DEFAULT_TEMPLATE_REPEAT
    download_allow: list[str] = field(default_factory=list)
    # Where this came from, for messages and SIGHUP.
    source: str = ""

    def port_mode(self, protocol: str, port: int) -> PortConf:
        """The handling of protocol/port: its portconf entry, else the default (-m: mirror)."""
        conf = self.ports.get((protocol, port))
        if conf is not None:
            return conf
        default = Mode.MIRROR if self.mirror_all else self.portconf_default
        return PortConf(protocol, port, default)
