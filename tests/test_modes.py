"""Mirror and proxy modes end to end: the real daemon in a sensor namespace (NFQUEUE rules as in
test_daemon.py), attackers with listeners of their own, backends in the sensor namespace, and the
records in attackers.json checked byte for byte in both directions."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon import REPO, Honeytrap
from netns import Host, Lab, inside

from honeytrap.mirror import MIRRORS_PER_PEER, is_own_address

MIRROR = 4  # attack.Mode values, as attackers.json carries them
PROXY = 8
NORMAL = 1
TIMEOUT = 10.0
UDP_BURST = 16  # datagrams sent back to back to a UDP proxy port (fewer than UDP_PENDING_DATAGRAMS)


@pytest.fixture
def sensor(ht: Honeytrap) -> Honeytrap:
    """conftest.py's daemon, with a 10 s listen timeout."""
    ht.args += ["-l", "10"]
    return ht


def tcp_listener(host: Host, address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with inside(host):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(8)
    sock.settimeout(TIMEOUT)
    return sock


def tcp_client(host: Host, source: str, address: str, port: int) -> socket.socket:
    """A connection from `source` (one of the attacker's addresses) to the sensor."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with inside(host):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect((address, port))
    return sock


def udp_socket(host: Host, address: str = "", port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with inside(host):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    if address:
        sock.bind((address, port))
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def in_thread(work: Callable[[], Any]) -> Callable[[], Any]:
    """Run `work` in a thread; the returned function joins it (bounded) and gives its result."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(TIMEOUT * 2)
        assert not thread.is_alive(), "helper thread did not finish"
        if errors:
            raise errors[0]
        return result[0]

    return join


def connection(record: dict[str, Any], key: str) -> dict[str, Any]:
    conn = record[key]
    assert isinstance(conn, dict)
    return conn


def payload(record: dict[str, Any], key: str) -> bytes:
    return bytes.fromhex(connection(record, key)["payload"]["data_hex"])


def by_remote(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {connection(r, "attack_connection")["remote_ip"]: r for r in records}


# --- mirror -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_two_attackers_at_once_are_each_mirrored_to_themselves(
    lab: Lab, sensor: Honeytrap, family: str
) -> None:
    port = 2121
    sensor.extra_config = f'portconf = {{ mirror = {{ protocol = "tcp" port = "{port}" }} }}'
    sensor.start()
    second = lab.add_address(lab.attacker, 3)
    attackers = [getattr(lab.attacker, family), getattr(second, family)]
    target = getattr(lab.sensor, family)
    listeners = [tcp_listener(lab.attacker, a, port) for a in attackers]
    clients = [tcp_client(lab.attacker, a, target, port) for a in attackers]  # both open at once
    mirrored: dict[str, tuple[str, int]] = {}
    for address, listener, client in zip(attackers, listeners, clients, strict=True):
        sent = f"hello from {address}\r\n\x00\xff".encode()
        client.sendall(sent)
        back, peer = listener.accept()  # the sensor connected back to THIS attacker
        back.settimeout(TIMEOUT)
        assert peer[0] == target
        mirrored[address] = peer[:2]
        assert recv_exactly(back, len(sent)) == sent
        back.sendall(b"mirror of " + address.encode() + b"\xfe")
        assert recv_exactly(client, len(address) + 11) == b"mirror of " + address.encode() + b"\xfe"
        back.close()
        client.close()
        listener.close()

    records = by_remote(sensor.wait_records(2))
    assert set(records) == set(attackers)
    for address, record in records.items():
        assert record["operation_mode"] == MIRROR
        assert payload(record, "attack_connection") == f"hello from {address}\r\n\x00\xff".encode()
        assert payload(record, "proxy_connection") == b"mirror of " + address.encode() + b"\xfe"
        proxy = connection(record, "proxy_connection")
        assert proxy["protocol"] == "tcp"
        assert (proxy["remote_ip"], proxy["remote_port"]) == (address, port)
        assert (proxy["local_ip"], proxy["local_port"]) == mirrored[address]


def test_mirror_to_a_refusing_peer_falls_back_to_normal_mode(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.extra_config = 'portconf = { mirror = { protocol = "tcp" port = "21" } }'
    sensor.start()
    client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 21)  # no listener: RST
    template = (REPO / "templates" / "21_tcp").read_bytes()
    assert recv_exactly(client, len(template)) == template
    client.sendall(b"USER mirror\r\n")
    client.close()
    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == NORMAL
    assert payload(record, "attack_connection") == b"USER mirror\r\n"
    assert any("mirror connection to" in note and "failed" in note for note in record["notes"])


def test_m_mirrors_every_port_not_configured_otherwise(lab: Lab, sensor: Honeytrap) -> None:
    sensor.args += ["-m"]
    sensor.start()
    listener = tcp_listener(lab.attacker, lab.attacker.ip4, 2222)
    client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 2222)
    client.sendall(b"SSH-2.0-attacker\r\n")
    back, _ = listener.accept()
    back.settimeout(TIMEOUT)
    assert recv_exactly(back, 18) == b"SSH-2.0-attacker\r\n"
    back.sendall(b"SSH-2.0-mirror\r\n")
    assert recv_exactly(client, 16) == b"SSH-2.0-mirror\r\n"
    back.close()
    assert client.recv(100) == b""  # the mirror closed: so does the relay
    client.close()
    listener.close()
    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == MIRROR
    assert payload(record, "proxy_connection") == b"SSH-2.0-mirror\r\n"


def test_udp_exchange_is_mirrored_to_its_own_peer(lab: Lab, sensor: Honeytrap) -> None:
    sensor.extra_config = 'portconf = { mirror = { protocol = "udp" port = "1434" } }'
    sensor.start()
    mirror = udp_socket(lab.attacker, lab.attacker.ip4, 1434)  # the attacker's own "server"
    client = udp_socket(lab.attacker, lab.attacker.ip4, 0)
    client.sendto(b"\x02probe", (lab.sensor.ip4, 1434))
    data, peer = mirror.recvfrom(65535)
    assert data == b"\x02probe"
    mirror.sendto(b"\x05answer", peer)
    reply, source = client.recvfrom(65535)
    assert (reply, source[0]) == (b"\x05answer", lab.sensor.ip4)
    client.close()
    mirror.close()
    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == MIRROR
    assert payload(record, "attack_connection") == b"\x02probe"
    assert payload(record, "proxy_connection") == b"\x05answer"
    proxy = connection(record, "proxy_connection")
    assert (proxy["protocol"], proxy["local_port"]) == ("udp", peer[1])
    assert (proxy["remote_ip"], proxy["remote_port"]) == (lab.attacker.ip4, 1434)


def test_own_addresses_are_the_hosts_and_not_its_peers(lab: Lab) -> None:
    with inside(lab.sensor):
        verdicts = [is_own_address(a) for a in (lab.sensor.ip4, lab.sensor.ip6, "127.0.0.1",
                                                 lab.attacker.ip4, lab.attacker.ip6)]
    assert verdicts == [True, True, True, False, False]


# --- proxy ------------------------------------------------------------------------------------


def proxy_config(protocol: str, port: int, host: str, target_port: int) -> str:
    return f"""portconf = {{ proxy = {{ p1 = {{
        protocol = "{protocol}" port = "{port}"
        target_host = "{host}" target_port = "{target_port}" target_protocol = "{protocol}"
    }} }} }}"""


def test_tcp_connection_is_proxied_and_recorded_both_ways(lab: Lab, sensor: Honeytrap) -> None:
    backend = tcp_listener(lab.sensor, lab.sensor.ip4, 7000)
    sensor.extra_config = proxy_config("tcp", 2525, lab.sensor.ip4, 7000)
    sensor.start()

    def serve() -> tuple[str, int]:
        conn, peer = backend.accept()
        conn.settimeout(TIMEOUT)
        conn.sendall(b"220 backend ESMTP\r\n")  # the backend speaks first
        assert recv_exactly(conn, 14) == b"EHLO attacker\n"
        conn.sendall(b"250 ok\r\n")
        assert conn.recv(100) == b""  # the attacker's half-close reached the backend
        conn.close()
        return peer[:2]

    join = in_thread(serve)
    client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 2525)
    assert recv_exactly(client, 19) == b"220 backend ESMTP\r\n"
    client.sendall(b"EHLO attacker\n")
    assert recv_exactly(client, 8) == b"250 ok\r\n"
    client.shutdown(socket.SHUT_WR)
    assert client.recv(100) == b""
    client.close()
    outbound = join()
    backend.close()

    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == PROXY
    assert payload(record, "attack_connection") == b"EHLO attacker\n"
    assert payload(record, "proxy_connection") == b"220 backend ESMTP\r\n250 ok\r\n"
    proxy = connection(record, "proxy_connection")
    assert (proxy["local_ip"], proxy["local_port"]) == outbound
    assert (proxy["remote_ip"], proxy["remote_port"]) == (lab.sensor.ip4, 7000)


def test_udp_exchange_is_proxied_and_recorded_both_ways(lab: Lab, sensor: Honeytrap) -> None:
    # Closed on any failure too: a socket left to the collector fails a later test (its
    # ResourceWarning is raised wherever it is collected).
    with udp_socket(lab.sensor, lab.sensor.ip4, 7001) as backend:
        sensor.extra_config = proxy_config("udp", 5353, lab.sensor.ip4, 7001)
        sensor.start()
        with udp_socket(lab.attacker, lab.attacker.ip4, 0) as client:
            # A burst: datagrams read while the leg to the backend is being made wait for it,
            # and those read once it exists must not overtake them (they did, once in a run).
            queries = [b"query-%d" % n for n in range(1, UDP_BURST + 1)]
            for query in queries:
                client.sendto(query, (lab.sensor.ip4, 5353))
            received = [backend.recvfrom(65535) for _ in queries]
            assert [data for data, _ in received] == queries
            outbound = received[0][1]
            assert {source for _, source in received} == {outbound}  # one socket per exchange
            backend.sendto(b"answer-1", outbound)
            assert client.recvfrom(65535)[0] == b"answer-1"
    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == PROXY
    assert payload(record, "attack_connection") == b"".join(queries)
    assert payload(record, "proxy_connection") == b"answer-1"
    proxy = connection(record, "proxy_connection")
    assert (proxy["protocol"], proxy["local_ip"], proxy["local_port"]) == ("udp", *outbound[:2])
    assert (proxy["remote_ip"], proxy["remote_port"]) == (lab.sensor.ip4, 7001)


def test_proxy_to_an_absent_backend_falls_back_to_normal_mode(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.extra_config = proxy_config("tcp", 25, lab.sensor.ip4, 7002)  # nobody listens there
    sensor.start()
    client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 25)
    assert recv_exactly(client, 4) == b"220 "  # the SMTP dialogue's greeting (25_tcp.dialogue)
    client.close()
    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == NORMAL
    assert any("proxy connection to" in note for note in record["notes"])


def test_mirror_loop_guard_serves_a_peer_over_the_rate_in_normal_mode(
    lab: Lab, sensor: Honeytrap
) -> None:
    sensor.extra_config = 'portconf = { mirror = { protocol = "tcp" port = "21" } }'
    sensor.start()
    listener = tcp_listener(lab.attacker, lab.attacker.ip4, 21)
    for _ in range(MIRRORS_PER_PEER):
        client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 21)
        back, _ = listener.accept()
        back.close()
        assert client.recv(100) == b""  # mirrored: the mirror's close ends the relay
        client.close()
    client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 21)
    template = (REPO / "templates" / "21_tcp").read_bytes()
    assert recv_exactly(client, len(template)) == template
    client.close()
    listener.close()
    records = sensor.wait_records(MIRRORS_PER_PEER + 1)
    modes = sorted(r["operation_mode"] for r in records)
    assert modes == [NORMAL] + [MIRROR] * MIRRORS_PER_PEER
    [normal] = [r for r in records if r["operation_mode"] == NORMAL]
    assert any("mirror refused" in n and "loop guard" in n for n in normal["notes"])


READ_PROBE = '''
"""Test plugin: every PERREAD event as a line of hex, to a file opened before the fork."""


class ReadProbe:
    def __init__(self, path):
        self.out = open(path, "a", buffering=1)

    def perread(self, event):
        self.out.write(f"{event.direction} {event.protocol} {event.local_addr} "
                       f"{event.local_port} {event.remote_addr} {event.remote_port} "
                       f"{event.data.hex()}\\n")


def load(ctx):
    return ReadProbe(ctx.option("file"))
'''


def test_perread_hooks_see_every_read_in_both_directions(
    lab: Lab, sensor: Honeytrap, tmp_path: Path
) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "ReadProbe.py").write_text(READ_PROBE)
    (plugin_dir / "logJSON.py").symlink_to(REPO / "plugins" / "logJSON.py")
    reads = tmp_path / "reads.txt"
    sensor.plugins = f"""
plugin_dir = "{plugin_dir}"
plugin-logJSON = {{ logfile = "{sensor.attackers_json}" }}
plugin-ReadProbe = {{ file = "{reads}" }}
"""
    sensor.args += ["-m"]
    sensor.start()
    listener = tcp_listener(lab.attacker, lab.attacker.ip4, 2323)
    client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 2323)
    client_port = client.getsockname()[1]
    back, mirror_peer = listener.accept()
    sent, answer = b"login\x00", b"\xffpassword:"
    client.sendall(sent)
    assert recv_exactly(back, len(sent)) == sent
    back.sendall(answer)
    assert recv_exactly(client, len(answer)) == answer
    back.close()
    client.close()
    listener.close()
    sensor.wait_records(1)
    lines = reads.read_text().splitlines()
    assert lines == [
        f"in tcp {lab.sensor.ip4} 2323 {lab.attacker.ip4} {client_port} {sent.hex()}",
        f"out tcp {mirror_peer[0]} {mirror_peer[1]} {lab.attacker.ip4} 2323 {answer.hex()}",
    ]


@pytest.mark.slow
def test_a_side_that_does_not_read_stops_the_relay_reading_the_other(
    lab: Lab, sensor: Honeytrap
) -> None:
    """Flow control: what the relay buffers for a slow attacker is bounded; the mirror's sends
    block instead of being read into memory up to read_limit."""
    total = 16 * 1024 * 1024
    sensor.extra_config = f'read_limit = "{2 * total}"'
    sensor.args += ["-m"]
    sensor.start()
    listener = tcp_listener(lab.attacker, lab.attacker.ip4, 2424)
    with inside(lab.attacker):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
    client.settimeout(TIMEOUT)
    client.connect((lab.sensor.ip4, 2424))
    back, _ = listener.accept()
    back.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    back.settimeout(2.0)
    chunk = bytes(range(256)) * 256
    sent = 0
    with pytest.raises(TimeoutError):
        while sent < total:
            sent += back.send(chunk)
    assert sent < total // 2  # kernel buffers plus the relay's bounded queue, far below
    back.close()
    client.close()
    listener.close()
    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == MIRROR
    assert len(payload(record, "proxy_connection")) <= sent


@pytest.mark.slow
def test_tcp_connection_is_proxied_to_a_udp_target(lab: Lab, sensor: Honeytrap) -> None:
    """target_protocol may differ from protocol: each read becomes a datagram, each reply
    datagram goes into the stream."""
    backend = udp_socket(lab.sensor, lab.sensor.ip4, 7003)
    sensor.extra_config = proxy_config("tcp", 2626, lab.sensor.ip4, 7003).replace(
        'target_protocol = "tcp"', 'target_protocol = "udp"'
    )
    sensor.args += ["-r", "0.3"]  # a datagram socket cannot pass the half-close: idle ends it
    sensor.start()
    client = tcp_client(lab.attacker, lab.attacker.ip4, lab.sensor.ip4, 2626)
    client.sendall(b"stream-to-datagram")
    data, outbound = backend.recvfrom(65535)
    assert data == b"stream-to-datagram"
    backend.sendto(b"datagram-to-stream", outbound)
    assert recv_exactly(client, 18) == b"datagram-to-stream"
    client.close()
    backend.close()
    [record] = sensor.wait_records(1)
    assert record["operation_mode"] == PROXY
    assert connection(record, "attack_connection")["protocol"] == "tcp"
    proxy = connection(record, "proxy_connection")
    assert (proxy["protocol"], proxy["local_port"]) == ("udp", outbound[1])
    assert payload(record, "proxy_connection") == b"datagram-to-stream"
