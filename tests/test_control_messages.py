"""Control messages between the master and a server process (control.py, control.parse_key).

A server process reads attacker bytes: what it sends the master is untrusted, so a port name
that does not parse is ignored, never an exception in the master."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from honeytrap import control
from honeytrap.control import Channel, ControlError, channel_pair


@given(st.text(max_size=40))
def test_any_text_is_a_port_or_nothing(text: str) -> None:
    protocol, port = control.parse_key(text)
    if protocol:
        assert protocol in ("tcp", "udp") and 0 < port < 65536
        assert control.parse_key(control.port_key(protocol, port)) == (protocol, port)
    else:
        assert port == 0


@given(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535))
def test_port_names_round_trip(protocol: str, port: int) -> None:
    assert control.parse_key(control.port_key(protocol, port)) == (protocol, port)


def test_out_of_range_and_signed_ports_are_refused() -> None:
    for text in ("tcp 0", "tcp 65536", "tcp -1", "tcp +80", "udp 8o", "sctp 80", "tcp", "",
                 "tcp \u0668\u0660"):  # Arabic-Indic 80: int() takes it, we do not
        assert control.parse_key(text) == ("", 0)


def test_serve_carries_the_socket_and_the_template_in_order(tmp_path: object) -> None:
    """Two serve messages sent back to back: each message's descriptors are taken in order."""
    master_end, process_end = channel_pair()
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


KEYS = st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535))
MESSAGES = st.one_of(
    st.builds(control.Serve, KEYS, st.sampled_from([1, 2])),
    *[st.builds(cls, KEYS) for cls in (control.Stop, control.Expire, control.Released)],
    *[st.builds(cls, st.lists(KEYS, min_size=1, max_size=8).map(tuple))
      for cls in (control.Busy, control.Idle)],
    st.builds(control.Retire), st.builds(control.Shutdown), st.builds(control.Relink),
    st.builds(control.Load, st.integers(0, 10**12 - 1)),
    st.builds(control.Stats, st.dictionaries(st.text(max_size=20), st.integers(-2**63, 2**63))),
)


@given(MESSAGES)
def test_every_message_round_trips(message: control.Message) -> None:
    assert control.decode(control.encode(message)) == message


@pytest.mark.parametrize("data", [b"idle", b"idle ", b"busy tcp", b"idle tcp 80 udp",
                                  b"idle tcp 80 ", b"idle  tcp 80", b"busy tcp 80 udp 0",
                                  b"idle tcp 80 tcp 8o"])
def test_a_report_with_any_bad_port_is_refused_whole(data: bytes) -> None:
    with pytest.raises(ControlError):
        control.decode(data)


@given(st.lists(st.sampled_from(["tcp", "udp", "80", "0", "65536", "", "x", "53"]), max_size=9))
def test_any_words_after_busy_or_idle_are_a_report_or_a_control_error(words: list[str]) -> None:
    for kind in (b"busy ", b"idle "):
        data = kind + " ".join(words).encode()
        try:
            message = control.decode(data)
        except ControlError:
            continue
        assert isinstance(message, (control.Busy, control.Idle))
        assert control.encode(message) == data


@given(st.lists(st.sampled_from(["tcp", "udp", "80", "080", "0", "65535", "65536", "", "x", "٣",
                                  "-1", "+1", "TCP"]), max_size=9))
def test_a_report_decodes_as_its_ports_one_by_one(words: list[str]) -> None:
    """The report's ports, checked all at once, are what parse_key makes of each pair, or a
    ControlError where it refuses one (or the words do not pair up)."""
    pairs = [f"{words[i]} {words[i + 1]}" for i in range(0, len(words) - 1, 2)]
    expected = [control.parse_key(pair) for pair in pairs]
    data = b"idle " + " ".join(words).encode()
    if not words or len(words) % 2 or ("", 0) in expected:
        with pytest.raises(ControlError):
            control.decode(data)
    else:
        assert control.decode(data) == control.Idle(tuple(expected))


@given(st.binary(max_size=200))
def test_any_bytes_are_a_message_or_a_control_error(data: bytes) -> None:
    try:
        message = control.decode(data)
    except ControlError:
        return
    assert control.decode(control.encode(message)) == message


def test_a_full_channel_queues_and_delivers_every_message_whole_and_in_order() -> None:
    """The other side does not read: the socket fills, further messages (with descriptors)
    wait in the queue instead of being dropped or torn; once it reads, every one arrives, in
    order, each with its own descriptor."""
    master_end, process_end = channel_pair()
    backlog: list[bool] = []
    master = Channel(master_end, backlog.append)
    process = Channel(process_end)
    r, w = os.pipe()
    try:
        sent = 0
        while master.backlog < 100:
            assert master.send_message(control.Serve(("tcp", 1 + sent % 65535), 1), [r])
            sent += 1
        assert backlog == [True] and sent > 100
        got: list[control.Message] = []
        while len(got) < sent:
            master.flush()
            for data in process.receive_raw():
                message = control.decode(data)
                assert isinstance(message, control.Serve)
                (fd,) = process.take_fds(1)
                assert os.fstat(fd).st_ino == os.fstat(r).st_ino
                os.close(fd)
                got.append(message)
        assert got == [control.Serve(("tcp", 1 + i % 65535), 1) for i in range(sent)]
        assert backlog == [True, False] and master.backlog == 0
    finally:
        os.close(r)
        os.close(w)
        master.close()
        process.close()


def test_a_peer_that_never_reads_gets_its_channel_closed_not_unbounded_memory() -> None:
    master_end, process_end = channel_pair()
    master = Channel(master_end)
    try:
        while master.send_message(control.Busy((("tcp", 80),))):
            pass
        assert master.closed and master.backlog == 0
    finally:
        process_end.close()


def test_the_queued_descriptors_are_listed_for_children_to_close() -> None:
    """What waits in the queue holds our own copies of its descriptors (bound ports): the master
    closes them in every child it forks meanwhile (tests/test_daemon_control_fill.py)."""
    ours, theirs = channel_pair()
    channel = Channel(ours)
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        while not channel.backlog:  # fill the socket's buffer: the next ones are queued
            assert channel.send_message(control.Serve(("tcp", 8080), 1), [fd])
        assert channel.send_message(control.Serve(("tcp", 8081), 1), [fd])
        queued = channel.queued_fds()
        assert len(queued) == channel.backlog == 2
        assert fd not in queued
        for copy in queued:
            assert os.path.samestat(os.fstat(copy), os.fstat(fd))
    finally:
        os.close(fd)
        channel.close()
        theirs.close()
    for copy in queued:  # closed with the channel
        try:
            os.fstat(copy)
        except OSError:
            continue
        raise AssertionError(f"descriptor {copy} still open")


def test_a_send_to_a_gone_peer_calls_on_close_before_the_socket_closes() -> None:
    """The owner must take the descriptor out of its selector while it is still the channel's."""
    ours, theirs = channel_pair()
    channel = Channel(ours)
    seen: list[int] = []
    channel.on_close = lambda: seen.append(channel.fileno())
    number = channel.fileno()
    theirs.close()
    assert not channel.send_message(control.Retire())  # EPIPE: the channel closes
    assert channel.closed and seen == [number]
    channel.close()  # idempotent: on_close ran once
    assert seen == [number]
