"""Our FTP client (stdlib sockets): active mode first, as Windows ftp.exe does, passive
(EPSV, then PASV) as fallback. IPv6 through EPRT/EPSV (RFC 2428).

Active mode opens a listener on the control connection's local address and accepts the data
connection only from the server's address. Passive mode connects to the control connection's
peer, whatever address the server names (RFC 2577: no bounce to third parties).
"""

from __future__ import annotations

import socket

from honeytrap.download.deadline import Deadline
from honeytrap.download.ftpproto import Reply, ReplyReader, command, passive_port, port_command
from honeytrap.download.policy import FetchContext, Fetched, read_capped
from honeytrap.download.request import DownloadRequest
from honeytrap.errors import DownloadError, ProtocolError

# How long we wait for the server to connect back in active mode before trying passive: a
# server behind NAT never comes, and Windows' own client waits about this long.
ACTIVE_ACCEPT_TIMEOUT = 10.0
# Replies read per command before we give up on a server that sends only preliminaries.
MAX_REPLIES_PER_COMMAND = 8


class _Control:
    """The control connection: send a command, get its final reply."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self.reader = ReplyReader()
        self.pending: list[Reply] = []

    def reply(self) -> Reply:
        while not self.pending:
            data = self.sock.recv(4096)  # a DeadlineSocket: bounded by the deadline
            if not data:
                raise DownloadError("FTP server closed the control connection")
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)

    def final(self) -> Reply:
        """The next reply that is not 1xx (preliminary)."""
        for _ in range(MAX_REPLIES_PER_COMMAND):
            reply = self.reply()
            if reply.code >= 200:
                return reply
        raise ProtocolError("FTP server sent only preliminary replies")

    def send(self, verb: str, argument: str = "") -> Reply:
        self.sock.sendall(command(verb, argument))
        return self.final()

    def expect(self, verb: str, argument: str = "", ok: tuple[int, ...] = (200,)) -> Reply:
        reply = self.send(verb, argument)
        if reply.code not in ok:
            raise DownloadError(f"FTP {verb}: {reply.code} {_text(reply)}")
        return reply


def fetch(request: DownloadRequest, ctx: FetchContext) -> Fetched:
    """Download `request.path` over FTP; active mode, then passive."""
    try:
        return _session(request, ctx, active=True)
    except (DownloadError, ProtocolError, OSError) as exc:
        ctx.deadline.remaining()  # the time cap ends the download; no passive try after it
        active_error = exc
    try:
        return _session(request, ctx, active=False)
    except (DownloadError, ProtocolError, OSError) as exc:
        raise DownloadError(f"active: {active_error}; passive: {exc}") from exc


def _session(request: DownloadRequest, ctx: FetchContext, *, active: bool) -> Fetched:
    sock = ctx.connect(request.port)
    with sock:
        control = _Control(sock, ctx.deadline)
        greeting = control.final()
        if greeting.code != 220:
            raise DownloadError(f"FTP greeting {greeting.code} {_text(greeting)}")
        _login(control, request)
        control.expect("TYPE", "I")
        data = _active(control, request, ctx) if active else _passive(control, request, ctx)
        remote = sock.getpeername()
        local = sock.getsockname()
        try:
            control.send("QUIT")
        except (OSError, DownloadError, ProtocolError):
            pass  # the file is complete; a rude goodbye changes nothing
    return Fetched(data, str(remote[0]), int(remote[1]), str(local[0]), int(local[1]))


def _login(control: _Control, request: DownloadRequest) -> None:
    reply = control.send("USER", request.user or "anonymous")
    if reply.code == 331:
        reply = control.send("PASS", request.password)
    if reply.code not in (230, 202):
        raise DownloadError(f"FTP login refused: {reply.code} {_text(reply)}")


def _active(control: _Control, request: DownloadRequest, ctx: FetchContext) -> bytes:
    local = control.sock.getsockname()[0]
    server = control.sock.getpeername()[0]
    with ctx.deadline.new_socket(control.sock.family) as listener:
        listener.bind((local, 0))
        listener.listen(1)
        control.expect(*port_command(local, listener.getsockname()[1]))
        _retr(control, request)
        data_sock = _accept(listener, server, ctx.deadline)
        return _receive(control, data_sock, ctx)


def _accept(listener: socket.socket, server: str, deadline: Deadline) -> socket.socket:
    """The data connection from the server's address; anyone else is turned away."""
    for _ in range(MAX_REPLIES_PER_COMMAND):
        try:
            conn, peer = deadline.call(listener, socket.socket.accept, listener,
                                       cap=ACTIVE_ACCEPT_TIMEOUT)
        except TimeoutError as exc:
            raise DownloadError("FTP server did not connect back (active mode)") from exc
        if peer[0] == server:
            return deadline.adopt(conn)
        conn.close()
    raise DownloadError("foreign hosts kept connecting to our FTP data port")


def _passive(control: _Control, request: DownloadRequest, ctx: FetchContext) -> bytes:
    reply = control.send("EPSV")
    if reply.code != 229 and control.sock.family == socket.AF_INET:
        reply = control.send("PASV")
    port = passive_port(reply)
    data_sock = ctx.connect(port)
    _retr(control, request)
    return _receive(control, data_sock, ctx)


def _retr(control: _Control, request: DownloadRequest) -> None:
    control.sock.sendall(command("RETR", request.path))
    reply = control.reply()
    if reply.code >= 400:
        raise DownloadError(f"FTP RETR: {reply.code} {_text(reply)}")
    if reply.code >= 200:
        # A final reply before any data: the server refused to open a data connection.
        raise DownloadError(f"FTP RETR: no transfer ({reply.code} {_text(reply)})")


def _receive(control: _Control, data_sock: socket.socket, ctx: FetchContext) -> bytes:
    with data_sock:
        data = read_capped(data_sock.recv, ctx.policy.max_size, ctx.deadline)
    done = control.final()
    if done.code not in (226, 250):
        raise DownloadError(f"FTP transfer incomplete: {done.code} {_text(done)}")
    return data


def _text(reply: Reply) -> str:
    return reply.text[:80].decode("latin-1")
