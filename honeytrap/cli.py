"""The command line, exactly as honeytrap(8):

    honeytrap [-Dpmv] [-h] [-i interface] [-a ip address] [-l listen timeout] [-r read timeout]
              [-t loglevel] [-L logfile] [-P pidfile] [-C configfile] [-u user] [-g group]
              [expression]

Command-line values override the configuration file. Exit status: 0 on a clean stop (and for
-h/-v), 1 for a failure at run time, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

from honeytrap import __version__, capabilities, daemon, privileges, resources, state
from honeytrap import log as logs
from honeytrap.config import DEFAULT_CONFIG_FILE, Config, apply_overrides, load_config
from honeytrap.dialogue.catalog import load_catalog
from honeytrap.errors import ConfigError, HoneytrapError, PluginError
from honeytrap.monitor import check_monitor_name
from honeytrap.monitor.choice import descriptors, open_monitor
from honeytrap.pidfile import AlreadyRunning, PidFile, PidFileRefused
from honeytrap.plugin import load_plugins
from honeytrap.preload import preload

log = logging.getLogger("honeytrap")

USAGE = """\
usage: honeytrap [-Dpmv] [-h | --help] [--print-config] [-i interface]
                 [-a ip address] [-l listen timeout] [-r read timeout]
                 [-t loglevel] [-L logfile] [-P pidfile] [-C configfile]
                 [-u user] [-g group] [expression]
"""

HELP = USAGE + f"""
  -a address   watch for rejected connections to this address
  -C file      read the configuration from file (default: {DEFAULT_CONFIG_FILE})
  -D           do not daemonize: stay in the foreground, log to stderr too
  -g group     run dynamic servers as this group
  -h, --help   print this help and exit
  -i iface     watch for rejected connections on this interface
  -l seconds   listen timeout: stop a dynamic server after this long without
               a connection (default 30)
  -L file      log to file
  -m           mirror mode: mirror every port not configured otherwise
  -p           put the interface into promiscuous mode
  -P file      pid file
  -r seconds   read timeout of connection handlers (default 1)
  -t level     log level 0-6: 0 off, 1 error, 2 warning, 3 notice, 4 info,
               5 noisy, 6 debug (default 3)
  -u user      run dynamic servers as this user
  -v           print the version and exit
  --print-config
               write the default (shipped, commented) configuration to
               standard output and exit
  expression   a BPF expression restricting what the pcap monitor watches
"""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _level(text: str) -> int:
    if text not in {str(n) for n in range(7)}:
        raise argparse.ArgumentTypeError(f"log level must be 0 to 6: {text!r}")
    return int(text)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="honeytrap", add_help=False, usage=USAGE)
    parser.add_argument("-D", dest="foreground", action="store_true", default=None)
    parser.add_argument("-p", dest="promisc", action="store_true", default=None)
    parser.add_argument("-m", dest="mirror_all", action="store_true", default=None)
    parser.add_argument("-v", dest="version", action="store_true")
    parser.add_argument("-h", "--help", dest="help", action="store_true")
    parser.add_argument("--print-config", dest="print_config", action="store_true")
    parser.add_argument("-i", dest="interface")
    parser.add_argument("-a", dest="address")
    parser.add_argument("-l", dest="listen_timeout", type=_seconds)
    parser.add_argument("-r", dest="read_timeout", type=_seconds)
    parser.add_argument("-t", dest="loglevel", type=_level)
    parser.add_argument("-L", dest="logfile")
    parser.add_argument("-P", dest="pidfile")
    parser.add_argument("-C", dest="configfile", default=DEFAULT_CONFIG_FILE)
    parser.add_argument("-u", dest="user")
    parser.add_argument("-g", dest="group")
    parser.add_argument("expression", nargs="*")
    return parser


@dataclass
class Options:
    args: argparse.Namespace

    def config(self) -> Config:
        """Read the file and lay the command line over it (also on SIGHUP)."""
        a = self.args
        config = load_config(a.configfile)
        config = apply_overrides(
            config,
            foreground=a.foreground,
            promisc=a.promisc,
            mirror_all=a.mirror_all,
            interface=a.interface,
            address=a.address,
            listen_timeout=a.listen_timeout,
            read_timeout=a.read_timeout,
            loglevel=a.loglevel,
            logfile=a.logfile,
            pidfile=a.pidfile,
            user=a.user,
            group=a.group,
            bpf_expression=" ".join(a.expression) if a.expression else None,
        )
        check_monitor_name(config.monitor)
        config.sensor_id = state.sensor_id(config.sensor_id, config.state_dir, config.warnings)
        return config


def parse(argv: list[str]) -> Options:
    return Options(make_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"honeytrap: {exc}\n{USAGE}")
        return EXIT_USAGE
    if options.args.help:
        sys.stdout.write(HELP)
        return EXIT_OK
    if options.args.version:
        sys.stdout.write(f"honeytrap {__version__}\n")
        return EXIT_OK
    if options.args.print_config:
        try:
            sys.stdout.buffer.write(resources.default_config())
        except ConfigError as exc:
            sys.stderr.write(f"honeytrap: {exc}\n")
            return EXIT_FAILURE
        return EXIT_OK
    try:
        config = options.config()
        identity = privileges.resolve(config.user, config.group)
        privileges.check_can_become(identity)
    except ConfigError as exc:
        sys.stderr.write(f"honeytrap: {exc}\n")
        return EXIT_USAGE
    for warning in config.warnings:
        sys.stderr.write(f"honeytrap: warning: {warning}\n")
    return run(options, config, identity)


def run(options: Options, config: Config, identity: privileges.Identity) -> int:
    try:
        # Check the plugins load before detaching, so a mistake is seen on the terminal.
        load_plugins(config).close()
        load_catalog(config)  # a bad dialogue file, too
    except (PluginError, ConfigError) as exc:
        sys.stderr.write(f"honeytrap: {exc}\n")
        return EXIT_USAGE
    pidfile = PidFile(config.pidfile)
    try:
        pidfile.acquire()
        logs.setup(config.loglevel, config.logfile, stderr=config.foreground)
    except (AlreadyRunning, PidFileRefused) as exc:
        sys.stderr.write(f"honeytrap: {exc}\n")
        return EXIT_FAILURE
    except OSError as exc:
        sys.stderr.write(f"honeytrap: {exc}\n")
        pidfile.release()
        return EXIT_FAILURE
    try:
        if not config.foreground:
            assert pidfile.fd is not None
            daemon.detach([pidfile.fd, *logs.file_descriptors()])
            pidfile.write()
        return serve(options, config, identity, pidfile)
    finally:
        pidfile.release()


def serve(
    options: Options, config: Config, identity: privileges.Identity, pidfile: PidFile
) -> int:
    from honeytrap.fdlimit import raise_fd_limit
    from honeytrap.master import Master

    raise_fd_limit(config)
    preload()

    if os.geteuid() != 0:
        held = capabilities.names(capabilities.effective())
        log.log(logs.NOTICE, "running as uid %d/gid %d with %s", os.geteuid(), os.getegid(),
                ", ".join(held) if held else "no capabilities")
    elif identity.uid is None:
        log.warning("no -u given: dynamic servers keep running as root")
    for warning in config.warnings:
        log.warning("configuration: %s", warning)
    log.log(logs.NOTICE, "sensor id %s (state_dir %s)", config.sensor_id, config.state_dir)
    try:
        registry = load_plugins(config)
    except PluginError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    try:
        monitor = open_monitor(config)
    except HoneytrapError as exc:
        log.error("%s", exc)
        registry.close()
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
    try:
        master = Master(
            config, registry, monitor, identity,
            reload_config=options.config,
            keep_out_of_children=lambda: [
                *descriptors(monitor), *([pidfile.fd] if pidfile.fd is not None else []),
                *daemon.report_fds(),
            ],
        )
    except HoneytrapError as exc:
        log.error("%s", exc)
        monitor.close()
        registry.close()
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
    return master.run()  # it says READY=1 once its recorder is ready
