"""The server's end of a link to the recorder (recorderlink.RecorderClient), on a real
socketpair and a real event loop: what it keeps while the recorder does not read, and what it
sends when it reads again."""

from __future__ import annotations

import asyncio
import socket
import sys

from honeytrap import recorderlink, wire
from honeytrap.attack import Attack, Connection, Payload
from honeytrap.config import Config

# Bound on every wait here: far above what a step needs, so only a bug reaches it.
WAIT = 20.0
# Frames of PAYLOAD_BYTES each, FRAMES of them: many times a socketpair's buffer and
# SEND_BUFFER_BYTES, far below unacknowledged_limit (nothing is held back here).
PAYLOAD_BYTES = 8 * 1024
FRAMES = 1500


def attack(n: int) -> Attack:
    payload = n.to_bytes(4, "big") * (PAYLOAD_BYTES // 4)
    return Attack(Connection("tcp", "192.0.2.1", 80, "198.51.100.7", 40001, Payload(payload)))


class RecorderEnd:
    """The recorder's end of a link: the frames it receives, read as the loop runs."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = wire.FrameReader(max_frame=recorderlink.max_frame(Config()))

    async def frames(self, count: int) -> list[tuple[int, bytes]]:
        """(seq, payload) of the next `count` attack frames (at least: a read may end past)."""
        return await read_frames(self.sock, self.reader, count)


async def read_frames(sock: socket.socket, reader: wire.FrameReader,
                      count: int) -> list[tuple[int, bytes]]:
    loop = asyncio.get_running_loop()
    got: list[tuple[int, bytes]] = []
    while len(got) < count:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), WAIT)
        assert data, "the link closed"
        got += [(seq, a.payload) for kind, seq, a in reader.feed(data)
                if kind == "attack" and a is not None]
    return got


def expected(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(n, attack(n).payload) for n in range(first, last + 1)]


def send_buffer_bound() -> int:
    """What the send buffer may hold: SEND_BUFFER_BYTES and the frame that crossed it, as
    allocated (a bytearray over-allocates as it grows)."""
    frame = len(wire.encode_attack(1, attack(1), max_frame=recorderlink.max_frame(Config())))
    return 2 * (recorderlink.SEND_BUFFER_BYTES + frame)


def test_frames_the_recorder_does_not_read_are_kept_once() -> None:
    """While the recorder does not read (its pipeline full), the frames the server keeps for it
    are in `unacked`, and the send buffer holds no more than SEND_BUFFER_BYTES of copies: not a
    second copy of everything unsent (the soak's servers: unacknowledged_limit twice over).
    When it reads again, every frame arrives once, in order, those handed over meanwhile too."""
    server_end, recorder_sock = socket.socketpair()
    recorder_end = RecorderEnd(recorder_sock)

    async def run() -> None:
        client = recorderlink.RecorderClient(server_end, Config(), lambda full: None)
        client.start(asyncio.get_running_loop())
        for n in range(1, FRAMES + 1):
            client.submit(attack(n))
            assert sys.getsizeof(client.out) <= send_buffer_bound()
        assert client.unacked_bytes > 10 * send_buffer_bound()  # the socket is full: kept
        half = FRAMES // 2
        got = await recorder_end.frames(half)
        for n in range(FRAMES + 1, FRAMES + 101):  # handed over while the rest drains
            client.submit(attack(n))
        got += await recorder_end.frames(FRAMES + 100 - len(got))
        assert got == expected(1, FRAMES + 100)
        assert sys.getsizeof(client.out) <= send_buffer_bound()
        assert len(client.unacked) == FRAMES + 100  # none acknowledged yet
        client._detach()

    try:
        asyncio.run(run())
    finally:
        recorder_sock.close()


def test_a_relink_sends_every_unacknowledged_frame_once_in_order() -> None:
    """A new link (the recorder restarted) gets every frame not acknowledged, oldest first,
    through the same bounded send buffer; the acknowledged ones are not sent again."""
    first_end, first_sock = socket.socketpair()
    second_end, second_sock = socket.socketpair()
    first_recorder, second_recorder = RecorderEnd(first_sock), RecorderEnd(second_sock)

    async def run() -> None:
        acked = asyncio.Event()
        client = recorderlink.RecorderClient(first_end, Config(), lambda full: None,
                                             on_acked=acked.set)
        client.start(asyncio.get_running_loop())
        for n in range(1, FRAMES + 1):
            client.submit(attack(n))
        assert (await first_recorder.frames(10))[:10] == expected(1, 10)
        first_sock.send(b"".join(wire.encode_ack(seq) for seq in range(1, 6)))
        while len(client.unacked) > FRAMES - 5:  # the five acks may come in more reads
            acked.clear()
            await asyncio.wait_for(acked.wait(), WAIT)
        assert next(iter(client.unacked)) == 6
        client.relink(second_end)
        assert sys.getsizeof(client.out) <= send_buffer_bound()
        assert await second_recorder.frames(FRAMES - 5) == expected(6, FRAMES)
        client._detach()

    try:
        asyncio.run(run())
    finally:
        first_sock.close()
        second_sock.close()
