"""Prometheus exposition of the master's statistics (`metrics_listen = "host:port"`).

The master is single-threaded and forks dynamic servers, so the exporter runs no thread: its
listening socket and its scrapers' sockets are served from the master's own selector loop,
non-blocking, and the collector reads `Master.totals()` at scrape time in that same thread. Every
descriptor it owns is listed by `fds()`, so the master closes them in its children (a scrape
connection inherited by a dynamic server would never see its end).

A scraper gets one response per connection (HTTP/1.0, then close). Whatever a scraper sends is
only searched for the end of its request headers; nothing of it is interpreted beyond the path.
"""

from __future__ import annotations

import logging
import re
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from honeytrap.config import Config
from honeytrap.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("honeytrap.metrics")

PREFIX = "honeytrap_"
# Scrapers served at once; more wait in the listen backlog (Prometheus scrapes one at a time).
MAX_SCRAPERS = 16
LISTEN_BACKLOG = 16
# A request's headers larger than this are not a scrape: the connection is closed.
MAX_REQUEST = 8192
# A scraper that neither finishes its request nor reads its answer is dropped after this long,
# so a stalled client cannot hold one of the MAX_SCRAPERS slots.
SCRAPE_TIMEOUT = 10.0
# Statistic names come partly from dynamic servers (which read attacker bytes): only names of
# this shape become metric names.
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class MetricDef:
    """How one statistic is exposed: its metric name (after PREFIX, without the _total that
    prometheus_client adds to a counter), whether it goes up and down, and its HELP text."""

    name: str
    gauge: bool
    help: str


def _counter(name: str, text: str) -> MetricDef:
    return MetricDef(name, False, text)


def _gauge(name: str, text: str) -> MetricDef:
    return MetricDef(name, True, text)


# Every statistic honeytrap and its shipped plugins report (Master.totals(): the master's, the
# server processes', the recorder's and the plugins'), by statistic name. Prometheus naming
# (https://prometheus.io/docs/practices/naming/, checked by `promtool check metrics`): a counter
# is <name>_total, a gauge never ends in _total, a unit is a base unit at the end of the name,
# before _total. Where the statistic's own name breaks that, the metric has another name (the
# statistic keeps its name in SIGUSR1's log line).
METRICS: dict[str, MetricDef] = {
    # the master
    "attempts": _counter("attempts", "Connection attempts seen by the monitor"),
    "ignored": _counter("ignored", "Attempts to ports in ignore mode"),
    "servers_started": _counter("servers_started", "Dynamic servers started"),
    "servers_evicted": _counter("servers_evicted", "Idle dynamic servers stopped to make room"),
    "servers_expired": _counter(
        "servers_expired", "Dynamic servers stopped after the listen timeout without a connection"),
    "refused_pending": _counter(
        "refused_pending", "Attempts let go unserved: their port was not released in time"),
    "forks_on_path": _counter(
        "forks_on_path", "Server processes forked for an attempt waiting on them (no spare)"),
    "spares_forked": _counter(
        "spares_forked", "Empty server processes forked ahead of need (spares)"),
    "refused_no_room": _counter("refused_no_room", "Attempts refused: max_servers busy servers"),
    "refused_rate": _counter("refused_rate", "Attempts refused: max_server_rate exceeded"),
    "refused_privileged": _counter(
        "refused_privileged", "Attempts refused: the port needs CAP_NET_BIND_SERVICE, not held"),
    "refused_handovers": _counter(
        "refused_handovers",
        "Attempts refused before binding: the master's descriptors full of undelivered handovers"),
    "refused_draining": _counter(
        "refused_draining", "Attempts refused: too many servers still finishing"),
    "ports_in_use": _counter(
        "ports_in_use", "Attempts to ports something else listens on (not served by us)"),
    "fork_failures": _counter("fork_failures", "Server or recorder processes that fork() failed"),
    "handover_failures": _counter(
        "handover_failures", "Ports bound but not handed to a server process"),
    "bind_failures": _counter("bind_failures", "Ports that could not be bound (other than in use)"),
    "server_crashes": _counter("server_crashes", "Server processes that exited with an error"),
    "server_kills": _counter(
        "server_kills", "Server processes killed by the master: they stopped reading its messages"),
    "recorder_crashes": _counter(
        "recorder_crashes", "Recorder processes that exited with an error"),
    "servers_running": _gauge("servers_running", "Dynamic servers serving a port now"),
    # "servers_total" would read as a counter
    "servers_total": _gauge(
        "servers_alive", "Dynamic servers alive now (serving a port or letting go of it)"),
    "server_processes": _gauge(
        "server_processes", "Server processes alive now (each hosts up to ports_per_process)"),
    "control_queued": _gauge(
        "control_queued",
        "Control messages queued by the master for server processes that have not read them yet"),
    # the server processes
    "connections": _counter("connections", "Connections and UDP exchanges accepted"),
    "attacks": _counter("attacks", "Attacks recorded by the dynamic servers"),
    # the unit last ("bytes_in_total" had it in the middle)
    "bytes_in": _counter("attack_payload_bytes", "Attack payload bytes received"),
    "refused_full": _counter(
        "refused_full", "Connections refused: max_connections on one server"),
    "accept_errors": _counter(
        "accept_errors", "accept() failures for lack of descriptors or memory"),
    "refused_source": _counter(
        "refused_source", "Connections closed at accept: max_connections_per_source"),
    "refused_network": _counter(
        "refused_network", "Connections closed at accept: max_connections_per_network"),
    "udp_replies_refused": _counter(
        "udp_replies_refused", "UDP replies not sent: over twice the bytes in, or the rates"),
    "udp_replies_cut": _counter(
        "udp_replies_cut", "UDP replies cut to twice the bytes their source sent"),
    "unacknowledged": _gauge(
        "unacknowledged",
        "Attacks handed to the recorder and not yet acknowledged (all through the plugins)"),
    "unacknowledged_bytes": _gauge(
        "unacknowledged_bytes",
        "Bytes of attacks the server processes hold for the recorder (unacknowledged_limit)"),
    "held_back": _counter(
        "held_back",
        "Times a server process stopped accepting: over unacknowledged_limit in the sensor"),
    # the recorder and its pipeline
    "pipeline_attacks": _counter("pipeline_attacks", "Attacks handed to the plugin pipeline"),
    "pipeline_finished": _counter(
        "pipeline_finished", "Attacks that went through every plugin hook"),
    "pipeline_batches": _counter(
        "pipeline_batches", "Batches of attacks the plugin pipeline finished together"),
    "pipeline_plugin_failures": _counter("pipeline_plugin_failures", "Plugin hooks that raised"),
    "pipeline_plugin_timeouts": _counter(
        "pipeline_plugin_timeouts", "Plugin hooks abandoned after plugin_timeout"),
    "pipeline_write_timeouts": _counter(
        "pipeline_write_timeouts", "Outputs whose batch write hung past plugin_timeout"),
    "pipeline_slow_writes": _counter(
        "pipeline_slow_writes", "Batch writes of an output that took longer than 0.1 s"),
    "pipeline_write_lost": _counter(
        "pipeline_write_lost", "Records for a hung output not kept (over the bound, or at stop)"),
    "pipeline_virtual_refused": _counter(
        "pipeline_virtual_refused", "Virtual attacks (decoded from others) over the limit"),
    "pipeline_pending": _gauge(
        "pipeline_pending", "Attacks in the plugin pipeline now, not yet finished"),
    "pipeline_followups": _counter(
        "pipeline_followups", "Attacks recorded again with what their downloads found later"),
    "pipeline_downloads_run": _counter(
        "pipeline_downloads_run", "Downloads the download pool ran to their end"),
    "pipeline_downloads_refused": _counter(
        "pipeline_downloads_refused", "Downloads refused: download pool full or a budget spent"),
    "pipeline_downloads_abandoned": _counter(
        "pipeline_downloads_abandoned", "Downloads abandoned after plugin_timeout"),
    "pipeline_downloads_dropped": _counter(
        "pipeline_downloads_dropped", "Downloads not started before the recorder stopped"),
    "pipeline_downloads_pending": _gauge(
        "pipeline_downloads_pending", "Downloads admitted to the download pool, not yet ended"),
    "pipeline_download_threads": _gauge(
        "pipeline_download_threads",
        "Threads of the download pool running: its workers and written-off ones still running"),
    "recorder_link_errors": _counter(
        "recorder_link_errors", "Malformed messages on server-to-recorder links"),
    "recorder_pauses": _counter(
        "recorder_pauses", "Times the recorder's pipeline was full and it stopped reading links"),
    # the shipped plugins (Plugin.stats)
    "spool_depth": _gauge(
        "spool_depth", "Records (attacks, samples) waiting in the output plugins' spools"),
    "spool_refused": _counter(
        "spool_refused", "Records not spooled: an output plugin's spool was full"),
    "spool_rejected": _counter(
        "spool_rejected", "Records the central store refused as bad data (kept in rejected/)"),
    "write_failures": _counter(
        "write_failures", "Writes a file output could not make (disk full): its records wait"),
    "hpfeeds_events_too_big": _counter(
        "hpfeeds_events_too_big", "Attacks not published to hpfeeds: JSON over the limit even cut"),
    "hpfeeds_samples_too_big": _counter(
        "hpfeeds_samples_too_big", "Samples not published to hpfeeds: over the message limit"),
    "clamav_scans": _counter("clamav_scans", "Payloads and samples clamd scanned"),
    "clamav_errors": _counter("clamav_errors", "ClamAV scans that failed (clamd down, bad reply)"),
    "clamav_skipped": _counter(
        "clamav_skipped", "ClamAV scans skipped: max_scans scans were waiting on a slow clamd"),
    "conntrack_drops": _counter(
        "conntrack_drops", "Packets the kernel dropped, its connection tracking table full "
        "(nf_conntrack_max): attempts no socket or honeytrap saw"),
    "downloads": _counter("downloads", "Samples downloaded by the download plugins"),
    "download_failures": _counter(
        "download_failures", "Downloads refused by the download policy or failed"),
}
# Statistics that go up and down (levels, not events: a gone child's are dropped, master.py).
GAUGES = frozenset(name for name, metric in METRICS.items() if metric.gauge)
# Every documented HELP text (a test checks that each metric of the real daemon has one).
DOCUMENTED = frozenset(d.help for d in METRICS.values())


def metric_def(name: str) -> MetricDef:
    """The statistic's metric: from METRICS, else (a third-party plugin's statistic) a counter
    of its own name, with a HELP line saying it is undocumented."""
    known = METRICS.get(name)
    if known is not None:
        return known
    bare = name.removesuffix("_total")
    return MetricDef(bare, False, f"Statistic {name} reported by a plugin (not documented)")


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); port 0 picks a free port (tests).
    Raises ConfigError."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"metrics_listen must be host:port, not {text!r}", key="metrics_listen")
    return host, int(port_text)


class TotalsCollector:
    """Turns a totals() dict into metric families, at scrape time."""

    def __init__(self, totals: Callable[[], dict[str, int]]) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, value in sorted(self.totals().items()):
            if not NAME.fullmatch(name):
                continue
            metric = metric_def(name)
            family = GaugeMetricFamily if metric.gauge else CounterMetricFamily
            yield family(PREFIX + metric.name, metric.help, value=value)


def render(totals: Callable[[], dict[str, int]]) -> bytes:
    """The text exposition format of the totals (protocol logic: no sockets)."""
    # prometheus_client only when scraped: every process imports this module (plugin.py, for
    # NAME), and it pulls ~1.4 MiB of modules into the master's heap, which all its processes
    # share; a sensor without metrics_listen never needs them.
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TotalsCollector(totals))
    return generate_latest(registry)


def respond(request: bytes, body: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.0 answer to a complete request head."""
    line = request.split(b"\r\n", 1)[0].split(b" ")
    if len(line) < 2 or line[0] not in (b"GET", b"HEAD"):
        return _answer(b"405 Method Not Allowed", b"text/plain", b"GET /metrics\n", line)
    path = line[1].split(b"?", 1)[0]
    if path not in (b"/metrics", b"/"):
        return _answer(b"404 Not Found", b"text/plain", b"GET /metrics\n", line)
    content = b"text/plain; version=0.0.4; charset=utf-8"
    return _answer(b"200 OK", content, body(), line)


def _answer(status: bytes, ctype: bytes, body: bytes, line: list[bytes]) -> bytes:
    head = (
        b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    return head if line[0] == b"HEAD" else head + body


@dataclass
class Ready:
    """Selector key data: the master calls `callback()` when the descriptor is ready."""

    callback: Callable[[], None]


@dataclass
class _Scraper:
    sock: socket.socket
    started: float
    request: bytearray = field(default_factory=bytearray)
    answer: bytes = b""


class Exporter:
    """The /metrics endpoint, served from the caller's selector."""

    def __init__(
        self, listen: str, totals: Callable[[], dict[str, int]], selector: selectors.BaseSelector
    ) -> None:
        host, port = parse_listen(listen)
        self.totals = totals
        self.selector = selector
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            self.sock.close()
            raise ConfigError(
                f"metrics_listen {listen}: {exc.strerror}", key="metrics_listen"
            ) from exc
        self.sock.setblocking(False)
        self.scrapers: dict[int, _Scraper] = {}
        self.selector.register(self.sock, selectors.EVENT_READ, Ready(self._accept))
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    @property
    def address(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return str(name[0]), int(name[1])

    def fds(self) -> list[int]:
        """Every descriptor of ours (for the master to close in its children)."""
        if self.sock.fileno() < 0:
            return []
        return [self.sock.fileno(), *self.scrapers]

    def _accept(self) -> None:
        while len(self.scrapers) < MAX_SCRAPERS:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the scraper retries at its interval
                log.warning("metrics: accept failed: %s", exc.strerror)
                return
            sock.setblocking(False)
            scraper = _Scraper(sock, time.monotonic())
            self.scrapers[sock.fileno()] = scraper
            self.selector.register(sock, selectors.EVENT_READ, Ready(partial(self._io, scraper)))

    def _io(self, scraper: _Scraper) -> None:
        try:
            if not scraper.answer:
                chunk = scraper.sock.recv(4096)
                if not chunk:
                    self._drop(scraper)
                    return
                scraper.request += chunk
                if b"\r\n\r\n" not in scraper.request and b"\n\n" not in scraper.request:
                    if len(scraper.request) > MAX_REQUEST:
                        self._drop(scraper)
                    return
                scraper.answer = respond(bytes(scraper.request), lambda: render(self.totals))
                self.selector.modify(
                    scraper.sock, selectors.EVENT_WRITE, Ready(partial(self._io, scraper))
                )
            sent = scraper.sock.send(scraper.answer)
            scraper.answer = scraper.answer[sent:]
            if not scraper.answer:
                self._drop(scraper)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(scraper)

    def _drop(self, scraper: _Scraper) -> None:
        fd = scraper.sock.fileno()
        self.scrapers.pop(fd, None)
        try:
            self.selector.unregister(scraper.sock)
        except (KeyError, ValueError):
            pass
        scraper.sock.close()

    def tick(self) -> None:
        """Drop scrapers past SCRAPE_TIMEOUT (called from the master's loop)."""
        now = time.monotonic()
        for scraper in list(self.scrapers.values()):
            if now - scraper.started > SCRAPE_TIMEOUT:
                self._drop(scraper)

    def close(self) -> None:
        for scraper in list(self.scrapers.values()):
            self._drop(scraper)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


def start(
    config: Config, totals: Callable[[], dict[str, int]], selector: selectors.BaseSelector
) -> Exporter | None:
    """The exporter if the configuration asks for one (`metrics_listen`), else None."""
    listen = config.metrics_listen
    if not listen:
        return None
    return Exporter(listen, totals, selector)
