"""One time cap per download, enforced on every blocking call it makes.

A `Deadline` is made when a download starts; every socket the download uses is a
`DeadlineSocket` (or, for HTTPS, a `DeadlineSSLSocket`) bound to it, which sets the socket's
timeout to what is left of the deadline before each connect, accept, recv and send (and TLS
handshake step). So a server that drips its status line, its headers, its FTP replies or its
data one byte at a time gets no more time than one that sends nothing: the download is cut at
the deadline, whichever read it is in. A single socket timeout set at connect time (what
http.client does) bounds one read, not the download: each dripped byte restarts it.

`cancel()` ends the download from another thread: its sockets are shut down (a recv blocked in
one returns at once) and every later call fails. The background pool does that to a download it
abandons (honeytrap/background.py), so an abandoned download holds no connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from honeytrap.errors import DownloadError

_T = TypeVar("_T")
CANCELLED = "cancelled by the download pool"


class Deadline:
    """The overall time cap of one download, shared by every step of it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.seconds = seconds
        self.expires = clock() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.cancelled = False

    def remaining(self) -> float:
        """Seconds left; DownloadError once none are (or the download was cancelled)."""
        if self.cancelled:
            raise DownloadError(CANCELLED)
        left = self.expires - self._clock()
        if left <= 0:
            raise DownloadError(f"time cap of {self.seconds:g} s reached")
        return left

    def timeout(self, cap: float | None = None) -> float:
        """A socket timeout: what is left, at most `cap`."""
        left = self.remaining()
        return left if cap is None else min(left, cap)

    def new_socket(self, family: int, kind: int = socket.SOCK_STREAM) -> DeadlineSocket:
        """A new socket bound to this deadline."""
        return self.adopt(socket.socket(family, kind))

    def adopt(self, sock: socket.socket) -> DeadlineSocket:
        """`sock` (an accepted connection, say) bound to this deadline; `sock` itself is
        detached and must not be used again."""
        armed = DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        armed.deadline = self
        self._track(armed)
        return armed

    def wrap_tls(
        self, context: ssl.SSLContext, raw: socket.socket, server_hostname: str | None
    ) -> DeadlineSSLSocket:
        """TLS over `raw`, the handshake and every later read and write under this deadline."""
        context.sslsocket_class = DeadlineSSLSocket
        tls = context.wrap_socket(raw, server_hostname=server_hostname,
                                  do_handshake_on_connect=False)
        assert isinstance(tls, DeadlineSSLSocket)
        tls.deadline = self
        try:
            self._track(tls)
            tls.do_handshake()
        except BaseException:
            tls.close()  # `raw` was detached into it: this is the connection's one socket
            raise
        return tls

    def cancel(self) -> None:
        """End the download now, from any thread: shut its sockets down (a blocked recv
        returns), and make every later step fail."""
        with self._lock:
            self.cancelled = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected, or closed by the download meanwhile

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self.cancelled:
                sock.close()
                raise DownloadError(CANCELLED)
            # Closed sockets are dropped as new ones come: a download opens only a few.
            self._sockets = [s for s in self._sockets if s.fileno() >= 0]
            self._sockets.append(sock)

    def call(
        self, sock: socket.socket, operation: Callable[..., _T], *args: Any,
        cap: float | None = None,
    ) -> _T:
        """`operation(*args)` with the socket's timeout set to what is left (at most `cap`);
        a timeout that ends at the deadline is the deadline's DownloadError."""
        sock.settimeout(self.timeout(cap))
        try:
            result = operation(*args)
        except TimeoutError:
            self.remaining()  # raises once the cap is reached
            raise
        except OSError:
            if self.cancelled:  # the shutdown from cancel(), not the server
                raise DownloadError(CANCELLED) from None
            raise
        if self.cancelled:
            # cancel() shut the socket: the end of file a recv now returns is ours, not the
            # server's, and must not pass for a complete file.
            raise DownloadError(CANCELLED)
        return result


class DeadlineSocket(socket.socket):
    """A socket whose every blocking call is bounded by what is left of its deadline."""

    deadline: Deadline

    def connect(self, address: Any) -> None:
        self.deadline.call(self, super().connect, address)

    def accept(self) -> tuple[socket.socket, Any]:
        conn, peer = self.deadline.call(self, super().accept)
        return self.deadline.adopt(conn), peer

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self.deadline.call(self, super().recv, bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return self.deadline.call(self, super().recv_into, buffer, nbytes, flags)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        return self.deadline.call(self, super().recvfrom, bufsize, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        return self.deadline.call(self, super().send, data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        # socket.sendall's timeout bounds the whole call (Python 3.5+), not each send.
        self.deadline.call(self, super().sendall, data, flags)

    def sendto(self, data: Any, *args: Any) -> int:
        return self.deadline.call(self, super().sendto, data, *args)


class DeadlineSSLSocket(ssl.SSLSocket):
    """TLS over a DeadlineSocket: the handshake and each TLS read and write (which CPython
    bounds by the socket's timeout as one operation) get what is left of the deadline.
    recv, recv_into and sendall go through read and send."""

    deadline: Deadline

    def do_handshake(self, block: bool = False) -> None:
        self.deadline.call(self, super().do_handshake, block)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # noqa: A002 - ssl's name
        return self.deadline.call(self, super().read, len, buffer)

    def write(self, data: Any) -> int:
        return self.deadline.call(self, super().write, data)

    def send(self, data: Any, flags: int = 0) -> int:
        return self.deadline.call(self, super().send, data, flags)
