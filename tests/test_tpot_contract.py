"""T-Pot's contract, without a container: the daemon exactly as T-Pot's honeytrap container runs
it, and T-Pot's own health check (tpotce docker/_tests/tests/honeytrap.sh) passed.

- a sensor namespace with T-Pot's firewall (rules.sh: accept loopback, accept its own ports,
  then queue every new SYN to NFQUEUE 0: no bypass, no socket match);
- uid/gid 2000 holding only an ambient CAP_NET_ADMIN (the image's `USER honeytrap` with
  `cap_add: NET_ADMIN`), no CAP_NET_RAW, no CAP_NET_BIND_SERVICE;
- a read-only `/` (a mount namespace of its own: `read_only: true`) with only the data
  directories and a tmpfs /tmp/honeytrap writable;
- the image's configuration, etc/tpot/honeytrap.conf, in T-Pot's shape (written by us: no
  `monitor` key, its plugin lines, the commented-out ones included), and T-Pot's command line.

The health check: `Trapping attacks via NFQ` in the log directory; a token sent to 2222, 2323 and
31337 each answered within 3 s; an attackers.json line with the protocol, the local port and the
token in data_hex; an attacker.log line matching `->\\s+\\S+:PORT\\s`; none of its error patterns in
the logs. And ours: ports below 1024 are refused at once (reset) and the refusal is logged,
counted and names CAP_NET_BIND_SERVICE.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import REPO, Honeytrap, tpot_rules
from netns import Lab, inside

from honeytrap import capabilities

TPOT_ID = 2000  # T-Pot's honeytrap user and group
PROBE_PORTS = (2222, 2323, 31337)  # the health check's
PRIVILEGED_PORTS = (23, 80)  # below net.ipv4.ip_unprivileged_port_start (1024)
ANSWER_TIMEOUT = 3.0  # the health check: `read -t 3 -n 1`
IO_TIMEOUT = 5.0
# The health check's assert_no_runtime_errors pattern, word for word.
RUNTIME_ERRORS = re.compile(
    r"Permission denied|Operation not permitted|NFQ.*(fail|error)|nfq.*(fail|error)|fatal|panic"
    r"|Segmentation fault|Traceback|Assertion .*failed"
)

# The image's configuration (Dockerfile), in T-Pot's shape: no `monitor` key, T-Pot's plugin
# lines and its commented-out ones. Its /opt/honeytrap paths are moved under the test's own.
IMAGE_CONF = REPO / "etc" / "tpot" / "honeytrap.conf"
IMAGE_ETC = "/opt/honeytrap/etc/honeytrap"
IMAGE_VAR = "/opt/honeytrap/var"

# Run as root inside `ip netns exec <sensor> unshare -m`, then exec "$@" (setpriv ...): make
# every mount read-only but the data directories and a tmpfs at /tmp/honeytrap, as Docker's
# `read_only: true` with T-Pot's volumes and tmpfs does. HT_CLOSED/HT_OPEN: a directory on the
# way to the interpreter that uid 2000 cannot enter (root's 0700 home holding a pyenv, on this
# machine) is covered by a 0755 tmpfs with only the interpreter's tree bound back into it.
MOUNT_SCRIPT = r"""
set -eu
mount --make-rprivate /
if [ -n "${HT_CLOSED:-}" ]; then
  mount --bind "$HT_CLOSED/$HT_OPEN" "$HT_STASH"
  mount -t tmpfs -o mode=0755 tmpfs "$HT_CLOSED"
  mkdir "$HT_CLOSED/$HT_OPEN"
  mount --bind "$HT_STASH" "$HT_CLOSED/$HT_OPEN"
fi
mount --bind "$HT_VAR" "$HT_VAR"
mount -t tmpfs -o uid=2000,gid=2000,mode=0755 tmpfs /tmp/honeytrap
awk '{print $2}' /proc/self/mounts | while read -r target; do
  case "$target" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp/honeytrap|"$HT_VAR") continue ;;
  esac
  mount -o remount,bind,ro "$target" 2>/dev/null || true
done
if touch /.ht-rw-probe 2>/dev/null || touch "$HT_BASE/.ht-rw-probe" 2>/dev/null; then
  echo "the root file system is still writable" >&2
  exit 97
fi
exec "$@"
"""


def ensure_tpot_identity() -> tuple[str, str]:
    """-u/-g as T-Pot writes them (`honeytrap`), if that user and group are uid/gid 2000 here
    (created when absent); else the numeric form, which names the same identity."""
    try:
        grp.getgrgid(TPOT_ID)
    except KeyError:
        subprocess.run(["groupadd", "--gid", str(TPOT_ID), "honeytrap"], check=False,
                       capture_output=True)
    try:
        pwd.getpwuid(TPOT_ID)
    except KeyError:
        subprocess.run(["useradd", "--system", "--uid", str(TPOT_ID), "--gid", str(TPOT_ID),
                        "--no-create-home", "--shell", "/usr/sbin/nologin", "honeytrap"],
                       check=False, capture_output=True)
    try:
        named = pwd.getpwnam("honeytrap").pw_uid == TPOT_ID == grp.getgrnam("honeytrap").gr_gid
    except KeyError:
        named = False
    return ("honeytrap", "honeytrap") if named else (str(TPOT_ID), str(TPOT_ID))


def closed_on_the_way(path: str) -> tuple[str, str] | None:
    """(directory, child) for the first directory on the way to `path` that others cannot
    enter, with the child leading on to `path`; None if uid 2000 reaches it."""
    parts = Path(os.path.realpath(path)).parts
    for depth in range(1, len(parts) - 1):
        directory = os.path.join(*parts[:depth])
        if not os.stat(directory).st_mode & 0o001:
            return directory, parts[depth]
    return None


class TPotSensor(Honeytrap):
    """The daemon with T-Pot's configuration and command line (see the module docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.var = self.workdir / "var"
        for sub in ("attacks", "downloads", "log"):
            (self.var / sub).mkdir(parents=True, exist_ok=True)
            os.chown(self.var / sub, TPOT_ID, TPOT_ID)
        os.chown(self.var, TPOT_ID, TPOT_ID)
        self.logfile = self.var / "log" / "honeytrap.log"
        self.attackers_json = self.var / "log" / "attackers.json"
        self.attacker_log = self.var / "log" / "attacker.log"
        self.attacks_dir = self.var / "attacks"
        self.configfile = self.workdir / "honeytrap.conf"
        self.identity = ensure_tpot_identity()

    def write_config(self) -> None:
        text = IMAGE_CONF.read_text()
        for image_path, ours in ((f"{IMAGE_ETC}/responses", REPO / "templates"),
                                 (f"{IMAGE_ETC}/plugins", REPO / "plugins"),
                                 (IMAGE_VAR, self.var)):
            text = text.replace(image_path, str(ours))
        self.configfile.write_text(text)
        os.chmod(self.configfile, 0o644)

    def command(self, *extra: str) -> list[str]:
        user, group = self.identity
        return [
            *self.prefix, *self.program, "-D", "-C", str(self.configfile),
            "-P", "/tmp/honeytrap/honeytrap.pid", "-t", "5", "-u", user, "-g", group, *extra,
        ]

    def start(self, *extra: str, ready: bool = True) -> Honeytrap:
        started = super().start(*extra, ready=False)
        assert self.notify is not None
        os.chmod(self.workdir / "notify.sock", 0o777)  # noqa: S103 - uid 2000 says READY=1
        if ready:
            self.wait_for("READY=1")
        return started


@pytest.fixture
def tpot(lab: Lab) -> Iterator[TPotSensor]:
    # Not under tmp_path: pytest's base directory is 0700, closed to uid 2000.
    base = Path(tempfile.mkdtemp(prefix="ht-tpot-", dir="/tmp"))
    os.chmod(base, 0o755)  # noqa: S103 - uid 2000 reads its configuration here
    Path("/tmp/honeytrap").mkdir(exist_ok=True)  # the tmpfs's mount point (T-Pot's tmpfs)
    env = {"HT_VAR": str(base / "var"), "HT_BASE": str(base)}
    closed = closed_on_the_way(sys.executable)
    if closed is not None:
        (base / "stash").mkdir()
        env |= {"HT_CLOSED": closed[0], "HT_OPEN": closed[1], "HT_STASH": str(base / "stash")}
    prefix = [
        "env", *(f"{k}={v}" for k, v in env.items()),
        "unshare", "-m", "sh", "-c", MOUNT_SCRIPT, "tpot-mounts",
        "setpriv", "--reuid", str(TPOT_ID), "--regid", str(TPOT_ID), "--clear-groups",
        "--inh-caps", "+net_admin", "--ambient-caps", "+net_admin",
        "env", "PYTHONDONTWRITEBYTECODE=1",
    ]
    sensor = TPotSensor(lab, base, monitor=None, prefix=prefix)
    try:
        yield sensor
    finally:
        if sensor.proc is not None and sensor.proc.poll() is None:
            sensor.stop()
        shutil.rmtree(base, ignore_errors=True)


def probe(lab: Lab, port: int, token: str) -> bytes:
    """The health check's probe: connect, send a GET carrying the token, read one byte."""
    with inside(lab.attacker):
        sock = socket.create_connection((lab.sensor.ip4, port), timeout=IO_TIMEOUT)
    with sock:
        sock.sendall(f"GET /tpot-honeytrap-smoke/{token} HTTP/1.0\r\nHost: honeytrap\r\n"
                     f"User-Agent: tpot-honeytrap-smoke/{token}\r\n\r\n".encode())
        sock.settimeout(ANSWER_TIMEOUT)
        return sock.recv(1)


def test_tpot_container_contract(lab: Lab, tpot: TPotSensor) -> None:
    tpot_rules(lab.sensor)
    tpot.start()
    logs = tpot.logfile.read_text()
    assert "Trapping attacks via NFQ" in logs
    assert "running as uid 2000/gid 2000 with CAP_NET_ADMIN" in logs
    assert "NFQUEUE 0 only, no pcap (no CAP_NET_RAW)" in logs

    tokens = {port: f"honeytrap-test-{port}-{secrets.token_hex(6)}" for port in PROBE_PORTS}
    for port, token in tokens.items():
        assert probe(lab, port, token), f"no answer on {port}"

    for port in PRIVILEGED_PORTS:
        with inside(lab.attacker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        with sock, pytest.raises(ConnectionRefusedError):  # the verdict given, the kernel's RST
            sock.connect((lab.sensor.ip4, port))

    # The processes that read attacker bytes hold no capability; the master keeps its own.
    children = [*tpot.children(), *tpot.recorders()]
    assert children
    for pid in children:
        sets = capabilities.parse_status(Path(f"/proc/{pid}/status").read_text())
        assert sets["CapEff"] == sets["CapPrm"] == sets["CapAmb"] == 0, (pid, sets)
    master = capabilities.parse_status(Path(f"/proc/{tpot.master_pid()}/status").read_text())
    assert capabilities.names(master["CapEff"]) == ["CAP_NET_ADMIN"]

    records = tpot.wait_records(len(PROBE_PORTS))
    for port, token in tokens.items():
        assert any(
            r["attack_connection"]["protocol"] == "tcp"  # type: ignore[index]
            and int(r["attack_connection"]["local_port"]) == port  # type: ignore[index]
            and token.encode() in bytes.fromhex(
                r["attack_connection"]["payload"]["data_hex"])  # type: ignore[index]
            for r in records
        ), (port, records)
    sensor_ids = {r["sensor_id"] for r in records}
    assert len(sensor_ids) == 1 and "" not in sensor_ids
    assert tpot.stop() == 0

    attacker_log = tpot.attacker_log.read_text()
    for port in PROBE_PORTS:
        assert re.search(rf"->\s+\S+:{port}\s", attacker_log), attacker_log
    logs = tpot.logfile.read_text()
    refusals = [line for line in logs.splitlines() if "needs CAP_NET_BIND_SERVICE" in line]
    assert refusals and "not serving 23/tcp" in refusals[0], logs[-3000:]
    assert len(refusals) == 1  # the second refusal within 5 s is counted, not logged
    assert re.search(r"refused_privileged=2\b", logs), logs[-3000:]
    for name in ("honeytrap.log", "attackers.json", "attacker.log"):
        text = (tpot.var / "log" / name).read_text()
        assert not RUNTIME_ERRORS.search(text), (name, RUNTIME_ERRORS.search(text))
    stderr = tpot.stderr()
    assert not RUNTIME_ERRORS.search(stderr), stderr
    assert json.loads(tpot.attackers_json.read_text().splitlines()[0])["sensor_id"]
