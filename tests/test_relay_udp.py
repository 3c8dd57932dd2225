"""A UDP relay (relay.UdpRelayPeer) on loopback with a real backend socket: the order of the
attacker's datagrams survives the leg's start-up, whatever is read while it is being made."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from honeytrap.attack import Attack, Connection, Mode
from honeytrap.config import Config, PortConf, ProxyTarget
from honeytrap.relay import Leg, UdpRelayPeer

WAIT = 5.0  # seconds for a datagram on loopback


class Server:
    """What a UDP relay reads of its port's dynamic server (host.Host), for one proxy port."""

    def __init__(self, backend_port: int) -> None:
        self.port = PortConf("udp", 5353, Mode.PROXY, ProxyTarget("127.0.0.1", backend_port, "udp"))
        self.config = Config()
        self.template = b""
        self.closed: list[Attack] = []

    def perread(self, conn: Connection, direction: str, data: bytes) -> None:
        pass

    def connection_closed(self, conn: object, attack: Attack) -> None:
        self.closed.append(attack)


class Pump:
    """The UDP port's side (host.UdpHost): replies and the end of the exchange."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.replies: list[bytes] = []

    def reply(self, data: bytes, pktinfo: Any, addr: Any) -> None:
        self.replies.append(data)

    def finished(self, peer: Any) -> None:
        pass


class ReadInTheWindow(UdpRelayPeer):
    """A datagram read by the port in the loop pass between the leg's connection_made and
    open_leg's return: the window in which the relay sends straight through the new leg."""

    def leg_made(self, leg: Leg) -> None:
        super().leg_made(leg)
        self.datagram(b"query-2")


def test_a_datagram_read_while_the_leg_starts_does_not_overtake_those_waiting() -> None:
    async def main() -> list[bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend:
            backend.bind(("127.0.0.1", 0))
            backend.settimeout(WAIT)
            server = Server(backend.getsockname()[1])
            conn = Connection("udp", "127.0.0.1", 5353, "127.0.0.1", 40000)
            peer = ReadInTheWindow(Pump(server), conn, ("127.0.0.1", 40000), None)  # type: ignore[arg-type]
            peer.open()
            peer.datagram(b"query-1")  # before the leg exists: it waits for it
            assert peer.connecting is not None
            await peer.connecting
            loop = asyncio.get_running_loop()
            got = [await loop.run_in_executor(None, backend.recv, 100) for _ in range(2)]
            peer.close_all()
            return got

    assert asyncio.run(main()) == [b"query-1", b"query-2"]
