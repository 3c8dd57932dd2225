"""The control channel between the master and one server process: a socketpair carrying
newline-terminated words (and one JSON object after "stats "). <port> is "<protocol> <number>".

process -> master: busy <port> | idle <port> | expire <port> | released <port> | stats {...}
master -> process: serve <port> <n> (with n descriptors: the bound socket, then the template
                   file if the port has one) | stop <port> (drain: let open connections finish)
                   | retire (no more ports: exit once the last connection is recorded)
                   | shutdown (record and close everything now)
                   | relink (with a descriptor: a new link to the recorder, recorder.py)
An empty message means the other end is gone. Descriptors passed with a message (SCM_RIGHTS)
are collected in order in `fds`; the receiver takes one per message that carries one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

log = logging.getLogger("honeytrap.control")

# A message is a word or a small JSON object; anything longer is a bug on the other side.
MAX_MESSAGE = 64 * 1024
# Descriptors accepted with one read (the most one message carries is 2, serve's; more is a bug
# on the other side).
MAX_FDS = 4


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._buffer = bytearray()
        self.closed = False
        self.fds: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: str) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(message.encode() + b"\n")
        except BlockingIOError:
            log.warning("control channel full: %s dropped", message.split(" ", 1)[0])
        except OSError:
            self.closed = True

    def send_fd(self, message: str, fd: int) -> bool:
        """Send `message` with a descriptor (the caller keeps and closes its own copy)."""
        return self.send_fds(message, [fd])

    def send_fds(self, message: str, fds: list[int]) -> bool:
        """Send `message` with descriptors (the caller keeps and closes its own copies)."""
        if self.closed:
            return False
        try:
            socket.send_fds(self.sock, [message.encode() + b"\n"], fds)
        except BlockingIOError:
            log.error("control channel full: %s with a descriptor dropped", message)
            return False
        except OSError:
            self.closed = True
            return False
        return True

    def send_stats(self, stats: dict[str, Any]) -> None:
        self.send("stats " + json.dumps(stats, separators=(",", ":")))

    def receive(self) -> list[str]:
        """Every complete message pending; "" (last) when the other end closed."""
        messages: list[str] = []
        while True:
            try:
                chunk, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk, fds = b"", []
            self.fds.extend(fds)
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
            if len(self._buffer) > MAX_MESSAGE and b"\n" not in self._buffer:
                log.error("control channel: oversized message discarded")
                self._buffer.clear()
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        messages.extend(line.decode(errors="replace") for line in lines)
        if self.closed:
            messages.append("")
        return messages

    def take_fd(self) -> int | None:
        return self.fds.pop(0) if self.fds else None

    def close(self) -> None:
        self.closed = True
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()


def parse_stats(message: str) -> dict[str, int] | None:
    if not message.startswith("stats "):
        return None
    try:
        data = json.loads(message[6:])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)}
