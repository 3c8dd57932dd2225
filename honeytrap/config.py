"""The one configuration object, built and validated up front.

`load_config(path)` reads a file in the original's syntax (see confparse.py) into a `Config`;
`apply_overrides` (alias `apply_options`) lays command-line values over it (the man page: the
command line wins). Nothing here is read at import time; the CLI passes the object down.

Checking follows the original's readconf.c where it was strict (portconf_default "proxy" is an
error, a protocol/port pair configured twice is an error) and is stricter where it was sloppy
(it took "t" and "" for tcp, ports by atoi, a proxy map without target_host). Unknown keys are
warnings, kept in `Config.warnings`, so a file written for a newer or older honeytrap still starts.
The reader of each kind of value (paths, booleans, numbers in their ranges, addresses, ports...)
is in confvalues.py; this module says which key takes which, and builds the Config.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from honeytrap import background, budget, confparse, confvalues, priority, reflector, resources
from honeytrap.attack import Mode
from honeytrap.confparse import Block, Entry, ListNode, Scalar, Value
from honeytrap.monitor import check_monitor_name
from honeytrap.state import DEFAULT_STATE_DIR

# A plugin option value as the config syntax can express it: a string, a list, or a block.
OptionValue: TypeAlias = "str | list[OptionValue] | dict[str, OptionValue]"

# Named limits and defaults. Each says why.
DEFAULT_CONFIG_FILE = "/etc/honeytrap/honeytrap.conf"  # honeytrap(8), -C
DEFAULT_LOGFILE = "/var/log/honeytrap.log"
DEFAULT_PIDFILE = "/run/honeytrap.pid"
DEFAULT_LISTEN_TIMEOUT = 30.0  # man page: "-l ... Default is 30" (the C code used 120)
DEFAULT_READ_TIMEOUT = 1.0  # man page: "-r ... Default is 1"
DEFAULT_LOGLEVEL = 3  # man page: "-t ... Default is 3"
DEFAULT_READ_LIMIT = 20 * 1024 * 1024  # the shipped honeytrap.conf's read_limit (20971520)
# Bytes of finished attacks (encoded) the server processes together hold for the recorder until
# it acknowledges them (unacked.py); past it they accept no new connection until it catches up.
# 64 MiB is ~25 s of a 5,500 attacks/s load of small attacks (~450 bytes encoded, bench/'s) on
# top of the recorder's own queue (recorder.MAX_QUEUED_ATTACKS), or three attacks of the
# default read_limit; the server processes' memory may then grow by about it (a frame is kept
# once: recorderlink.SEND_BUFFER_BYTES at most are copied ahead of the link). It was 256 MiB
# per server process: a soak with a recorder ~18% slower than the load grew one from 93 to
# 477 MiB of PSS.
DEFAULT_UNACKNOWLEDGED_LIMIT = 64 * 1024 * 1024
# An Internet-wide sweep touches every port: at most this many dynamic servers live at once;
# past it the least recently used idle server is stopped, else the port is refused and counted.
# 8192: a full sweep at 5,000+ SYN/s is answered on every port (each port is answered within
# milliseconds and evicted a second or two later, idle), in 8 server processes (bench/sweep.py).
DEFAULT_MAX_SERVERS = 8192
# Dynamic servers (ports) one server process hosts: a new port goes to a process with room (a
# descriptor handed over, ~0.1 ms) and only every this many ports costs a fork (~15 ms of CPU
# with its copy-on-write faults, bench/), done ahead of need (limits.SPARE_PROCESSES). Each
# process costs ~6 MiB of its own (the interpreter's copy-on-write pages) and each port ~3 KiB:
# 1024 keeps a full sweep's PSS under 250 MiB (max_servers ports in 8 processes, at most
# 2 x 8 + 2 alive with those finishing, limits.DRAINING_FACTOR). 1: a process per port, as
# in the original.
DEFAULT_PORTS_PER_PROCESS = 1024
# Concurrent connections one dynamic server serves; more wait in the kernel's backlog.
DEFAULT_MAX_CONNECTIONS = 4096
# New dynamic servers started per second at most (each a bind and a descriptor handed over,
# ~0.1 ms of the master's time; forks are bounded by the process count, not this): 20,000 lets
# a 5,000 SYN/s sweep through 4 times over, and still caps what a flood may cost the master.
# Attempts over the rate are refused and counted.
DEFAULT_MAX_SERVER_RATE = 20000
# Connections one source address / one /24 or /64 may hold in one server process (budget.py):
# one address must not take every descriptor of a process that serves many ports.
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = budget.DEFAULT_PER_SOURCE
DEFAULT_MAX_CONNECTIONS_PER_NETWORK = budget.DEFAULT_PER_NETWORK
# UDP replies (reflector.py): per source address (per server process) and per sensor (all server
# processes: sensorbudget.py), per second. A forged source must not turn the sensor into a
# reflector (issue 14: 335x with the shipped templates).
DEFAULT_UDP_REPLIES_PER_SOURCE = reflector.DEFAULT_REPLIES_PER_SOURCE
DEFAULT_UDP_REPLIES_PER_SENSOR = reflector.DEFAULT_REPLIES_PER_SENSOR
# Normal mode: how often the template is repeated on an idle connection, as the C original
# did (sent after each read timeout without data, 10 times; closed after 11 idle timeouts).
DEFAULT_TEMPLATE_REPEAT = 10
# One plugin hook call taking longer than this is abandoned (the attack goes on to the next
# plugin); downloaders cap their own time well below it.
DEFAULT_PLUGIN_TIMEOUT = 300.0
# The download pool (honeytrap/background.py says why each default): threads, downloads
# admitted at once, per attack and per attacker address at once.
DEFAULT_DOWNLOAD_WORKERS = background.DEFAULT_WORKERS
DEFAULT_DOWNLOAD_QUEUE = background.DEFAULT_QUEUE
DEFAULT_DOWNLOAD_PER_ATTACK = background.DEFAULT_PER_ATTACK
DEFAULT_DOWNLOAD_PER_SOURCE = background.DEFAULT_PER_SOURCE

# Upper bounds of the numeric keys (the lower bounds are in _RANGES). Each says why.
# An attack is held in memory until its plugins ran: more than this per connection is a mistake.
MAX_READ_LIMIT = 1024 * 1024 * 1024
# The sensor's unacknowledged attacks: below 1 MiB a few attacks hold every port back; above
# 64 GiB it bounds no sensor's memory.
MIN_UNACKNOWLEDGED_LIMIT = 1024 * 1024
MAX_UNACKNOWLEDGED_LIMIT = 64 * 1024 * 1024 * 1024
# A timeout longer than a day means "never"; the original capped -l and -r at 255 seconds.
MAX_TIMEOUT = 86400.0
# One dynamic server per protocol/port pair at most.
MAX_SERVERS_LIMIT = 2 * 65535
# Ports per server process: past this one loop serves too many ports for one core anyway.
MAX_PORTS_PER_PROCESS = 1024
# Connections per server: far above any real use, below file descriptor table sizes.
MAX_CONNECTIONS_LIMIT = 1_000_000
# Servers started per second: above this the master only forks.
MAX_SERVER_RATE_LIMIT = 100_000
# UDP replies per second: past this the guard no longer limits the rate in any useful sense.
MAX_UDP_REPLY_RATE = 1_000_000
# Template repetitions on one idle connection (the original: 10).
MAX_TEMPLATE_REPEAT = 1000
MAX_LOGLEVEL = 6  # man page: -t 0..6
MAX_NFQ_QUEUE = 65535  # NFQUEUE numbers are 16 bits
# Download threads: each holds a stack and a socket; past this a sensor is a download farm.
MAX_DOWNLOAD_WORKERS = 1024
# Downloads admitted at once: each attack waiting on them is held in the recorder's memory.
MAX_DOWNLOAD_QUEUE = 100_000

PLUGIN_PREFIX = "plugin-"
# The original's plugins we do not implement, and why. A line loading one is warned about and
# skipped, so a file written for the original (T-Pot's, with them commented out or not) loads.
UNIMPLEMENTED_PLUGINS = {
    "cpuEmu": "shellcode emulation with libemu",
    "cspm": "shellcode signature matching",
    "submitMWserv": "submission to the mwcollect alliance, a service that is gone",
    "submitNebula": "submission to Nebula, a service that is gone",
}
# The original's shared objects are htm_<Name>.so; a line naming one so means plugin <Name>.
ORIGINAL_MODULE_PREFIX = "htm_"


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
    # Not in the file: the templates and plugins the package ships (resources.py).
    response_dir: str = field(default_factory=resources.template_dir)
    plugin_dir: str = field(default_factory=resources.plugin_dir)
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
    monitor: str = "auto"  # "auto" | "pcap" | "nfq" (honeytrap.monitor.choice)
    event_loop: str = "auto"  # the server processes': "auto" | "uvloop" | "asyncio" (eventloop.py)
    nfq_queue: int = 0
    unacknowledged_limit: int = DEFAULT_UNACKNOWLEDGED_LIMIT  # the whole sensor's (unacked.py)
    max_servers: int = DEFAULT_MAX_SERVERS
    ports_per_process: int = DEFAULT_PORTS_PER_PROCESS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    max_connections_per_network: int = DEFAULT_MAX_CONNECTIONS_PER_NETWORK
    max_server_rate: int = DEFAULT_MAX_SERVER_RATE
    master_realtime: bool = True  # the master under SCHED_RR (priority.py)
    master_nice: int = priority.DEFAULT_MASTER_NICE
    udp_replies_per_source: int = DEFAULT_UDP_REPLIES_PER_SOURCE
    udp_replies_per_sensor: int = DEFAULT_UDP_REPLIES_PER_SENSOR
    template_repeat: int = DEFAULT_TEMPLATE_REPEAT
    plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT
    download_workers: int = DEFAULT_DOWNLOAD_WORKERS
    download_queue: int = DEFAULT_DOWNLOAD_QUEUE
    download_per_attack: int = DEFAULT_DOWNLOAD_PER_ATTACK
    download_per_source: int = DEFAULT_DOWNLOAD_PER_SOURCE
    metrics_listen: str = ""  # "host:port" for Prometheus; empty: no exporter
    state_dir: str = DEFAULT_STATE_DIR  # the sensor id, per-sensor material (honeytrap.state)
    sensor_id: str = ""  # empty: made at first start and kept in state_dir
    download_allow: list[str] = field(default_factory=list)
    # Where this came from, for messages and SIGHUP.
    source: str = ""
    # Non-fatal findings while loading (unknown keys, values given twice), also logged.
    warnings: list[str] = field(default_factory=list)

    def port_mode(self, protocol: str, port: int) -> PortConf:
        """The handling of protocol/port: its portconf entry, else the default (-m: mirror)."""
        conf = self.ports.get((protocol, port))
        if conf is not None:
            return conf
        default = Mode.MIRROR if self.mirror_all else self.portconf_default
        return PortConf(protocol, port, default)


_log = logging.getLogger("honeytrap.config")

# Numeric keys: (lowest, highest) accepted, for the file and for command-line overrides alike.
_RANGES: dict[str, confvalues.Range] = {
    "read_limit": (1, MAX_READ_LIMIT),  # the original: "Read limit must be a positive value"
    "unacknowledged_limit": (MIN_UNACKNOWLEDGED_LIMIT, MAX_UNACKNOWLEDGED_LIMIT),
    "listen_timeout": (0.001, MAX_TIMEOUT),
    "read_timeout": (0.001, MAX_TIMEOUT),
    "loglevel": (0, MAX_LOGLEVEL),
    "nfq_queue": (0, MAX_NFQ_QUEUE),
    "max_servers": (1, MAX_SERVERS_LIMIT),
    "ports_per_process": (1, MAX_PORTS_PER_PROCESS),
    "max_connections": (1, MAX_CONNECTIONS_LIMIT),
    "max_connections_per_source": (1, MAX_CONNECTIONS_LIMIT),
    "max_connections_per_network": (1, MAX_CONNECTIONS_LIMIT),
    "max_server_rate": (1, MAX_SERVER_RATE_LIMIT),
    "master_nice": (priority.LOWEST_NICE, priority.HIGHEST_NICE),
    "udp_replies_per_source": (1, MAX_UDP_REPLY_RATE),
    "udp_replies_per_sensor": (1, MAX_UDP_REPLY_RATE),
    "template_repeat": (0, MAX_TEMPLATE_REPEAT),
    "plugin_timeout": (0.1, MAX_TIMEOUT),
    "download_workers": (1, MAX_DOWNLOAD_WORKERS),
    "download_queue": (1, MAX_DOWNLOAD_QUEUE),
    "download_per_attack": (1, MAX_DOWNLOAD_QUEUE),
    "download_per_source": (1, MAX_DOWNLOAD_QUEUE),
}
_SECTION_KEYS = ("protocol", "port")
_PROXY_KEYS = ("protocol", "port", "target_host", "target_port", "target_protocol")


_number = confvalues.number_in(_RANGES)


# Top-level keys with one string value: key -> its reader (confvalues.py). The field is named
# like the key.
_SCALAR_KEYS: dict[str, confvalues.Converter] = {
    # The original's keys (readconf.c config_keywords).
    "logfile": confvalues.path,
    "pidfile": confvalues.path,
    "response_dir": confvalues.path,
    "plugin_dir": confvalues.path,
    "read_limit": _number,
    "bind_address": confvalues.address,
    "replace_private_ips": confvalues.boolean,
    "promisc": confvalues.boolean,
    "user": confvalues.text,
    "group": confvalues.text,
    "portconf_default": confvalues.default_mode,
    # The original's command-line options, accepted as keys too.
    "listen_timeout": _number,
    "read_timeout": _number,
    "loglevel": _number,
    "foreground": confvalues.boolean,
    "interface": confvalues.text,
    "address": confvalues.text,
    "mirror_all": confvalues.boolean,
    "bpf_expression": confvalues.text,
    # Our extensions.
    "monitor": confvalues.monitor,
    "event_loop": confvalues.event_loop,
    "nfq_queue": _number,
    "unacknowledged_limit": _number,
    "max_servers": _number,
    "ports_per_process": _number,
    "max_connections": _number,
    "max_connections_per_source": _number,
    "max_connections_per_network": _number,
    "max_server_rate": _number,
    "master_realtime": confvalues.boolean,
    "master_nice": _number,
    "udp_replies_per_source": _number,
    "udp_replies_per_sensor": _number,
    "template_repeat": _number,
    "plugin_timeout": _number,
    "download_workers": _number,
    "download_queue": _number,
    "download_per_attack": _number,
    "download_per_source": _number,
    "metrics_listen": confvalues.text,
    "state_dir": confvalues.path,
    "sensor_id": confvalues.sensor_id,
}


class _Builder:
    """Walks the top-level entries in file order and collects the Config's values."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        self.seen: dict[str, Entry] = {}
        self.ports: dict[tuple[str, int], PortConf] = {}
        self.port_origin: dict[tuple[str, int], Scalar] = {}
        self.plugins: list[PluginSpec] = []
        self.warnings: list[str] = []

    def warn(self, message: str, node: Entry | Value, key: str) -> None:
        text = str(confvalues.error(message, node, key))
        _log.warning("%s", text)
        self.warnings.append(text)

    def build(self, tree: Block) -> Config:
        for entry in tree.entries:
            self.entry(entry)
        config = dataclasses.replace(Config(), **self.values)
        config.ports = self.ports
        config.plugins = self.plugins
        config.warnings = self.warnings
        config.source = self.path
        return config

    def entry(self, entry: Entry) -> None:
        key = entry.key
        if key in _SCALAR_KEYS:
            self.remember(entry)
            self.values[key] = _SCALAR_KEYS[key](confvalues.scalar(entry, key), key)
        elif key == "download_allow":
            self.remember(entry)
            self.values[key] = confvalues.cidrs(entry, key)
        elif key == "portconf":
            self.portconf(confvalues.block(entry, key))
        elif key.startswith(PLUGIN_PREFIX):
            self.plugin(entry)
        else:
            self.warn("unknown key, ignored", entry, key)

    def remember(self, entry: Entry) -> None:
        first = self.seen.get(entry.key)
        if first is not None:
            self.warn(f"given again (first at {first.file}:{first.line}); this value wins",
                      entry, entry.key)
        self.seen[entry.key] = entry

    # portconf = { ignore|normal|mirror = { protocol port } proxy = { <name> = { ... } } }

    def portconf(self, block: Block) -> None:
        for section in block.entries:
            key = f"portconf.{section.key}"
            if section.key in confvalues.DEFAULT_MODES:
                fields = self.fields(confvalues.block(section, key), key, _SECTION_KEYS)
                self.add_ports(section, key, fields, confvalues.DEFAULT_MODES[section.key], None)
            elif section.key == "proxy":
                for mapping in confvalues.block(section, key).entries:
                    self.proxy_map(mapping, f"{key}.{mapping.key}")
            else:
                self.warn("unknown portconf section (known: ignore, normal, mirror, proxy), "
                          "ignored", section, key)

    def proxy_map(self, mapping: Entry, key: str) -> None:
        fields = self.fields(confvalues.block(mapping, key), key, _PROXY_KEYS)
        if not fields["target_host"]:
            raise confvalues.error("proxy map needs target_host", mapping, f"{key}.target_host")
        host = confvalues.single(fields["target_host"], mapping, f"{key}.target_host")
        if not host.value.strip() or any(c.isspace() for c in host.value):
            raise confvalues.error(f"not a host name or address: {host.value!r}", host,
                                   f"{key}.target_host")
        port = protocol = None
        if fields["target_port"]:
            port = confvalues.port(confvalues.single(fields["target_port"], mapping, key),
                                   f"{key}.target_port")
        if fields["target_protocol"]:
            protocol = confvalues.protocol(
                confvalues.single(fields["target_protocol"], mapping, key),
                f"{key}.target_protocol")
        # A missing target port or protocol means "the same as the one attacked".
        target = (host.value, port, protocol)
        self.add_ports(mapping, key, fields, Mode.PROXY, target)

    def fields(self, block: Block, key: str, known: tuple[str, ...]) -> dict[str, list[Scalar]]:
        """Values of a portconf section by key. A key given twice adds its values, as in the
        original (`protocol = "tcp"  protocol = "udp"` means both)."""
        fields: dict[str, list[Scalar]] = {name: [] for name in known}
        for entry in block.entries:
            if entry.key in fields:
                fields[entry.key].extend(confvalues.scalars(entry, f"{key}.{entry.key}"))
            else:
                self.warn(f"unknown key (known: {', '.join(known)}), ignored", entry,
                          f"{key}.{entry.key}")
        return fields

    def add_ports(self, section: Entry, key: str, fields: dict[str, list[Scalar]], mode: Mode,
                  target: tuple[str, int | None, str | None] | None) -> None:
        for name in _SECTION_KEYS:
            if not fields[name]:
                raise confvalues.error(f"section needs {name}", section, f"{key}.{name}")
        protocols = [confvalues.protocol(value, f"{key}.protocol") for value in fields["protocol"]]
        for protocol in dict.fromkeys(protocols):
            for value in fields["port"]:
                port = confvalues.port(value, f"{key}.port")
                proxy = None
                if target is not None:
                    host, target_port, target_protocol = target
                    proxy = ProxyTarget(host, target_port or port, target_protocol or protocol)
                name = section.key if mode is Mode.PROXY else ""
                self.add_port(PortConf(protocol, port, mode, proxy, name), value, key)

    def add_port(self, conf: PortConf, where: Scalar, key: str) -> None:
        pair = (conf.protocol, conf.port)
        first = self.port_origin.get(pair)
        if first is not None:
            raise confvalues.error(f"port {conf.port}/{conf.protocol} is configured twice "
                                   f"(first at {first.file}:{first.line})", where, f"{key}.port")
        self.ports[pair] = conf
        self.port_origin[pair] = where

    # plugin-<Name> = "" | { option = "value" ... }

    def plugin(self, entry: Entry) -> None:
        name = entry.key[len(PLUGIN_PREFIX):]
        if name.startswith(ORIGINAL_MODULE_PREFIX) and len(name) > len(ORIGINAL_MODULE_PREFIX):
            name = name[len(ORIGINAL_MODULE_PREFIX):]
            self.warn(f"the original's module name: loading plugin {name}", entry, entry.key)
        if not name:
            raise confvalues.error("plugin name missing (write plugin-<Name>)", entry, entry.key)
        if name in UNIMPLEMENTED_PLUGINS:
            self.warn(f"plugin {name} ({UNIMPLEMENTED_PLUGINS[name]}) is not implemented: "
                      "line skipped", entry, entry.key)
            return
        for spec in self.plugins:
            if spec.name == name:
                raise confvalues.error(
                    f"plugin {name} is loaded twice (first at {spec.file}:{spec.line})",
                    entry, entry.key)
        if isinstance(entry.value, ListNode):
            raise confvalues.error('expects "" or a { block } of options', entry, entry.key)
        options: dict[str, OptionValue] = {}
        if isinstance(entry.value, Block):
            options = self.options(entry.value, entry.key)
        elif entry.value.value:
            self.warn('value ignored: give plugin options in a { block }', entry, entry.key)
        self.plugins.append(PluginSpec(name, options, entry.file, entry.line))

    def options(self, block: Block, key: str) -> dict[str, OptionValue]:
        options: dict[str, OptionValue] = {}
        for entry in block.entries:
            if entry.key in options:
                self.warn("option given again; this value wins", entry, f"{key}.{entry.key}")
            options[entry.key] = self.option(entry.value, f"{key}.{entry.key}")
        return options

    def option(self, value: Value, key: str) -> OptionValue:
        if isinstance(value, Scalar):
            return value.value
        if isinstance(value, ListNode):
            return [self.option(item, key) for item in value.items]
        return self.options(value, key)


def build_config(tree: Block, path: str = "") -> Config:
    """Check a parsed tree and turn it into a Config (no I/O)."""
    return _Builder(path).build(tree)


def load_config(path: str, read: confparse.Reader = confparse.read_text) -> Config:
    """Read, parse and check the configuration file at `path` (includes spliced in)."""
    return build_config(confparse.load(path, read), path)


def apply_overrides(config: Config, **values: Any) -> Config:
    """A copy of `config` with the given fields replaced; None means "not given".

    The CLI passes the command-line values here (the man page: they override the file). Numeric
    values are range-checked and `monitor` named like in the file; an unknown field name is a
    programming error (TypeError).
    """
    given = {name: value for name, value in values.items() if value is not None}
    for name, value in given.items():
        if name in _RANGES and isinstance(value, int | float):
            confvalues.check_range(name, value, _RANGES[name])
        elif name == "monitor" and isinstance(value, str):
            check_monitor_name(value)
    return dataclasses.replace(config, **given)


# The name the module docstring used first; the CLI may call either.
apply_options = apply_overrides
