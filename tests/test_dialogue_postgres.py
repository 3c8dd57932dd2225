"""PostgresDialogue: SSLRequest declined, StartupMessage recorded, password asked in clear or
as MD5 with a fresh salt, FATAL 28P01; psql over loopback; fuzzing."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess

import pytest
from dialogue_adapter import serve
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.dialogue import postgres, sensor
from honeytrap.dialogue.base import Context


def host_with(auth: str) -> str:
    """A sensor host name whose PostgreSQL asks for `auth`."""
    for i in range(200):
        if postgres.Server.parse(sensor.pick(postgres.SERVERS, f"pg{i}")).auth == auth:
            return f"pg{i}"
    raise AssertionError(f"no sensor with {auth}")


def make(auth: str = "password", seed: int | None = None) -> postgres.PostgresDialogue:
    rng = random.Random(seed) if seed is not None else random.SystemRandom()  # noqa: S311
    return postgres.PostgresDialogue(
        Context("tcp", 5432, 1 << 20, rng=rng, hostname=host_with(auth)))


def startup(**params: str) -> bytes:
    body = struct.pack("!I", 196608) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", 4 + len(body)) + body


SSL_REQUEST = struct.pack("!II", 8, postgres.SSL_REQUEST)


def test_ssl_declined_startup_password_error() -> None:
    d = make("password")
    assert d.start() == b""
    assert d.receive(SSL_REQUEST).send == b"N"
    reply = d.receive(startup(user="postgres", database="prod"))
    assert reply.send == b"R\0\0\0\x08\0\0\0\x03" and not reply.close
    reply = d.receive(postgres.message(b"p", b"s3cret\0"))
    assert reply.close and reply.send.startswith(b"E")
    (length,) = struct.unpack("!I", reply.send[1:5])
    assert length == len(reply.send) - 1
    assert b"C28P01\0" in reply.send
    assert b'Mpassword authentication failed for user "postgres"\0' in reply.send
    rec = d.record()["postgres"]
    assert (rec["user"], rec["database"], rec["password"]) == ("postgres", "prod", "s3cret")
    assert rec["ssl_requested"] and rec["parameters"] == [["user", "postgres"],
                                                          ["database", "prod"]]


def test_md5_salt_fresh() -> None:
    a, b = make("md5"), make("md5")
    ra, rb = a.receive(startup(user="u")).send, b.receive(startup(user="u")).send
    assert ra[:9] == rb[:9] == b"R\0\0\0\x0c\0\0\0\x05" and ra[9:] != rb[9:]


def test_byte_at_a_time() -> None:
    d = make("password")
    data = SSL_REQUEST + startup(user="bob")
    out = b"".join(d.receive(data[i : i + 1]).send for i in range(len(data)))
    assert out == b"NR\0\0\0\x08\0\0\0\x03"


@pytest.mark.parametrize("data", [
    struct.pack("!II", 16, postgres.CANCEL_REQUEST) + b"\0" * 8,
    struct.pack("!II", 8, 0x00020000),  # protocol 2.0
    struct.pack("!I", 1 << 30),  # endless
    b"GET / HTTP/1.1\r\n\r\n",
])
def test_refused(data: bytes) -> None:
    d = make()
    assert d.receive(data).close
    assert d.record()["postgres"]["error"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz(data: bytes, after_startup: bool) -> None:
    d = make(seed=3)
    if after_startup:
        d.receive(startup(user="x"))
    d.receive(data)
    d.idle()
    d.record()


@pytest.mark.parametrize("auth", ["password", "md5"])
def test_psql_sends_its_password(auth: str) -> None:
    """psql (libpq, sslmode=prefer): SSLRequest, StartupMessage, the password in clear or as
    libpq's MD5 of it with the salt; psql prints the server's FATAL."""
    ctx = Context("tcp", 5432, 1 << 20, hostname=host_with(auth))
    dialogues: list[postgres.PostgresDialogue] = []

    def factory() -> postgres.PostgresDialogue:
        dialogues.append(postgres.PostgresDialogue(ctx))
        return dialogues[-1]

    env = dict(os.environ, PGPASSWORD="hunter2", PGCONNECT_TIMEOUT="10", PGSSLMODE="prefer",
               PGGSSENCMODE="disable")
    with serve(factory) as (port, records, ended):
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "alice",
                              "-d", "sales", "-c", "select 1"],
                             capture_output=True, text=True, timeout=30, env=env)
        assert ended.wait(10)
    assert 'password authentication failed for user "alice"' in out.stderr
    rec = records[-1]["postgres"]
    assert (rec["user"], rec["database"], rec["ssl_requested"]) == ("alice", "sales", True)
    if auth == "password":
        assert rec["password"] == "hunter2"
    else:  # libpq: "md5" + md5(md5(password + user) + salt)
        inner = hashlib.md5(b"hunter2alice").hexdigest().encode()
        salt = dialogues[-1].salt
        assert rec["password"] == "md5" + hashlib.md5(inner + salt).hexdigest()
