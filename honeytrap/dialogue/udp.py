"""UDP replies that echo what clients check (DNS id and question, SNMP version, community and
request-id, SIP Via/From/To/Call-ID/CSeq, RPC xid, NTP origin timestamp), by port:

    reply(port, datagram, ctx) -> bytes | None

None for a port we have no protocol for, for a datagram that is not that protocol's request,
and for a reply that would be more than MAX_RATIO times the request: a forged source must not
turn the sensor into an amplifier (the reflector guard bounds bytes per source as well; this
bound holds per datagram, whatever the guard allows). The server falls back to the port's raw
<port>_udp template, if any, when this gives None.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from honeytrap.dialogue import dns, ntp, rpc, sensor, sip, snmp
from honeytrap.dialogue.base import Context

# A reply is at most twice its request (the amplification a sensor may offer at all).
MAX_RATIO = 2
# Context.extra key of a clock (seconds since the epoch) for NTP; time.time by default.
CLOCK_KEY = "clock"
SNMP_DESCRIPTIONS = "snmp.sysdescr"
SIP_SERVERS = "sip.servers"
PORTS = {53: "dns", 111: "rpc", 123: "ntp", 161: "snmp", 5060: "sip"}


def protocol(port: int) -> str | None:
    """The protocol whose replies a UDP port gets ("dns", ...), None for none."""
    return PORTS.get(port)


def _clock(ctx: Context) -> float:
    clock = ctx.extra.get(CLOCK_KEY)
    return float(clock()) if callable(clock) else time.time()


def _snmp(datagram: bytes, ctx: Context, budget: int) -> bytes | None:
    name = ctx.hostname.split(".")[0][:64]
    descr = sensor.pick(SNMP_DESCRIPTIONS, ctx.hostname).replace("{host}", name)
    out = snmp.reply(datagram, descr, name)
    if out is not None and len(out) > budget:  # cut the description to fit the bound
        out = snmp.reply(datagram, descr[: max(0, len(descr) - (len(out) - budget) - 2)], name)
    return out


_HANDLERS: dict[str, Callable[[bytes, Context, int], bytes | None]] = {
    "dns": lambda d, ctx, budget: dns.reply(d),
    "ntp": lambda d, ctx, budget: ntp.reply(d, _clock(ctx), ctx.hostname),
    "rpc": lambda d, ctx, budget: rpc.reply(d, budget),
    "sip": lambda d, ctx, budget: sip.reply(d, ctx.rng, sensor.pick(SIP_SERVERS, ctx.hostname),
                                            budget),
    "snmp": _snmp,
}


def reply(port: int, datagram: bytes, ctx: Context) -> bytes | None:
    name = protocol(port)
    if name is None:
        return None
    budget = MAX_RATIO * len(datagram)
    out = _HANDLERS[name](datagram, ctx, budget)
    if out is None or len(out) > budget:
        return None
    return out
