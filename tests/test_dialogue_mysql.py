"""MysqlDialogue: a HandshakeV10 greeting with a fresh scramble, the client's response parsed,
Access denied; the mariadb client over loopback; fuzzing."""

from __future__ import annotations

import random
import struct
import subprocess

from dialogue_adapter import serve
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.dialogue import mysql, sensor
from honeytrap.dialogue.base import Context
from honeytrap.dialogue.binary import Cursor


def make(hostname: str = "db01", seed: int | None = None) -> mysql.MysqlDialogue:
    rng = random.Random(seed) if seed is not None else random.SystemRandom()  # noqa: S311
    return mysql.MysqlDialogue(Context("tcp", 3306, 1 << 20, rng=rng, hostname=hostname))


def parse_greeting(data: bytes) -> dict[str, object]:
    c = Cursor(data)
    length, seq = c.le(3), c.le(1)
    assert length == len(data) - 4 and seq == 0
    assert c.le(1) == 10
    version = c.cstring(100).decode()
    conn_id = c.le(4)
    salt = c.take(8)
    assert c.take(1) == b"\0"
    low, collation, status, high, auth_len = struct.unpack("<HBHHB", c.take(8))
    assert c.take(10) == b"\0" * 10
    salt += c.take(auth_len - 9)
    assert c.take(1) == b"\0"
    plugin = c.cstring(100).decode()
    assert c.left() == 0
    return {"version": version, "id": conn_id, "salt": salt, "caps": low | high << 16,
            "plugin": plugin, "collation": collation}


def test_greeting_is_a_valid_handshake_v10() -> None:
    g = parse_greeting(make().start())
    salt = g["salt"]
    assert isinstance(salt, bytes) and len(salt) == 20
    assert b"\0" not in salt and b"$" not in salt
    assert not int(g["caps"]) & mysql.CLIENT_SSL  # type: ignore[call-overload]
    assert int(g["caps"]) & mysql.CLIENT_PLUGIN_AUTH  # type: ignore[call-overload]


def test_salt_fresh_version_per_sensor() -> None:
    a, b = parse_greeting(make("x").start()), parse_greeting(make("x").start())
    assert a["salt"] != b["salt"] and a["version"] == b["version"]
    assert len({parse_greeting(make(f"h{i}").start())["version"] for i in range(40)}) > 1


def test_shipped_servers_parse() -> None:
    for line in sensor.choices(mysql.SERVERS):
        mysql.Server.parse(line)


def response41(user: bytes, auth: bytes, db: bytes | None = None) -> bytes:
    caps = (mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH
            | mysql.CLIENT_CONNECT_ATTRS | (mysql.CLIENT_CONNECT_WITH_DB if db else 0))
    attrs = b"\x0c_client_name\x08libmysql"
    payload = (struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23 + user + b"\0"
               + bytes([len(auth)]) + auth + (db + b"\0" if db else b"")
               + b"mysql_native_password\0" + bytes([len(attrs)]) + attrs)
    return mysql.frame(payload, 1)


def test_response_parsed_and_denied() -> None:
    d = make()
    d.start()
    data = response41(b"root", b"\x11" * 20, b"wordpress")
    assert d.receive(data[:10]).send == b""
    reply = d.receive(data[10:])
    assert reply.close
    c = Cursor(reply.send)
    assert c.le(3) == len(reply.send) - 4 and c.le(1) == 2
    assert c.take(1) == b"\xff" and c.le(2) == 1045 and c.take(6) == b"#28000"
    assert c.rest() == b"Access denied for user 'root'@'localhost' (using password: YES)"
    rec = d.record()["mysql"]
    assert (rec["user"], rec["database"], rec["auth_plugin"]) == (
        "root", "wordpress", "mysql_native_password")
    assert rec["auth_response"] == b"\x11" * 20
    assert rec["attributes"] == [["_client_name", "libmysql"]]


def test_oversized_packet_refused() -> None:
    d = make()
    assert d.receive(b"\xff\xff\xff\x01").close
    assert d.record()["mysql"]["error"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz(data: bytes, framed: bool) -> None:
    d = make(seed=1)
    d.start()
    d.receive(mysql.frame(data, 1) if framed else data)
    d.idle()
    d.record()


def test_mariadb_client_sends_credentials() -> None:
    """The mysql client (MariaDB's) logs in: its user and database are recorded, and it prints
    the server's Access denied."""
    ctx = Context("tcp", 3306, 1 << 20, hostname="db-sensor")
    with serve(lambda: mysql.MysqlDialogue(ctx)) as (port, records, ended):
        out = subprocess.run(
            ["mysql", "--no-defaults", "-h", "127.0.0.1", "-P", str(port), "-u", "admin",
             "-phunter2", "--connect-timeout=10", "shop", "-e", "select 1"],
            capture_output=True, text=True, timeout=30)
        assert ended.wait(10)
    assert out.returncode == 1
    assert "ERROR 1045 (28000): Access denied for user 'admin'@'localhost'" in out.stderr
    rec = records[0]["mysql"]
    assert (rec["user"], rec["database"]) == ("admin", "shop")
    assert len(rec["auth_response"]) in (20, 32)  # native SHA1 or caching_sha2 SHA256 scramble
    assert rec["error"] == ""
