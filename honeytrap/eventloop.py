"""The event loop the server processes run on (`event_loop`): uvloop or plain asyncio.

uvloop's loop is written in C. Normal-mode connections no longer take a loop transport each
(sockettransport.py serves them on the process's own epoll, one reader on the loop; uvloop's C
transports had cost a server process ~90 us of CPU per connection against ~118 us on asyncio's,
measured before that, bench/); the loop still runs the readers, the timers and the recorder's
link. The code is the same on both: it only uses the asyncio Protocol/Transport API and
loop.add_reader & co., which uvloop implements. "auto" takes uvloop when it is installed (a
dependency of the package, but an install from a distribution may lack it), asyncio otherwise.

Mirror and proxy mode (relay.py) hand a connection from one protocol object to another and
pause and resume its reading mid-stream; on uvloop that loses data (tests/test_modes.py fails
there), so a configuration with any mirror or proxy port (-m, portconf_default, a portconf
entry) runs its server processes on asyncio whatever event_loop says.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

from honeytrap.attack import Mode
from honeytrap.errors import ConfigError

if TYPE_CHECKING:
    from honeytrap.config import Config

# The modes that need asyncio's transports (see above); relay.RELAY_MODES.
_RELAY_MODES = (Mode.MIRROR, Mode.PROXY)

CHOICES = ("auto", "uvloop", "asyncio")


def available(name: str) -> bool:
    return name == "asyncio" or importlib.util.find_spec(name) is not None


def check_name(name: str) -> None:
    """A ConfigError unless `name` is a choice this host can run."""
    if name not in CHOICES:
        raise ConfigError(f"event_loop must be one of {', '.join(CHOICES)}, not {name!r}")
    if name == "uvloop" and not available("uvloop"):
        raise ConfigError("event_loop is uvloop, but uvloop is not installed")


def relays(config: Config) -> bool:
    """Whether any port may be served in mirror or proxy mode."""
    return (config.mirror_all or config.portconf_default in _RELAY_MODES
            or any(conf.mode in _RELAY_MODES for conf in config.ports.values()))


def resolve(config: Config) -> str:
    """The loop the server processes run on: "uvloop" or "asyncio"."""
    if relays(config):
        return "asyncio"
    if config.event_loop == "auto":
        return "uvloop" if available("uvloop") else "asyncio"
    return config.event_loop


def factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new-loop function for asyncio.Runner(loop_factory=...)."""
    if resolve(config) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def preload(config: Config) -> None:
    """Import the server processes' loop module in the master, before it forks them, so that
    its module state is shared copy-on-write: imported after the fork, uvloop cost every
    server process ~3 MiB of private memory (measured: Private_Dirty of a fresh child)."""
    if resolve(config) == "uvloop":
        import uvloop  # noqa: F401
