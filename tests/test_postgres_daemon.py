"""End to end: the real daemon's submitPostgres (alias SavePostgres) spools attacks while the
database is away and replays them by itself, with no new attack to wake it, once it is back;
and a spool left by a daemon stopped during an outage is replayed by the next daemon.

The plugin runs in the recorder, which runs as nobody:nogroup in the sensor namespace. It
reaches the throw-away PostgreSQL (tests/pg_fixture.py) over its unix socket, by path (unix
sockets do not belong to a network namespace); the socket directory is admitted to nogroup. The
spool directory is a fresh one in /tmp that the master (root) hands to nobody at plugin load:
under pytest's tmp_path (0700 parents) nobody could not reach it.

Everything the test waits for is polled with a deadline: records in the spool directory (the
daemon's durable output while the database is away) and rows in the database. "Once" is
checked with a trigger that notes every committed insert into `attacks`: its primary key alone
would hide a record delivered twice.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import pg_fixture  # noqa: E402
from daemon import REPO, Honeytrap, nfq_rules  # noqa: E402
from netns import Lab, inside  # noqa: E402
from pg_fixture import PgServer  # noqa: E402

from honeytrap.outputs import postgres  # noqa: E402
from honeytrap.outputs.writer import REPLAY_INTERVAL  # noqa: E402
from honeytrap.spool import REJECTED_DIR  # noqa: E402

pg = pg_fixture.pg
fresh_db = pg_fixture.fresh_db

# Attacks sent during the outage: several, so that their order is observable.
OUTAGE_ATTACKS = 12
# The port attacked: its template sends a banner, which tells the client the server accepted it.
PORT = 21
# The daemon's read timeout (-r, seconds): the banner goes out after one idle read timeout, so
# the default of 1 s would make each attack take a second.
READ_TIMEOUT = "0.2"
# The plugin's reconnect back-off cap (retry_max, seconds): short, so the bound below is tight.
RETRY_MAX = 1.0
# The writer looks at the spool every REPLAY_INTERVAL and retries the database at most every
# RETRY_MAX: a returned database must see the spool replayed within their sum. The slack covers
# a slow VM (connect, migration, one transaction).
REPLAY_BOUND = REPLAY_INTERVAL + RETRY_MAX + 15.0
# Bound on the daemon's handling of the attacks (server, recorder, plugin, spool write).
SPOOL_BOUND = 30.0
# Bound on one client connection.
CLIENT_TIMEOUT = 10.0
# Poll period of the deadline loops.
POLL = 0.05
# The group the recorder runs as (-g), admitted to the database's socket directory.
GROUP = "nogroup"


@pytest.fixture
def spool_dir() -> Iterator[Path]:
    # In /tmp (1777), not under tmp_path: the recorder (nobody) must reach it by path.
    path = Path(tempfile.mkdtemp(prefix="ht-pgspool-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def db(fresh_db: PgServer) -> Iterator[PgServer]:
    """The database, reachable by the recorder (nobody:nogroup) over its unix socket."""
    fresh_db.admit_group(GROUP)
    yield fresh_db


@pytest.fixture
def sensor(lab: Lab, tmp_path: Path, db: PgServer, spool_dir: Path) -> Iterator[Honeytrap]:
    nfq_rules(lab.sensor)
    options = {**db.options(), "spool_dir": str(spool_dir), "retry_max": str(int(RETRY_MAX))}
    body = " ".join(f'{key} = "{value}"' for key, value in options.items())
    ht = Honeytrap(
        lab, tmp_path / "ht", args=["-u", "nobody", "-g", GROUP, "-l", "60", "-r", READ_TIMEOUT],
        plugins=f"""
plugin-logJSON = {{ logfile = "{tmp_path / 'ht' / 'attackers.json'}" }}
plugin-SavePostgres = {{ {body} }}
""",
    )
    yield ht
    if ht.proc is not None and ht.proc.poll() is None:
        ht.stop()


def attack(lab: Lab, payload: bytes) -> None:
    """One TCP attack from the attacker namespace. The banner is read before the payload is
    sent: the server has accepted this connection before the next one is made, so the attacks'
    start times (the spool's replay order) follow the order they are sent in."""
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect((lab.sensor.ip4, PORT))
        assert sock.recv(4096) == (REPO / "templates" / f"{PORT}_tcp").read_bytes()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(4096) == b""


def spooled(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.name.endswith(".rec"))


def wait_spooled(spool: Path, count: int, timeout: float = SPOOL_BOUND) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(names := spooled(spool)) < count and time.monotonic() < deadline:
        time.sleep(POLL)
    return names


def wait_drained(spool: Path, timeout: float = SPOOL_BOUND) -> list[str]:
    """The spool's files once the replay removed them: each is removed after its transaction
    committed, so a row can be visible a moment before its file is gone."""
    deadline = time.monotonic() + timeout
    while (names := spooled(spool)) and time.monotonic() < deadline:
        time.sleep(POLL)
    return names


def prepare_schema(db: PgServer) -> None:
    """Our schema, as the plugin would create it, plus a witness: a trigger that notes every
    row a committed transaction inserted (or tried to: it fires before ON CONFLICT decides)
    into `attacks`, in order. The primary key alone would hide a record delivered twice."""
    with db.connect() as conn:
        conn.autocommit = False
        postgres.migrate(conn)
        with conn.transaction():
            conn.execute(
                "CREATE TABLE insert_attempts (seq bigserial PRIMARY KEY, attack_id text NOT NULL)"
            )
            conn.execute(
                "CREATE FUNCTION note_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO insert_attempts (attack_id) VALUES (NEW.id); RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER note_attempt BEFORE INSERT ON attacks "
                "FOR EACH ROW EXECUTE FUNCTION note_attempt()"
            )


def arrivals(db: PgServer) -> list[bytes]:
    """The payload of every attack row the plugin inserted, in the order it did."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT p.data FROM insert_attempts i "
            "JOIN connections c ON c.attack_id = i.attack_id AND c.role = 'attack' "
            "JOIN payloads p ON p.sha512 = c.payload_sha512 ORDER BY i.seq"
        ).fetchall()
    payloads: list[bytes] = []
    for (data,) in rows:
        assert isinstance(data, bytes)
        payloads.append(data)
    return payloads


def wait_arrivals(db: PgServer, count: int, timeout: float) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while len(arrived := arrivals(db)) < count and time.monotonic() < deadline:
        time.sleep(POLL)
    return arrived


def counts(db: PgServer) -> tuple[int, int]:
    """(attack rows, insert attempts): equal when nothing was delivered twice."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM attacks), (SELECT count(*) FROM insert_attempts)"
        ).fetchone()
    assert row is not None
    attacks, attempts = row
    assert isinstance(attacks, int) and isinstance(attempts, int)
    return attacks, attempts


def outage_payloads() -> list[bytes]:
    return [b"during the outage %02d\r\n" % n for n in range(OUTAGE_ATTACKS)]


def assert_replayed_once(db: PgServer, spool: Path, expected: list[bytes], waited: float) -> None:
    arrived = arrivals(db)
    assert len(arrived) >= len(expected), (
        f"{len(arrived)} of {len(expected)} attacks in the database {waited:.1f} s after "
        f"the replay could start (bound {REPLAY_BOUND:.1f} s)"
    )
    assert arrived == expected  # every one, in order, once
    assert counts(db) == (len(expected), len(expected))  # nothing else, nothing twice
    assert wait_drained(spool) == []  # acknowledged: nothing left to be replayed again
    assert list((spool / REJECTED_DIR).iterdir()) == []


@pytest.mark.slow
def test_spool_is_replayed_when_the_database_returns_with_no_new_attack(
    lab: Lab, sensor: Honeytrap, db: PgServer, spool_dir: Path
) -> None:
    prepare_schema(db)
    sensor.start()
    attack(lab, b"before the outage\r\n")
    # The recorder (nobody) reaches the database: without this the replay would prove nothing.
    assert wait_arrivals(db, 1, SPOOL_BOUND) == [b"before the outage\r\n"]
    db.stop()
    try:
        for payload in outage_payloads():
            attack(lab, payload)
        assert len(wait_spooled(spool_dir, OUTAGE_ATTACKS)) == OUTAGE_ATTACKS
    finally:
        db.start()
    back = time.monotonic()
    expected = [b"before the outage\r\n", *outage_payloads()]
    wait_arrivals(db, len(expected), REPLAY_BOUND)
    waited = time.monotonic() - back
    print(f"replay: {OUTAGE_ATTACKS} spooled attacks in the database {waited:.2f} s after it "
          "came back")
    assert_replayed_once(db, spool_dir, expected, waited)
    assert len(sensor.records()) == len(expected)  # no attack came after the outage


@pytest.mark.slow
def test_spool_left_by_a_stopped_daemon_is_replayed_by_the_next(
    lab: Lab, sensor: Honeytrap, db: PgServer, spool_dir: Path
) -> None:
    prepare_schema(db)
    db.stop()
    try:
        sensor.start()
        for payload in outage_payloads():
            attack(lab, payload)
        assert len(wait_spooled(spool_dir, OUTAGE_ATTACKS)) == OUTAGE_ATTACKS
        assert sensor.stop() == 0
        assert len(spooled(spool_dir)) == OUTAGE_ATTACKS  # the stop lost nothing
    finally:
        db.start()
    started = time.monotonic()
    sensor.start()  # a new instance, the same spool directory; no attack reaches it
    wait_arrivals(db, OUTAGE_ATTACKS, REPLAY_BOUND)
    waited = time.monotonic() - started
    print(f"restart: {OUTAGE_ATTACKS} spooled attacks in the database {waited:.2f} s after "
          "the new daemon was started")
    assert_replayed_once(db, spool_dir, outage_payloads(), waited)
    assert len(sensor.records()) == OUTAGE_ATTACKS
