"""Corked control channels (control.Channel.cork): a round's handovers go in batches of
HANDOVER_BATCH messages, one sendmsg each, in order with the messages sent meanwhile, every
descriptor arriving with its own serve; what the channel was handed is closed once sent, or when
it fails, and a full queue refuses a handover at once."""

from __future__ import annotations

import os

import pytest

from honeytrap import control
from honeytrap.control import Channel, Serve, Stop

PORTS = 3 * control.HANDOVER_BATCH + 5  # several batches and a partial one


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pipe_reading(index: int) -> int:
    """A descriptor that reads `index` (which serve it went with)."""
    r, w = os.pipe()
    os.write(w, index.to_bytes(2, "big"))
    os.close(w)
    return r


def test_batches_keep_the_order_and_every_descriptor_with_its_serve() -> None:
    before = open_fds()
    ours, theirs = control.channel_pair()
    master, process = Channel(ours), Channel(theirs)
    sent: list[control.Message] = []
    assert master.cork() and not master.cork()
    for i in range(PORTS):
        message = Serve(("tcp", 1000 + i), 1)
        assert master.hand(message, [pipe_reading(i)])
        sent.append(message)
        if i % 7 == 0:  # a stop between the serves keeps its place
            master.send_message(Stop(("tcp", 1000 + i)))
            sent.append(Stop(("tcp", 1000 + i)))
    master.uncork()
    assert not master.corked
    got: list[control.Message] = []
    while len(got) < len(sent):
        for data in process.receive_raw():
            message = control.decode(data)
            got.append(message)
            if isinstance(message, Serve):
                [fd] = process.take_fds(1)
                assert int.from_bytes(os.read(fd, 2), "big") == message.key[1] - 1000
                os.close(fd)
    assert got == sent and process.fds == []
    master.close()
    process.close()
    assert open_fds() == before  # the master's copies closed once sent


def test_a_full_queue_refuses_the_handover_at_once_and_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control, "MAX_QUEUED", 2)
    before = open_fds()
    ours, theirs = control.channel_pair()
    master = Channel(ours)  # the other side reads nothing
    master.cork()
    handed = 0
    while master.hand(Serve(("tcp", 2000 + handed), 1), [pipe_reading(handed)]):
        handed += 1
        assert handed < 100_000, "the socket never filled"
    assert master.overflowed and master.closed
    assert handed > control.HANDOVER_BATCH  # the socket's buffer took batches first
    theirs.close()
    assert open_fds() == before
