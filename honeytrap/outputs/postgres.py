"""PostgreSQL output: our schema, its migrations, and the sink the batching writer drives.

Schema (ours, not the original's `attacks.honeytrap_add_attack_string` functions, which lived in
a database nobody ships any more): sensors; attacks keyed by the attack id; their connections
(attack side and mirror/proxy side); payloads and downloaded samples each stored once, keyed by
SHA-512; downloads and download tries. Every insert is `ON CONFLICT DO NOTHING` on a natural key,
so a batch replayed from the spool after an uncertain commit never writes anything twice.

Migrations are ordered SQL, applied at connect under an advisory lock (many dynamic servers
connect at once) and recorded in `schema_version`. Add a migration by appending to MIGRATIONS;
never edit one that shipped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from honeytrap.attack import Attack
from honeytrap.outputs.writer import Record, SinkDown

# (version, SQL). Applied in order, each in its own transaction.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE sensors (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payloads (
    sha512      char(128) PRIMARY KEY,
    md5         char(32) NOT NULL,
    length      bigint NOT NULL,
    data        bytea NOT NULL
);
CREATE TABLE samples (
    sha512      char(128) PRIMARY KEY,
    sha256      char(64) NOT NULL,
    md5         char(32) NOT NULL,
    length      bigint NOT NULL,
    data        bytea NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE attacks (
    id              text PRIMARY KEY,
    sensor_id       integer NOT NULL REFERENCES sensors (id),
    parent_id       text,
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    is_virtual      boolean NOT NULL,
    operation_mode  smallint NOT NULL,
    mode_name       text NOT NULL,
    download_count  integer NOT NULL,
    download_tries  integer NOT NULL,
    notes           jsonb NOT NULL,
    analysis        jsonb NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attacks_start_time ON attacks (start_time);
CREATE TABLE connections (
    attack_id       text NOT NULL REFERENCES attacks (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('attack', 'proxy')),
    protocol        text NOT NULL,
    local_ip        inet,
    local_port      integer NOT NULL,
    remote_ip       inet,
    remote_port     integer NOT NULL,
    payload_sha512  char(128) NOT NULL REFERENCES payloads (sha512),
    PRIMARY KEY (attack_id, role)
);
CREATE INDEX connections_remote_ip ON connections (remote_ip);
CREATE TABLE downloads (
    attack_id       text NOT NULL REFERENCES attacks (id) ON DELETE CASCADE,
    seq             integer NOT NULL,
    type            text NOT NULL,
    protocol        text NOT NULL,
    remote_ip       inet,
    remote_port     integer NOT NULL,
    local_ip        inet,
    local_port      integer NOT NULL,
    username        text NOT NULL,
    password        text NOT NULL,
    uri             text NOT NULL,
    filename        text NOT NULL,
    sample_sha512   char(128) NOT NULL REFERENCES samples (sha512),
    PRIMARY KEY (attack_id, seq)
);
CREATE TABLE download_tries (
    attack_id   text NOT NULL REFERENCES attacks (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    type        text NOT NULL,
    uri         text NOT NULL,
    host        text NOT NULL,
    port        integer NOT NULL,
    outcome     text NOT NULL,
    reason      text NOT NULL,
    PRIMARY KEY (attack_id, seq)
);
"""),
    # What a fleet's queries filter on: one sensor's attacks over time, a sample by the hash a
    # report names (MD5, SHA-256), the downloads (and so the attacks) of one sample.
    (2, """
CREATE INDEX attacks_sensor_start_time ON attacks (sensor_id, start_time);
CREATE INDEX samples_md5 ON samples (md5);
CREATE INDEX samples_sha256 ON samples (sha256);
CREATE INDEX downloads_sample ON downloads (sample_sha512);
"""),
)

# Any constant identifies our migration lock among the database's advisory locks.
_MIGRATION_LOCK = 0x68_6F_6E_65_79  # "honey"
# libpq's connect_timeout and a statement timeout: a store that hangs is treated as away.
CONNECT_TIMEOUT = 10
STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_PORT = "5432"  # the original's default for db_port

_SQL = {
    "payloads": "INSERT INTO payloads (sha512, md5, length, data) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
    "samples": "INSERT INTO samples (sha512, sha256, md5, length, data) "
               "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "attacks": "INSERT INTO attacks (id, sensor_id, parent_id, start_time, end_time, "
               "is_virtual, operation_mode, mode_name, download_count, download_tries, notes, "
               "analysis) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
               # A follow-up (downloads ended after the attack was stored) carries more tries:
               # it updates the counts; an older copy replayed from a spool changes nothing.
               "ON CONFLICT (id) DO UPDATE SET download_count = EXCLUDED.download_count, "
               "download_tries = EXCLUDED.download_tries, notes = EXCLUDED.notes, "
               "analysis = EXCLUDED.analysis "
               "WHERE attacks.download_tries < EXCLUDED.download_tries",
    "connections": "INSERT INTO connections (attack_id, role, protocol, local_ip, local_port, "
                   "remote_ip, remote_port, payload_sha512) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    "downloads": "INSERT INTO downloads (attack_id, seq, type, protocol, remote_ip, "
                 "remote_port, local_ip, local_port, username, password, uri, filename, "
                 "sample_sha512) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                 "ON CONFLICT DO NOTHING",
    "download_tries": "INSERT INTO download_tries (attack_id, seq, type, uri, host, port, "
                      "outcome, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                      "ON CONFLICT DO NOTHING",
}
_TABLE_ORDER = ("payloads", "samples", "attacks", "connections", "downloads", "download_tries")

# Errors that say "the data of this record is bad" rather than "the store is away".
_RECORD_ERRORS = (
    psycopg.DataError, psycopg.IntegrityError, ValueError, TypeError, KeyError, UnicodeError,
)


def attack_record(attack: Attack) -> Record:
    """The spool/queue form of an attack: attack.to_json() (the samples inline: the store
    keeps them) plus the parent's id."""
    doc = attack.to_json(inline_samples=True)
    if attack.parent is not None:
        doc["parent_id"] = attack.parent.id
    return Record(attack.id, attack.start_time, json.dumps(doc).encode())


def followup_record(attack: Attack) -> Record:
    """attack_record for a follow-up: the whole attack again (its downloads and tries now
    included), keyed apart from the first record and spooled at the time of the follow-up."""
    record = attack_record(attack)
    return Record(f"{attack.id}-followup", time.time(), record.data)


@dataclass(frozen=True)
class ConnInfo:
    host: str
    port: str
    dbname: str
    user: str
    password: str


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to the newest version; returns it."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(row[0]) if row else 0
        for version, sql in MIGRATIONS:
            if version > current:
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                current = version
    return current


class PostgresSink:
    name = "submitPostgres"

    def __init__(self, info: ConnInfo, sensor: str, log: logging.Logger) -> None:
        self.info = info
        self.sensor = sensor
        self.log = log
        self._conn: psycopg.Connection[Any] | None = None
        self._sensor_id = 0

    def connect(self) -> None:
        try:
            conn = psycopg.connect(
                host=self.info.host, port=self.info.port, dbname=self.info.dbname,
                user=self.info.user, password=self.info.password,
                connect_timeout=CONNECT_TIMEOUT, application_name="honeytrap",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            )
        except psycopg.Error as exc:
            raise SinkDown(str(exc).strip()) from exc
        try:
            version = migrate(conn)
            with conn.transaction():
                row = conn.execute(
                    "INSERT INTO sensors (name) VALUES (%s) ON CONFLICT (name) "
                    "DO UPDATE SET last_seen = now() RETURNING id", (self.sensor,),
                ).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise SinkDown(f"schema setup failed: {exc}") from exc
        assert row is not None
        self._sensor_id = int(row[0])
        self._conn = conn
        self.log.info("connected to PostgreSQL %s/%s (schema version %d, sensor %s)",
                      self.info.host, self.info.dbname, version, self.sensor)

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def idle(self) -> None:
        return None

    def send(self, records: Sequence[Record]) -> list[tuple[Record, str]]:
        """One transaction for the batch; if the data of some record is bad, find it by
        writing the records one by one and refuse only that one."""
        try:
            self._write(records)
            return []
        except _RECORD_ERRORS as exc:
            if len(records) == 1:
                return [(records[0], _reason(exc))]
        refused: list[tuple[Record, str]] = []
        for record in records:
            try:
                self._write([record])
            except _RECORD_ERRORS as exc:
                refused.append((record, _reason(exc)))
        return refused

    def _write(self, records: Sequence[Record]) -> None:
        conn = self._conn
        if conn is None:
            raise SinkDown("not connected")
        rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _TABLE_ORDER}
        for record in records:
            add_rows(rows, json.loads(record.data), self._sensor_id)
        try:
            with conn.transaction(), conn.cursor() as cur:
                for table in _TABLE_ORDER:
                    if rows[table]:
                        cur.executemany(_SQL[table], rows[table])
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise SinkDown(str(exc).strip() or type(exc).__name__) from exc
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                raise SinkDown(str(exc).strip()) from exc
            raise


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:200]}"


def _text(value: Any) -> str:
    """PostgreSQL text cannot hold NUL; attacker-influenced strings may."""
    return str(value).replace("\x00", "\ufffd")


def _inet(value: Any) -> str | None:
    return _text(value) or None


def _jsonb(value: Any) -> str:
    return json.dumps(value).replace("\\u0000", "\\ufffd")


def add_rows(rows: dict[str, list[tuple[Any, ...]]], doc: dict[str, Any], sensor: int) -> None:
    """The rows of one attack document (attack.to_json() shape) for each table."""
    attack_id = _text(doc["id"])
    rows["attacks"].append((
        attack_id, sensor, doc.get("parent_id"), doc["start_time"], doc["end_time"],
        bool(doc["is_virtual"]), int(doc["operation_mode"]),
        _text(doc.get("operation_mode_name", "")), int(doc["download_count"]),
        int(doc["download_tries"]), _jsonb(doc.get("notes", [])), _jsonb(doc.get("analysis", {})),
    ))
    for role in ("attack", "proxy"):
        conn = doc.get(f"{role}_connection")
        if not conn or (role == "proxy" and not conn["remote_port"] and not conn["local_port"]):
            continue  # the zero-filled proxy_connection of T-Pot's shape: no connection
        payload = conn["payload"]
        rows["payloads"].append((payload["sha512_hash"], payload["md5_hash"],
                                 int(payload["length"]), bytes.fromhex(payload["data_hex"])))
        rows["connections"].append((
            attack_id, role, _text(conn["protocol"]), _inet(conn["local_ip"]),
            int(conn["local_port"]), _inet(conn["remote_ip"]), int(conn["remote_port"]),
            payload["sha512_hash"],
        ))
    for seq, download in enumerate(doc.get("downloads", [])):
        payload = download["payload"]
        rows["samples"].append((payload["sha512_hash"], payload["sha256_hash"],
                                payload["md5_hash"], int(payload["length"]),
                                bytes.fromhex(payload["data_hex"])))
        rows["downloads"].append((
            attack_id, seq, _text(download["type"]), _text(download["protocol"]),
            _inet(download["remote_ip"]), int(download["remote_port"]),
            _inet(download["local_ip"]), int(download["local_port"]),
            _text(download["username"]), _text(download["password"]), _text(download["uri"]),
            _text(download["filename"]), payload["sha512_hash"],
        ))
    for seq, attempt in enumerate(doc.get("download_attempts", [])):
        rows["download_tries"].append((
            attack_id, seq, _text(attempt["type"]), _text(attempt["uri"]),
            _text(attempt["host"]), int(attempt["port"]), _text(attempt["outcome"]),
            _text(attempt["reason"]),
        ))
