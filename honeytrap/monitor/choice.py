"""Which connection monitor runs: the `monitor` key, and the `auto` default that cannot
black-hole traffic.

- `nfq`: the NFQUEUE reader only; `pcap`: the sniffer only (as they always were).
- `auto` (the default): both at once where each can open (nfq needs CAP_NET_ADMIN and a queue
  nobody else reads, pcap needs CAP_NET_RAW and an interface). A host whose firewall queues new
  SYNs gets them held and served first time; a host without a queue rule gets the pcap
  behaviour (the retry is served). If one cannot open, the log says why and the other runs; if
  neither can, honeytrap does not start.

Whenever a queue is fed by a firewall rule without `--queue-bypass` but nobody reads it here
(pcap chosen explicitly, or nfq unavailable), the log says so loudly: the kernel drops those
packets. T-Pot's health check waits for the fork's `Trapping attacks via NFQ.`; it is logged
when the queue is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from honeytrap import capabilities
from honeytrap import log as logs
from honeytrap.errors import HoneytrapError
from honeytrap.monitor import Monitor
from honeytrap.monitor.rules import QueueRules, read_queue_rules

if TYPE_CHECKING:
    from honeytrap.config import Config

log = logging.getLogger("honeytrap.monitor")

NFQ_LINE = "Trapping attacks via NFQ."  # the fork's line, word for word (T-Pot greps for it)


class NoMonitor(HoneytrapError):
    """Neither connection monitor could be opened (the start fails)."""


def _open_nfq(config: Config) -> Monitor:
    from honeytrap.monitor.nfq import NfqMonitor

    monitor = NfqMonitor(config.nfq_queue)
    log.log(logs.NOTICE, "nfq monitor reading NFQUEUE %d", config.nfq_queue)
    log.log(logs.NOTICE, NFQ_LINE)
    return monitor


def _open_pcap(config: Config) -> Monitor:
    from honeytrap.monitor.pcap import open_pcap_monitor

    monitor = open_pcap_monitor(config)
    log.log(logs.NOTICE, "pcap monitor on %s watching %s", monitor.interface,
            ", ".join(monitor.addresses))
    return monitor


def warn_unread_queue(queue: int, why: str, rules: QueueRules | None = None) -> bool:
    """Log an error if a firewall rule queues to `queue` without bypass (those packets are
    dropped: nobody reads the queue). True if it did. Best effort: unreadable rules say nothing."""
    rules = read_queue_rules() if rules is None else rules
    dropping = rules.dropping(queue)
    if not dropping:
        if rules.read:
            log.info("no firewall rule queues to NFQUEUE %d without bypass (read: %s)",
                     queue, ", ".join(rules.read))
        return False
    shown = list(dict.fromkeys(rule.text for rule in dropping))
    log.error(
        "NFQUEUE %d is fed by %d firewall rule(s) without --queue-bypass, but %s: the kernel "
        "DROPS every packet they queue (%s). Set monitor = \"nfq\" (or \"auto\"), or remove the "
        "rule(s): %s", queue, len(shown), why, ", ".join(sorted({r.source for r in dropping})),
        " | ".join(shown),
    )
    return True


def open_monitor(config: Config) -> Monitor:
    """The monitor(s) `config.monitor` asks for, opened; see the module docstring."""
    if config.monitor == "nfq":
        return _open_nfq(config)
    if config.monitor == "pcap":
        monitor = _open_pcap(config)
        warn_unread_queue(config.nfq_queue, "monitor = \"pcap\" does not read it")
        return monitor
    return _open_auto(config)


def _try(opener: Callable[[Config], Monitor], config: Config, capability: int,
         ) -> tuple[Monitor | None, str]:
    """Open one monitor of the pair; (None, why) if it cannot. A missing capability is not
    even tried (the kernel's refusal text would read like a failure; it is a choice here)."""
    if not capabilities.has(capability):
        return None, f"no {capabilities.NAMES[capability]}"
    try:
        return opener(config), ""
    except HoneytrapError as exc:
        return None, str(exc)


def _open_auto(config: Config) -> Monitor:
    queue, queue_why = _try(_open_nfq, config, capabilities.CAP_NET_ADMIN)
    sniffer, sniffer_why = _try(_open_pcap, config, capabilities.CAP_NET_RAW)
    if queue is None and sniffer is None:
        raise NoMonitor(
            f"no connection monitor can run: NFQUEUE {config.nfq_queue}: {queue_why}; "
            f"pcap: {sniffer_why} (reading NFQUEUE needs CAP_NET_ADMIN, pcap CAP_NET_RAW)"
        )
    if queue is None:
        assert sniffer is not None
        log.log(logs.NOTICE, "monitor auto: pcap only, not reading NFQUEUE %d (%s)",
                config.nfq_queue, queue_why)
        warn_unread_queue(config.nfq_queue, "honeytrap cannot read it here")
        return sniffer
    if sniffer is None:
        log.log(logs.NOTICE, "monitor auto: NFQUEUE %d only, no pcap (%s): only queued "
                "attempts start servers", config.nfq_queue, sniffer_why)
        return queue
    from honeytrap.monitor.combined import CombinedMonitor

    log.log(logs.NOTICE, "monitor auto: NFQUEUE %d and pcap together", config.nfq_queue)
    return CombinedMonitor(queue, sniffer)


def descriptors(monitor: Monitor) -> list[int]:
    """Every descriptor of `monitor`, for closing in child processes."""
    more = getattr(monitor, "descriptors", None)
    return list(more()) if callable(more) else [monitor.fileno()]

