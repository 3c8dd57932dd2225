"""The Dialogue shape of a UDP reply function: one datagram in, its reply (or nothing) out,
never more than MAX_RATIO times the datagram (a forged source must not turn the sensor into
an amplifier; the reflector guard bounds bytes per source as well, this bound holds per
datagram whatever the guard allows). dns, snmp, sip, ntp and rpc expose `factory` built on it,
which the catalog serves on their UDP ports."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from honeytrap.dialogue.base import Context, Reply

# A reply is at most twice its request (the amplification a sensor may offer at all).
MAX_RATIO = 2
# Context.extra key of a clock (seconds since the epoch) for NTP and SMB; time.time by default.
CLOCK_KEY = "clock"

# (datagram, context, budget in bytes) -> the reply, None for a datagram not recognised
Answer = Callable[[bytes, Context, int], "bytes | None"]


def clock(ctx: Context) -> float:
    made = ctx.extra.get(CLOCK_KEY)
    return float(made()) if callable(made) else time.time()


def bounded(answer: Answer, datagram: bytes, ctx: Context) -> bytes | None:
    budget = MAX_RATIO * len(datagram)
    out = answer(datagram, ctx, budget)
    return out if out is not None and len(out) <= budget else None


class DatagramDialogue:
    def __init__(self, name: str, answer: Answer, ctx: Context) -> None:
        self.name = name
        self.answer = answer
        self.ctx = ctx
        self.answered = 0
        self.ignored = 0

    def start(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> Reply:
        out = bounded(self.answer, data, self.ctx)
        if out is None:
            self.ignored += 1
            return Reply()
        self.answered += 1
        return Reply(out)

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"udp": {"answered": self.answered, "ignored": self.ignored}}
