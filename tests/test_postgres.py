"""submitPostgres against a real PostgreSQL: schema, batching, outage, replay, idempotency."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import pg_fixture  # noqa: E402
from pg_fixture import PgServer  # noqa: E402

from honeytrap.attack import Attack, Connection, Download, DownloadTry, Payload  # noqa: E402
from honeytrap.config import Config, PluginSpec  # noqa: E402
from honeytrap.errors import PluginError  # noqa: E402
from honeytrap.outputs import postgres  # noqa: E402
from honeytrap.plugin import LoadedPlugin, load_plugin, load_plugins  # noqa: E402
from honeytrap.spool import REJECTED_DIR, Spool  # noqa: E402

pg = pg_fixture.pg
fresh_db = pg_fixture.fresh_db

PLUGIN_DIR = str(Path(__file__).resolve().parent.parent / "plugins")
WAIT = 60.0  # bound on every wait for the writer; a healthy run takes well under a second


def make_attack(n: int, sample: bytes | None = None) -> Attack:
    attack = Attack(
        Connection("tcp", "198.18.0.2", 445, "198.18.1.2", 40000 + n,
                   Payload(b"GET /%d HTTP/1.0\r\n\r\n" % n)),
        start_time=1_700_000_000.0 + n,
    )
    attack.end_time = attack.start_time + 1
    if sample is not None:
        attack.add_download(Download("http", "198.18.1.9", 80, "x.exe",
                                     "http://198.18.1.9/x.exe", Payload(sample)))
    return attack


def load(name: str, options: dict[str, Any], tmp_path: Path) -> LoadedPlugin:
    config = Config(plugin_dir=PLUGIN_DIR)
    opts = {"spool_dir": str(tmp_path / "spool"), "retry_max": "1", **options}
    return load_plugin(PluginSpec(name, opts), config)


@pytest.fixture
def plugin(fresh_db: PgServer, tmp_path: Path) -> Iterator[Any]:
    loaded = load("submitPostgres", fresh_db.options(), tmp_path)
    loaded.instance.after_fork()  # type: ignore[attr-defined]
    yield loaded.instance
    loaded.instance.close()  # type: ignore[attr-defined]


def count(db: PgServer, sql: str) -> int:
    with db.connect() as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def attack_ids(db: PgServer) -> list[str]:
    with db.connect() as conn:
        return [r[0] for r in conn.execute("SELECT id FROM attacks").fetchall()]


def test_schema_is_created_and_versioned(plugin: Any, fresh_db: PgServer) -> None:
    plugin.savedata(make_attack(1))
    assert plugin.output.writer.wait_delivered(1, WAIT)
    assert count(fresh_db, "SELECT max(version) FROM schema_version") == postgres.MIGRATIONS[-1][0]


def test_migration_twice_changes_nothing(fresh_db: PgServer) -> None:
    with fresh_db.connect() as conn:
        conn.autocommit = False
        first = postgres.migrate(conn)
        second = postgres.migrate(conn)
    assert first == second == postgres.MIGRATIONS[-1][0]
    assert count(fresh_db, "SELECT count(*) FROM schema_version") == len(postgres.MIGRATIONS)


def test_attack_is_stored_with_connection_and_payload(plugin: Any, fresh_db: PgServer) -> None:
    attack = make_attack(7)
    plugin.savedata(attack)
    assert plugin.output.writer.wait_delivered(1, WAIT)
    with fresh_db.connect() as conn:
        row = conn.execute(
            "SELECT c.remote_ip::text, c.remote_port, p.data FROM connections c "
            "JOIN payloads p ON p.sha512 = c.payload_sha512 WHERE c.attack_id = %s",
            (attack.id,),
        ).fetchone()
    assert row == ("198.18.1.2/32", 40007, attack.payload)


def test_samples_are_stored_once_by_hash(plugin: Any, fresh_db: PgServer) -> None:
    for n in range(3):
        plugin.savedata(make_attack(n, sample=b"MZ same sample"))
    assert plugin.output.writer.wait_delivered(3, WAIT)
    assert count(fresh_db, "SELECT count(*) FROM samples") == 1
    assert count(fresh_db, "SELECT count(*) FROM downloads") == 3


def test_virtual_attacks_are_not_stored_on_their_own(plugin: Any, fresh_db: PgServer) -> None:
    root = make_attack(1)
    plugin.savedata(root.derive(b"decoded", "b64Decode"))
    plugin.savedata(root)
    assert plugin.output.writer.wait_delivered(1, WAIT)
    assert attack_ids(fresh_db) == [root.id]


def test_nul_bytes_in_strings_do_not_block_the_queue(plugin: Any, fresh_db: PgServer) -> None:
    attack = make_attack(1)
    attack.add_download(Download("ftp", "198.18.1.9", 21, "a\x00b", "ftp://x/a\x00b",
                                 Payload(b"x"), user="u\x00"))
    plugin.savedata(attack)
    assert plugin.output.writer.wait_delivered(1, WAIT)
    assert count(fresh_db, "SELECT count(*) FROM downloads") == 1


def test_database_outage_loses_nothing_and_writes_nothing_twice(
    plugin: Any, fresh_db: PgServer
) -> None:
    writer = plugin.output.writer
    before = [make_attack(n) for n in range(20)]
    for attack in before:
        plugin.savedata(attack)
    assert writer.wait_delivered(20, WAIT)
    fresh_db.stop()
    try:
        during = [make_attack(100 + n) for n in range(20)]
        for attack in during:
            plugin.savedata(attack)
        assert writer.wait_until(lambda c: c.spooled >= 20, WAIT)
    finally:
        fresh_db.start()
    after = [make_attack(200 + n) for n in range(5)]
    for attack in after:
        plugin.savedata(attack)
    assert writer.wait_delivered(45, WAIT)
    ids = attack_ids(fresh_db)
    assert sorted(ids) == sorted(a.id for a in before + during + after)
    assert writer.counters.replayed >= 20  # the outage batch came back through the spool


def test_spool_left_by_one_instance_is_replayed_by_the_next(
    fresh_db: PgServer, tmp_path: Path
) -> None:
    fresh_db.stop()
    try:
        first = load("submitPostgres", fresh_db.options(), tmp_path)
        first.instance.after_fork()  # type: ignore[attr-defined]
        attacks = [make_attack(n) for n in range(10)]
        for attack in attacks:
            first.instance.savedata(attack)  # type: ignore[attr-defined]
        first.instance.close()  # type: ignore[attr-defined]
        assert len(Spool(str(tmp_path / "spool")).names()) == 10
        second = load("SavePostgres", fresh_db.options(), tmp_path)
        second.instance.after_fork()  # type: ignore[attr-defined]
        # a new instance (a new recorder) lists the spool it finds: the first one's records
        assert second.instance.stats()["spool_depth"] == 10  # type: ignore[attr-defined]
    finally:
        fresh_db.start()
    try:
        assert second.instance.output.writer.wait_delivered(10, WAIT)  # type: ignore[attr-defined]
        assert second.instance.stats()["spool_depth"] == 0  # type: ignore[attr-defined]
    finally:
        second.instance.close()  # type: ignore[attr-defined]
    assert sorted(attack_ids(fresh_db)) == sorted(a.id for a in attacks)
    assert Spool(str(tmp_path / "spool")).names() == []


def test_replaying_delivered_records_writes_nothing_twice(
    plugin: Any, fresh_db: PgServer, tmp_path: Path
) -> None:
    attack = make_attack(1, sample=b"MZ")
    plugin.savedata(attack)
    assert plugin.output.writer.wait_delivered(1, WAIT)
    record = postgres.attack_record(attack)
    plugin.output.writer.spool.put(record.key, record.data, record.when)
    plugin.savedata(make_attack(2))  # wakes the writer, which replays the spool first
    assert plugin.output.writer.wait_delivered(3, WAIT)
    assert count(fresh_db, "SELECT count(*) FROM attacks") == 2
    assert count(fresh_db, "SELECT count(*) FROM downloads") == 1


def test_a_bad_record_is_set_aside_and_the_rest_delivered(
    plugin: Any, fresh_db: PgServer, tmp_path: Path
) -> None:
    spool = plugin.output.writer.spool
    doc = make_attack(1).to_json()
    doc["attack_connection"]["remote_ip"] = "not an address"
    spool.put("bad", json.dumps(doc).encode(), when=1.0)
    spool.put("garbage", b"{not json", when=2.0)
    good = make_attack(3)
    plugin.savedata(good)
    assert plugin.output.writer.wait_delivered(1, WAIT)
    assert plugin.output.writer.wait_until(lambda c: c.rejected >= 2, WAIT)
    assert attack_ids(fresh_db) == [good.id]
    assert len(os.listdir(tmp_path / "spool" / REJECTED_DIR)) == 2


def test_missing_required_option_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="db_name"):
        load("submitPostgres", {"db_host": "/nowhere", "db_user": "u", "db_pass": "p",
                                "sensor_id": "s"}, tmp_path)


def test_load_opens_no_connection_and_starts_no_thread(tmp_path: Path) -> None:
    """The master forks after load: nothing per-process may exist yet."""
    loaded = load("submitPostgres", {"db_host": "/nowhere", "db_name": "d", "db_user": "u",
                                     "db_pass": "p", "sensor_id": "s"}, tmp_path)
    assert loaded.instance.output.writer is None  # type: ignore[attr-defined]
    assert (tmp_path / "spool" / REJECTED_DIR).is_dir()


def test_submitpostgres_and_its_alias_add_their_spool_depths(tmp_path: Path) -> None:
    """Both names configured (each with its spool), the database away: the registry's
    statistics give one spool_depth, the sum of the two spools."""
    down = {"db_host": str(tmp_path / "no-server"), "db_name": "d", "db_user": "u",
            "db_pass": "p", "sensor_id": "s", "retry_max": "1"}
    registry = load_plugins(Config(plugin_dir=PLUGIN_DIR, plugins=[
        PluginSpec("submitPostgres", {**down, "spool_dir": str(tmp_path / "a")}),
        PluginSpec("SavePostgres", {**down, "spool_dir": str(tmp_path / "b")}),
    ]))
    registry.after_fork()
    try:
        savers = [hook for _, hook in registry.hooks["savedata"]]
        for n, hook in enumerate([*savers, *savers, savers[0]]):  # three to one, two to the other
            hook(make_attack(n))
        writers = [p.instance.output.writer for p in registry.plugins]  # type: ignore[attr-defined]
        assert writers[0].wait_until(lambda c: c.spooled >= 3, WAIT)
        assert writers[1].wait_until(lambda c: c.spooled >= 2, WAIT)
        assert registry.stats() == {"spool_depth": 5, "spool_refused": 0, "spool_rejected": 0}
    finally:
        registry.close()


def test_a_spool_the_unprivileged_recorder_cannot_reach_is_refused_at_load() -> None:
    """The recorder (as -u) opens the spool by path: behind a directory it cannot enter, every
    attack would fail in it. The plugin refuses to load, naming the directory."""
    config = Config(plugin_dir=PLUGIN_DIR, user="nobody", group="nogroup")
    # Not under tmp_path: pytest's base directory is 0700, closed to nobody itself.
    with tempfile.TemporaryDirectory(dir="/tmp") as base:
        os.chmod(base, 0o711)  # noqa: S103 - nobody must pass through it
        closed = Path(base) / "closed"
        closed.mkdir(mode=0o700)
        options = {"db_host": "192.0.2.1", "db_name": "x", "db_user": "x", "db_pass": "x",
                   "sensor_id": "s1"}
        spec = PluginSpec("submitPostgres", {**options, "spool_dir": str(closed / "spool")})
        with pytest.raises(PluginError, match=f"cannot enter {closed}:"):
            load_plugin(spec, config)
        closed.chmod(0o711)
        opened = load_plugin(spec, config)  # now nobody can reach it: it loads
        opened.instance.close()  # type: ignore[attr-defined]


def test_fleet_queries_have_their_indexes(plugin: Any, fresh_db: PgServer) -> None:
    """One sensor's attacks over time, a sample by MD5 or SHA-256, the downloads of a sample:
    each is an index the planner uses (sequential scans off, so a tiny table still shows it)."""
    plugin.savedata(make_attack(1, sample=b"MZ sample"))
    assert plugin.output.writer.wait_delivered(1, WAIT)
    queries = {
        "attacks_sensor_start_time": "SELECT id FROM attacks WHERE sensor_id = 1 "
                                     "AND start_time > now() - interval '1 day'",
        "samples_md5": "SELECT sha512 FROM samples WHERE md5 = 'x'",
        "samples_sha256": "SELECT sha512 FROM samples WHERE sha256 = 'x'",
        "downloads_sample": "SELECT attack_id FROM downloads WHERE sample_sha512 = 'x'",
    }
    with fresh_db.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        for index, sql in queries.items():
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql).fetchall())
            assert index in plan, plan


def test_sensor_id_defaults_to_the_sensors_own(fresh_db: PgServer, tmp_path: Path) -> None:
    """T-Pot's SavePostgres block has no sensor_id: the sensor's id (the top-level key or the
    one kept in state_dir) names the sensor, one key for every output."""
    options = {k: v for k, v in fresh_db.options().items() if k != "sensor_id"}
    config = Config(plugin_dir=PLUGIN_DIR, sensor_id="fleet-sensor-7")
    loaded = load_plugin(PluginSpec("SavePostgres", {**options,
                                                     "spool_dir": str(tmp_path / "spool")}),
                         config)
    instance: Any = loaded.instance
    instance.after_fork()
    try:
        instance.savedata(make_attack(1))
        assert instance.output.writer.wait_delivered(1, WAIT)
    finally:
        instance.close()
    with fresh_db.connect() as conn:
        rows = conn.execute("SELECT s.name FROM attacks a JOIN sensors s ON s.id = a.sensor_id"
                            ).fetchall()
    assert rows == [("fleet-sensor-7",)]


def test_a_follow_up_adds_the_late_downloads_and_updates_the_counts(
    plugin: Any, fresh_db: PgServer
) -> None:
    attack = make_attack(1)
    plugin.savedata(attack)
    attack.add_download_try(DownloadTry("http", "http://198.18.1.9/x.exe", "198.18.1.9", 80,
                                        "ok"))
    attack.add_download(Download("http", "198.18.1.9", 80, "x.exe", "http://198.18.1.9/x.exe",
                                 Payload(b"MZ late sample")))
    plugin.followup(attack)
    plugin.savedata(attack_without_tries(attack))  # an older copy replayed: changes nothing
    assert plugin.output.writer.wait_delivered(3, WAIT)
    assert count(fresh_db, "SELECT count(*) FROM attacks") == 1
    assert count(fresh_db, "SELECT download_count FROM attacks") == 1
    assert count(fresh_db, "SELECT download_tries FROM attacks") == 1
    assert count(fresh_db, "SELECT count(*) FROM downloads") == 1
    assert count(fresh_db, "SELECT count(*) FROM download_tries") == 1


def attack_without_tries(attack: Attack) -> Attack:
    """The attack as it was first recorded (same id, no downloads yet)."""
    first = Attack(attack.attack_connection, start_time=attack.start_time, id=attack.id)
    first.end_time = attack.end_time
    return first
