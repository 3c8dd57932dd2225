"""UDP replies that echo what clients check (DNS id and question, SNMP version, community and
request-id, SIP Via/From/To/Call-ID/CSeq, RPC xid, NTP origin timestamp), by port:

    reply(port, datagram, ctx) -> bytes | None

None for a port we have no protocol for, for a datagram that is not that protocol's request,
and for a reply over datagram.MAX_RATIO times the request. The server itself reaches the same
functions through the catalog (catalog.UDP_PORTS, each module's `factory`).
"""

from __future__ import annotations

from types import ModuleType

from honeytrap.dialogue import datagram, dns, ntp, rpc, sip, snmp
from honeytrap.dialogue.base import Context

MAX_RATIO = datagram.MAX_RATIO
CLOCK_KEY = datagram.CLOCK_KEY
SNMP_DESCRIPTIONS = snmp.DESCRIPTIONS
SIP_SERVERS = sip.SERVERS
PORTS: dict[int, ModuleType] = {53: dns, 111: rpc, 123: ntp, 161: snmp, 5060: sip}


def protocol(port: int) -> str | None:
    """The protocol whose replies a UDP port gets ("dns", ...), None for none."""
    module = PORTS.get(port)
    return module.__name__.rsplit(".", 1)[1] if module else None


def reply(port: int, data: bytes, ctx: Context) -> bytes | None:
    module = PORTS.get(port)
    if module is None:
        return None
    return datagram.bounded(module.answer, data, ctx)
