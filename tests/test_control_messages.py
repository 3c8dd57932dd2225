"""Control messages between the master and a server process (control.py, server.parse_key).

A server process reads attacker bytes: what it sends the master is untrusted, so a port name
that does not parse is ignored, never an exception in the master."""

from __future__ import annotations

import os
import socket

from hypothesis import given
from hypothesis import strategies as st

from honeytrap.control import Channel
from honeytrap.server import parse_key, port_key


@given(st.text(max_size=40))
def test_any_text_is_a_port_or_nothing(text: str) -> None:
    protocol, port = parse_key(text)
    if protocol:
        assert protocol in ("tcp", "udp") and 0 < port < 65536
        assert parse_key(port_key(protocol, port)) == (protocol, port)
    else:
        assert port == 0


@given(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535))
def test_port_names_round_trip(protocol: str, port: int) -> None:
    assert parse_key(port_key(protocol, port)) == (protocol, port)


def test_out_of_range_and_signed_ports_are_refused() -> None:
    for text in ("tcp 0", "tcp 65536", "tcp -1", "tcp +80", "udp 8o", "sctp 80", "tcp", "",
                 "tcp \u0668\u0660"):  # Arabic-Indic 80: int() takes it, we do not
        assert parse_key(text) == ("", 0)


def test_serve_carries_the_socket_and_the_template_in_order(tmp_path: object) -> None:
    """Two serve messages sent back to back: each message's descriptors are taken in order."""
    master_end, process_end = socket.socketpair()
    master, process = Channel(master_end), Channel(process_end)
    listeners = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
    r, w = os.pipe()
    os.write(w, b"template bytes")
    os.close(w)
    try:
        assert master.send_fds("serve tcp 8080 2", [listeners[0].fileno(), r])
        assert master.send_fds("serve udp 53 1", [listeners[1].fileno()])
        messages: list[str] = []
        while len(messages) < 2:
            messages += process.receive()
        assert messages == ["serve tcp 8080 2", "serve udp 53 1"]
        first, template, second = (process.take_fd() for _ in range(3))
        assert first is not None and template is not None and second is not None
        assert os.read(template, 100) == b"template bytes"
        received = [socket.socket(fileno=fd) for fd in (first, second)]
        assert [sock.type for sock in received] == [socket.SOCK_STREAM, socket.SOCK_STREAM]
        for sock in received:
            sock.close()
        assert process.take_fd() is None
        os.close(template)
    finally:
        os.close(r)
        for sock in listeners:
            sock.close()
        master.close()
        process.close()
