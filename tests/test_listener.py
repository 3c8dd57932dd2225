"""The listening socket of a dynamic server (listener.py): bound as the master binds it, and the
server's count of connections waiting to be accepted (ready_to_accept), which decides how many
accept() calls a wake-up makes."""

from __future__ import annotations

import socket
import time

from honeytrap.listener import bind_port, ready_to_accept


def _wait_queued(listener: socket.socket, count: int) -> int:
    """The accept queue's length once the handshakes completed (bounded wait on the kernel)."""
    deadline = time.monotonic() + 5.0
    while (queued := ready_to_accept(listener)) < count and time.monotonic() < deadline:
        time.sleep(0.001)
    return queued


def test_ready_to_accept_counts_the_queued_connections_of_a_dual_stack_listener() -> None:
    listener = bind_port("tcp", 0, "", socket.AF_INET)
    clients: list[socket.socket] = []
    try:
        port = listener.getsockname()[1]
        assert ready_to_accept(listener) == 0
        for address in ("127.0.0.1", "127.0.0.1", "::1"):
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            client = socket.socket(family, socket.SOCK_STREAM)
            clients.append(client)
            client.connect((address, port))
        assert _wait_queued(listener, 3) == 3
        conn, _addr = listener.accept()
        conn.close()
        assert ready_to_accept(listener) == 2
        while ready_to_accept(listener):
            listener.accept()[0].close()
        # Nothing queued: accept() would block, as the count said.
        try:
            listener.accept()
        except BlockingIOError:
            pass
        else:
            raise AssertionError("accepted a connection the count did not show")
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_ready_to_accept_is_zero_for_what_is_no_tcp_listener() -> None:
    udp = bind_port("udp", 0, "", socket.AF_INET)
    unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        assert ready_to_accept(udp) == 0
        assert ready_to_accept(unbound) == 0
    finally:
        udp.close()
        unbound.close()
