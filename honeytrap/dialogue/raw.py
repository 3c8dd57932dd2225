"""The original's raw templates (`<port>_<protocol>` files) as a dialogue.

The bytes are sent once per *turn*: when the client has been quiet for `quiet` seconds after
connecting or after its last data, at most `template_repeat` times per connection. So a
server-speaks-first protocol (a silent client) gets its banner after the quiet period, and a
client-speaks-first one its answer after its request. The C original waited a whole read
timeout (1.00 s, always, a timing tell); the quiet period is drawn per connection from
QUIET_SECONDS instead (and never longer than the read timeout, the adapter's cap).
"""

from __future__ import annotations

from typing import Any

from honeytrap.dialogue.base import Context, Reply

# Long enough for a client-speaks-first request sent in a few segments to be complete, short
# enough that a banner comes well before a client's own timeout; drawn, so no two connections
# see the same delay.
QUIET_SECONDS = (0.15, 0.45)


class RawDialogue:
    name = "raw"

    def __init__(self, template: bytes, ctx: Context, template_repeat: int = 10) -> None:
        self.template = template
        self.template_repeat = template_repeat
        # rng.uniform(*QUIET_SECONDS), its formula without its call (once per connection)
        low, high = QUIET_SECONDS
        self.quiet = low + (high - low) * ctx.rng.random()
        self.sent = 0
        self.turn_pending = True  # nothing answered since the start or the last data

    def start(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> Reply:
        self.turn_pending = True
        return Reply()

    def idle(self) -> Reply:
        if self.turn_pending and self.sent < self.template_repeat:
            self.turn_pending = False
            self.sent += 1
            return Reply(send=self.template)
        self.turn_pending = False
        return Reply()

    def record(self) -> dict[str, Any]:
        return {"sends": self.sent}


class Silence:
    """A port without a template whose client has not spoken: nothing is said."""

    name = "none"

    def start(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> Reply:
        return Reply()

    def idle(self) -> Reply:
        return Reply()

    def record(self) -> dict[str, Any]:
        return {}
