"""The master's side of the recorder's life cycle: fork, links, restart, relink, stop.

The master forks the recorder (recorder.py) at start, waits for its "ready", and gives every new
server process a link to it. When a recorder dies with server processes still linked to it, a
new one is forked and each of those processes is relinked (control.Relink with the new link's
descriptor): it sends again what the dead one had not acknowledged. On SIGHUP a new recorder
(the new plugins) takes the new processes while the old one is stopped: it finishes the attacks
of the processes it still has, then exits. At shutdown every recorder is stopped once the
server processes are gone. The master's loop hands each recorder's readable channel here
(`on_readable`) and each reaped recorder (`reaped`, then `exited`).
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
from collections.abc import Callable

from honeytrap import control
from honeytrap.control import Channel
from honeytrap.recorder import RecorderHandle

log = logging.getLogger("honeytrap.master")


class Recorders:
    """The current recorder (new server processes link to it) and every live one, by pid."""

    def __init__(self, selector: selectors.BaseSelector,
                 spawn: Callable[[], RecorderHandle | None]) -> None:
        self.selector = selector
        self.spawn = spawn  # forks a recorder with the master's current plugins
        self.current: RecorderHandle | None = None
        self.live: dict[int, RecorderHandle] = {}

    def start(self) -> None:
        """Fork a recorder with the current plugins; it becomes the one new servers link to."""
        handle = self.spawn()
        self.current = handle
        if handle is None:
            return
        self.live[handle.pid] = handle
        handle.channel.on_close = functools.partial(self._unwatch, handle.channel)
        if not handle.wait_ready():
            log.error("the recorder (pid %d) did not get ready", handle.pid)
        if not handle.channel.closed:
            self.selector.register(handle.channel.fileno(), selectors.EVENT_READ, handle)
        log.info("recorder started (pid %d)", handle.pid)

    def replace(self) -> None:
        """SIGHUP: a new recorder for the processes to come; the old one records what its
        servers still hand it, then exits once they all have."""
        previous = self.current
        self.start()
        if previous is not None:
            previous.stop()

    def link(self) -> tuple[RecorderHandle | None, socket.socket | None]:
        """A link for a new server process, and the recorder it goes to (None, None: no
        recorder now; its attacks wait in the process until it is relinked)."""
        if self.current is None:
            self.start()
        recorder = self.current
        link = recorder.link() if recorder is not None else None
        if link is None:
            log.error("no recorder link for a new server process")
            return None, None
        return recorder, link

    def relink(self, channel: Channel) -> RecorderHandle | None:
        """Give a server process (its control channel) a link to the current recorder: the
        recorder it is linked to now (None: none, it stays unlinked)."""
        recorder = self.current
        link = recorder.link() if recorder is not None else None
        if recorder is None or link is None:
            return None
        try:
            return recorder if channel.send_message(control.Relink(), [link.fileno()]) else None
        finally:
            link.close()

    def on_readable(self, handle: RecorderHandle) -> None:
        for message in handle.channel.receive():
            if message.startswith("stats "):
                stats = control.parse_stats(message)
                if stats is not None:
                    handle.stats = stats
            elif message == "":
                self._unwatch(handle.channel)

    def reaped(self, pid: int) -> RecorderHandle | None:
        """The recorder with this pid, which exited (None: not one of ours)."""
        return self.live.pop(pid, None)

    def exited(self, handle: RecorderHandle, code: int, linked: int, *, restart: bool) -> bool:
        """A reaped recorder, with exit status `code` and `linked` server processes still
        linked to it: True if it crashed (a new one is started if `restart` and none is, and
        the caller relinks those processes); its final stats are in handle.stats."""
        if not handle.channel.closed:
            self.on_readable(handle)  # its final stats
        handle.channel.close()  # out of the selector too (on_close)
        if code == 0 and handle.stopped and not linked:
            log.info("recorder (pid %d) finished", handle.pid)
            return False
        log.error("recorder (pid %d) exited with status %d; %d server processes to relink",
                  handle.pid, code, linked)
        if self.current is handle:
            self.current = None
        if self.current is None and restart:
            self.start()
        return True

    def stop_all(self) -> None:
        """The servers are gone: every recorder finishes what it was handed, then exits."""
        for recorder in self.live.values():
            recorder.stop()

    def channels(self) -> list[Channel]:
        return [r.channel for r in self.live.values()]

    def _unwatch(self, channel: Channel) -> None:
        try:
            self.selector.unregister(channel.fileno())
        except (KeyError, ValueError):
            pass
