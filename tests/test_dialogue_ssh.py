"""SshDialogue: the identification string, a valid server KEXINIT after the client's, the
client's KEXINIT and HASSH recorded; OpenSSH's own client reaching its key exchange; fuzzing."""

from __future__ import annotations

import hashlib
import queue
import random
import struct
import subprocess
import threading
from typing import Any

import pytest
from dialogue_adapter import serve
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.dialogue import sensor, ssh
from honeytrap.dialogue.base import Context, Reply


def make(hostname: str = "db01", seed: int | None = 1) -> ssh.SshDialogue:
    rng = random.Random(seed) if seed is not None else random.SystemRandom()  # noqa: S311
    return ssh.SshDialogue(Context("tcp", 22, 1 << 20, rng=rng, hostname=hostname))


def client_kexinit(kex: str = "curve25519-sha256,ext-info-c", cipher: str = "aes128-ctr",
                   mac: str = "hmac-sha2-256", comp: str = "none") -> bytes:
    lists = (kex, "ssh-ed25519", cipher, cipher, mac, mac, comp, comp, "", "")
    payload = bytes([20]) + b"\x01" * 16 + b"".join(ssh.name_list(v) for v in lists) + b"\0" * 5
    return ssh.packet(payload, random.Random(0))  # noqa: S311


def split_packet(data: bytes) -> tuple[bytes, bytes]:
    """(payload, rest) of the first binary packet in `data`, checking RFC 4253 6's framing."""
    length, padding = struct.unpack_from("!IB", data)
    assert (4 + length) % ssh.BLOCK == 0 and padding >= 4
    return data[5 : 4 + length - padding], data[4 + length :]


def test_version_then_kexinit() -> None:
    d = make()
    banner = d.start()
    assert banner.startswith(b"SSH-2.0-OpenSSH_") and banner.endswith(b"\r\n")
    assert d.receive(b"SSH-2.0-Go\r").send == b""  # the line is not complete yet
    reply = d.receive(b"\n")
    payload, rest = split_packet(reply.send)
    assert rest == b"" and not reply.close
    fields = ssh.parse_kexinit(payload)
    server = ssh.server_for("db01")
    assert fields["kex_algorithms"] == server.kex
    assert fields["encryption_algorithms_server_to_client"] == server.ciphers
    assert fields["first_kex_packet_follows"] is False
    assert d.receive(client_kexinit()).send == b""
    rec = d.record()["ssh"]
    assert rec["client_version"] == "SSH-2.0-Go"
    algorithms = "curve25519-sha256,ext-info-c;aes128-ctr;hmac-sha2-256;none"
    assert rec["hassh_algorithms"] == algorithms
    assert rec["hassh"] == hashlib.md5(algorithms.encode()).hexdigest()


def test_version_and_kexinit_in_one_chunk_then_kex_message() -> None:
    d = make()
    d.start()
    reply = d.receive(b"SSH-2.0-libssh_0.9.6\r\n" + client_kexinit() + ssh.packet(
        b"\x1e" + b"\x00" * 36, random.Random(2)))  # noqa: S311
    assert split_packet(reply.send)[1] == b""
    rec = d.record()["ssh"]
    assert rec["messages"] == [30] and rec["kex_algorithms"].startswith("curve25519")


def test_cookie_fresh_per_connection() -> None:
    a, b = make(seed=None), make(seed=None)
    ka = split_packet(a.receive(b"SSH-2.0-x\r\n").send)[0]
    kb = split_packet(b.receive(b"SSH-2.0-x\r\n").send)[0]
    assert ka[1:17] != kb[1:17] and ka[17:] == kb[17:]


def test_sensors_pick_their_server() -> None:
    """One host name: always the same server; many host names: more than one."""
    assert make("a").start() == make("a").start()
    assert len({make(f"host{i}").start() for i in range(40)}) > 1


def test_shipped_servers_parse() -> None:
    for line in sensor.choices(ssh.SERVERS):
        server = ssh.Server.parse(line)
        assert "kex-strict-s-v00@openssh.com" in server.kex.split(",")
        assert "none" in server.compression.split(",")


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00\x01\x00"
                                  + b"x" * 300])
def test_not_ssh(data: bytes) -> None:
    d = make()
    reply = d.receive(data)
    assert reply.close and reply.send == ssh.BAD_ID
    assert d.record()["ssh"]["error"]


def test_bad_packet_length_closes() -> None:
    d = make()
    d.receive(b"SSH-2.0-x\n")
    assert d.receive(b"SSH-2.0-x\r\n").close  # the banner again, read as a packet
    assert "bad packet length" in d.record()["ssh"]["error"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6), st.booleans())
def test_fuzz(chunks: list[bytes], with_version: bool) -> None:
    """Any chunks, after a version line or not: replies or a close, never an exception."""
    d = make()
    d.start()
    if with_version:
        d.receive(b"SSH-2.0-fuzz\r\n")
    for chunk in chunks:
        if d.receive(chunk).close:
            break
        d.idle()
    d.record()


@given(st.binary(max_size=300))
def test_fuzz_kexinit_parser(payload: bytes) -> None:
    for data in (payload, b"\x14" + payload):
        try:
            ssh.parse_kexinit(data)
        except ssh.KexinitError:
            pass


def _lines(stream: Any, out: queue.Queue[str]) -> None:
    for raw in iter(stream.readline, b""):
        out.put(raw.decode(errors="replace"))


def test_openssh_client_reaches_key_exchange() -> None:
    """ssh -vvv receives our KEXINIT and waits for the KEX reply; its version, KEXINIT and
    HASSH are recorded, its proposal equal to what `ssh -G` says it offers."""
    conf = subprocess.run(["ssh", "-G", "-p", "22", "x@127.0.0.1"], capture_output=True,
                          text=True, check=True).stdout
    offered = dict(line.split(" ", 1) for line in conf.splitlines() if " " in line)
    ctx = Context("tcp", 22, 1 << 20, hostname="sensor-ssh")
    kex_message = threading.Event()

    class Watched(ssh.SshDialogue):
        """Signals the test once a message after the client's KEXINIT has arrived."""

        def receive(self, data: bytes) -> Reply:
            reply = super().receive(data)
            if self.record()["ssh"]["messages"]:
                kex_message.set()
            return reply

    with serve(lambda: Watched(ctx)) as (port, records, ended):
        proc = subprocess.Popen(
            ["ssh", "-vvv", "-F", "/dev/null", "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-p", str(port), "root@127.0.0.1", "true"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
        seen = []
        try:
            while not any("expecting SSH2_MSG_KEX" in s for s in seen):
                seen.append(lines.get(timeout=20))
            assert kex_message.wait(20)
        finally:
            proc.kill()
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
        assert ended.wait(10)
    text = "".join(seen)
    assert "SSH2_MSG_KEXINIT received" in text
    server = ssh.server_for("sensor-ssh")
    assert f"remote software version {server.version.split('-', 2)[2]}" in text
    rec = records[0]["ssh"]
    assert rec["client_version"].startswith("SSH-2.0-OpenSSH_")
    assert rec["encryption_algorithms_client_to_server"] == offered["ciphers"]
    assert rec["mac_algorithms_client_to_server"] == offered["macs"]
    assert rec["kex_algorithms"].startswith(offered["kexalgorithms"])
    assert rec["hassh"] == hashlib.md5(rec["hassh_algorithms"].encode()).hexdigest()
    assert rec["hassh_algorithms"].split(";")[1] == offered["ciphers"]
    assert rec["messages"] == [30]  # SSH2_MSG_KEX_ECDH_INIT: it went on to key exchange
