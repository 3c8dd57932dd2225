"""What a server process tells the master about its ports' use: busy (a connection open) or idle
again (the last one closed), for the port table's least-recently-used eviction (porttable.py).
The process notes each port's crossings of zero connections (PortStates, sans-IO) and sends
what is due in one batch PORT_STATE_DELAY after the first change (PortReporter).

Sent at once, a message per crossing was two per connection wherever connections do not
overlap (a sweep: five connections to each of 1,000 ports), each a send() of the server process
and a wake-up, recv() and decode of the master: 60-70% of the master's CPU on bench's sweep, and
a sixth of the server process's. Gathered, a port whose connections come and go within the
delay is one "idle" (which still moves it to the end of the master's order of use), and one
that stays busy across reports costs nothing more; the master's view is at most
PORT_STATE_DELAY old (an eviction may stop a port whose first connection is that recent: the
port then drains, its connections are served to the end). A report names all its ports in one
idle and one busy message, not a message per port: on bench's sweep each port was still in
three or four reports, each port a message the master decoded and dispatched.
"""

from __future__ import annotations

import asyncio

from honeytrap import control

Key = tuple[str, int]

# How long a port's change waits for the others before the batch goes to the master: the
# staleness of the master's busy/idle view, as server statistics' STATS_DELAY is of its figures.
PORT_STATE_DELAY = 1.0
# Ports one busy or idle message names at most: "udp 65535 " is 10 bytes, so a message stays
# well within control.MAX_MESSAGE (a process has at most config.MAX_PORTS_PER_PROCESS ports).
REPORT_PORTS = 4096


class PortStates:
    """The busy/idle changes of one process's ports since the last report."""

    __slots__ = ("_changed", "_busy")

    def __init__(self) -> None:
        self._changed: dict[Key, bool] = {}  # crossed zero since the last report: busy now?
        self._busy: set[Key] = set()  # what the master was last told is busy (a new port: idle)

    def note(self, key: Key, busy: bool) -> bool:
        """`key` went busy (its first connection) or idle (its last one closed); True if this is
        the first change since the last report (the caller schedules one)."""
        first = not self._changed
        self._changed[key] = busy
        return first

    @property
    def pending(self) -> bool:
        return bool(self._changed)

    def forget(self, key: Key) -> None:
        """The port was let go (released): the master forgets it, nothing more to say."""
        self._changed.pop(key, None)
        self._busy.discard(key)

    def due(self) -> list[control.Message]:
        """The messages for the changes since the last report: one Idle for the ports idle now
        (also those reported idle and used meanwhile: the master's order of use moves them
        last), in the order they first changed, and one Busy for those busy now and not reported
        so (at most REPORT_PORTS ports a message)."""
        idle: list[Key] = []
        busy: list[Key] = []
        for key, now_busy in self._changed.items():
            if not now_busy:
                self._busy.discard(key)
                idle.append(key)
            elif key not in self._busy:
                self._busy.add(key)
                busy.append(key)
        self._changed.clear()
        messages: list[control.Message] = []
        for start in range(0, len(idle), REPORT_PORTS):
            messages.append(control.Idle(tuple(idle[start:start + REPORT_PORTS])))
        for start in range(0, len(busy), REPORT_PORTS):
            messages.append(control.Busy(tuple(busy[start:start + REPORT_PORTS])))
        return messages


class PortReporter:
    """A process's PortStates and the timer of its next report, sent over its control channel
    (one send for the batch)."""

    __slots__ = ("states", "_channel", "_loop", "_timer")

    def __init__(self, channel: control.Channel) -> None:
        self.states = PortStates()
        self._channel = channel
        self._loop: asyncio.AbstractEventLoop | None = None  # set once the process's loop runs
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def used(self, key: Key, busy: bool) -> None:
        """A port's first connection opened (busy) or its last one closed."""
        if self.states.note(key, busy) and self._loop is not None:
            self._timer = self._loop.call_later(PORT_STATE_DELAY, self.report)

    def forget(self, key: Key) -> None:
        self.states.forget(key)

    def report(self) -> None:
        """What changed, to the master now (before an expire, which the master refuses for a
        port it believes busy)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        messages = self.states.due()
        if not messages:
            return
        corked = self._channel.cork()
        for message in messages:
            self._channel.send_message(message)
        if corked:
            self._channel.uncork()
