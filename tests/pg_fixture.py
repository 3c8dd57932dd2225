"""A real, throw-away PostgreSQL for the tests (Debian's server binaries).

initdb and pg_ctl run as the `postgres` user (runuser) in a temporary directory; the server
listens only on a unix socket in that directory (no TCP port to collide with anything). pg_ctl
`-w` waits for the server to accept connections: the explicit ready signal. The directory is the
postgres user's alone (0700) unless a test admits a group to it (`admit_group`): the daemon's
recorder, which runs the plugin, is unprivileged.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries missing (Debian package postgresql)")
    return os.path.dirname(found[-1])


@dataclass
class PgServer:
    base: str
    bindir: str
    port: int = 5432  # only names the socket file: the socket directory is ours alone
    user: str = "honeytrap"
    password: str = "honeytrap-test"
    dbname: str = "honeytrap"

    @property
    def data(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def socket_dir(self) -> str:
        return self.base

    def admit_group(self, group: str) -> None:
        """Let processes of `group` traverse the socket directory (0710: reach the socket by
        name, list nothing), so an unprivileged process (the daemon's recorder, `-g nogroup`)
        can connect. Unix sockets are reached by path, so this works from any network
        namespace. Authentication is `trust`: members of the group may connect as any role to
        this throw-away server."""
        os.chown(self.base, pwd.getpwnam("postgres").pw_uid, grp.getgrnam(group).gr_gid)
        os.chmod(self.base, 0o710)  # noqa: S103 - the group traverses, lists nothing

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True, capture_output=True, timeout=120,
        )

    def init(self) -> None:
        self._as_postgres(os.path.join(self.bindir, "initdb"), "-D", self.data,
                          "--auth=trust", "-U", "postgres", "--no-sync")
        self.start()
        with psycopg.connect(host=self.socket_dir, port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
            conn.execute(f"CREATE DATABASE {self.dbname} OWNER {self.user}")

    def start(self) -> None:
        self._as_postgres(
            os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w", "-t", "60",
            "-l", os.path.join(self.base, "server.log"),
            "-o", f"-k {self.socket_dir} -c listen_addresses='' -p {self.port} -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w",
                          "-m", "fast", "stop")

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=self.socket_dir, port=self.port, user=self.user,
                               password=self.password, dbname=self.dbname, autocommit=True)

    def options(self) -> dict[str, str]:
        """The plugin's options (the original's keys) for this server."""
        return {
            "db_host": self.socket_dir, "db_port": str(self.port), "db_name": self.dbname,
            "db_user": self.user, "db_pass": self.password, "sensor_id": "sensor-test",
        }


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    base = tempfile.mkdtemp(prefix="ht-pg-")
    entry = pwd.getpwnam("postgres")
    os.chown(base, entry.pw_uid, entry.pw_gid)
    server = PgServer(base, _bindir())
    server.init()
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass  # a test left it stopped
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_db(pg: PgServer) -> Iterator[PgServer]:
    """The module's server with an empty database (tables dropped before the test)."""
    with pg.connect() as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    yield pg
