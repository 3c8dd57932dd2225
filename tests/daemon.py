"""Running the real honeytrap daemon inside a sensor namespace, for end-to-end tests.

Readiness is the daemon's own sd_notify("READY=1") on a NOTIFY_SOCKET of ours: an explicit
signal, never a sleep or a polled log file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from netns import Host, Lab, inside

REPO = Path(__file__).resolve().parent.parent
HONEYTRAP = [sys.executable, "-m", "honeytrap"]
READY_TIMEOUT = 30.0
SPARE_NAME = "ht-spare"  # server.SPARE_NAME: a server process with no port yet


def nfq_rules(host: Host, queue: int = 0, exclude_tcp: Iterable[int] = ()) -> None:
    """Queue new TCP SYNs and new UDP flows arriving on the veth to NFQUEUE (IPv4 and IPv6),
    as the README tells operators to, with --queue-bypass so nothing is dropped without us."""
    for tool in ("iptables", "ip6tables"):
        for port in exclude_tcp:
            host.cmd(tool, "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT")
        for proto in ("tcp", "udp"):
            # A port something listens on (a real service, or a dynamic server already running)
            # is the kernel's business: only unserved ports need to reach honeytrap.
            host.cmd(
                tool, "-A", "INPUT", "-i", host.dev, "-p", proto, "-m", "socket", "--nowildcard",
                "-j", "ACCEPT",
            )
        for proto in ("tcp", "udp"):
            match = ["--syn"] if proto == "tcp" else []
            host.cmd(
                tool, "-A", "INPUT", "-i", host.dev, "-p", proto, *match,
                "-m", "conntrack", "--ctstate", "NEW",
                "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass",
            )


# T-Pot's own service ports its rules.sh accepts before queueing (a few of them).
TPOT_ADMIN_PORTS = (64294, 64295, 64297)


def tpot_rules(host: Host, admin_ports: Iterable[int] = TPOT_ADMIN_PORTS) -> None:
    """T-Pot's firewall (tpotce docker/tpotinit/dist/bin/rules.sh) as it is: accept loopback,
    accept its own ports, then queue every new SYN to NFQUEUE 0. No --queue-bypass and no socket
    match: with nobody reading the queue, every new SYN is dropped."""
    host.cmd("iptables", "-w", "-A", "INPUT", "-s", "127.0.0.1", "-j", "ACCEPT")
    host.cmd("iptables", "-w", "-A", "INPUT", "-d", "127.0.0.1", "-j", "ACCEPT")
    for port in admin_ports:
        host.cmd("iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT")
    host.cmd("iptables", "-w", "-A", "INPUT", "-p", "tcp", "--syn", "-m", "state", "--state", "NEW",
             "-j", "NFQUEUE")


@dataclass
class Honeytrap:
    lab: Lab
    workdir: Path
    extra_config: str = ""
    plugins: str = ""
    args: list[str] = field(default_factory=list)
    monitor: str | None = "nfq"  # None: no `monitor` key (the default, auto)
    # None: not named in the configuration (the installed package's own are used).
    plugin_dir: Path | None = REPO / "plugins"
    response_dir: Path | None = REPO / "templates"
    # The daemon's command; another one (an installed honeytrap) runs without our PYTHONPATH.
    program: list[str] = field(default_factory=lambda: list(HONEYTRAP))
    prefix: list[str] = field(default_factory=list)  # e.g. prlimit, setpriv
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # noqa: S103 - servers run as nobody
        self.attacks_dir = self.workdir / "attacks"
        self.downloads_dir = self.workdir / "downloads"
        self.attackers_json = self.workdir / "attackers.json"
        self.attacker_log = self.workdir / "attacker.log"
        self.logfile = self.workdir / "honeytrap.log"
        self.pidfile = self.workdir / "honeytrap.pid"
        self.configfile = self.workdir / "honeytrap.conf"

    def write_config(self) -> None:
        plugins = self.plugins or f"""
plugin-SaveFile = {{
    attacks_dir = "{self.attacks_dir}"
    downloads_dir = "{self.downloads_dir}"
}}
plugin-logAttacker = {{ logfile = "{self.attacker_log}" }}
plugin-logJSON = {{ logfile = "{self.attackers_json}" }}
"""
        dirs = "".join(
            f'{key} = "{value}"\n'
            for key, value in (("response_dir", self.response_dir), ("plugin_dir", self.plugin_dir))
            if value is not None
        )
        monitor = f'monitor = "{self.monitor}"' if self.monitor is not None else ""
        self.configfile.write_text(
            f"""// written by tests/daemon.py
{monitor}
{dirs}logfile = "{self.logfile}"
pidfile = "{self.pidfile}"
read_limit = "1048576"
{self.extra_config}
{plugins}
"""
        )

    def command(self, *extra: str) -> list[str]:
        return [
            *self.prefix, *self.program, "-D", "-C", str(self.configfile), "-t", "6", *self.args,
            *extra,
        ]

    def start(self, *extra: str, ready: bool = True) -> Honeytrap:
        self.write_config()
        notify_path = self.workdir / "notify.sock"
        if notify_path.exists():
            notify_path.unlink()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A test that fails before stop() must not leave the socket to the garbage collector:
        # its ResourceWarning (an error here) would fail whichever test runs next.
        weakref.finalize(self, self.notify.close)
        self.notify.bind(str(notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        if self.program == HONEYTRAP:
            env["PYTHONPATH"] = str(REPO)
        else:
            env.pop("PYTHONPATH", None)
        with open(self.workdir / "stderr.log", "ab") as stderr:
            self.proc = self.lab.spawn(
                self.lab.sensor, self.command(*extra), env=env,
                cwd=str(REPO if self.program == HONEYTRAP else self.workdir),
                stdout=subprocess.DEVNULL, stderr=stderr,
            )
        if ready:
            self.wait_for("READY=1")
        return self

    def wait_for(self, state: str, timeout: float = READY_TIMEOUT) -> None:
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"honeytrap exited with {self.proc.returncode} before {state}:\n"
                    + self.stderr()
                )
            self.notify.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            if state in message.split("\n"):
                return
        raise AssertionError(f"no {state} from honeytrap within {timeout} s:\n" + self.stderr())

    def stderr(self) -> str:
        try:
            return (self.workdir / "stderr.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and wait for a clean exit (the daemon finishes attacks in flight)."""
        assert self.proc is not None
        try:
            if self.proc.poll() is None:
                self.signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        finally:
            if self.notify is not None:
                self.notify.close()
                self.notify = None

    def records(self) -> list[dict[str, object]]:
        if not self.attackers_json.exists():
            return []
        # Only whole lines: the recorder may be appending the last one while we read.
        text = self.attackers_json.read_text()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def wait_records(self, count: int, timeout: float = 20.0) -> list[dict[str, object]]:
        """attackers.json is the daemon's output under test: wait (bounded) for `count` lines."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def children(self) -> list[int]:
        """Pids of the server processes serving ports (the daemon's children but the recorder
        and the spare processes forked ahead, which have no port yet)."""
        return list(self.server_names())

    def server_names(self) -> dict[int, str]:
        """The server processes' names by pid (`ht-<port>/<proto>`, `+N` for N more ports)."""
        # Only named ones: a spare forked a moment ago still shows the master's command line
        # until its first statement renames it (forked.leave_master).
        return {pid: name for pid, name in self._child_names()
                if name.startswith("ht-") and name != SPARE_NAME}

    def wait_children(self, count: int, timeout: float = 10.0) -> list[int]:
        """children(), once there are `count` (bounded): a connect() completes as soon as the
        master bound the port, a moment before the spare process it went to takes its name."""
        deadline = time.monotonic() + timeout
        while len(children := self.children()) != count and time.monotonic() < deadline:
            time.sleep(0.02)
        return children

    def spares(self) -> list[int]:
        """Pids of the spare server processes (forked ahead, no port yet)."""
        return [pid for pid, name in self._child_names() if name == SPARE_NAME]

    def recorders(self) -> list[int]:
        """Pids of the recorder processes (one; two while a reload's old one finishes)."""
        return [pid for pid, name in self._child_names() if name == "honeytrap-rec"]

    def _child_names(self) -> list[tuple[int, str]]:
        assert self.proc is not None
        master = self.master_pid()
        out = subprocess.run(
            # args: the command line ps and top -c show (setproctitle sets it, and comm too)
            ["ps", "-o", "pid=,args=", "--ppid", str(master)], capture_output=True, text=True
        ).stdout
        rows = [line.split(None, 1) for line in out.splitlines() if line.strip()]
        return [(int(row[0]), row[1].strip() if len(row) > 1 else "") for row in rows]

    def master_pid(self) -> int:
        assert self.proc is not None
        # `ip netns exec` execs the command: the Popen pid is the daemon itself.
        return self.proc.pid


def metrics_text(lab: Lab, port: int) -> str:
    """The daemon's Prometheus exposition (metrics_listen on 127.0.0.1:port), read from inside
    the sensor namespace."""
    with inside(lab.sensor):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    return body.split(b"\r\n\r\n", 1)[1].decode()


def metrics(lab: Lab, port: int) -> dict[str, float]:
    """The daemon's metrics by sample name (honeytrap_..._total as exported)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = metrics_text(lab, port)
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def statistics(lab: Lab, port: int) -> dict[str, float]:
    """The master's statistics, from its /metrics (by statistic name, _total left off)."""
    return {
        name.removeprefix("honeytrap_").removesuffix("_total"): value
        for name, value in metrics(lab, port).items()
    }


def wait_statistics(lab: Lab, port: int, done: Callable[[dict[str, float]], bool], what: str,
                    wait: float) -> dict[str, float]:
    """Scrape the master's statistics (bounded by `wait` seconds) until `done(figures)` holds."""
    deadline = time.monotonic() + wait
    while True:
        got = statistics(lab, port)
        if done(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {wait} s: {got}")
        time.sleep(0.1)


def signal_quietly(pid: int, signum: int) -> None:
    """Send `signum` to `pid`, which may have exited meanwhile."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop_resumed(ht: Honeytrap) -> None:
    """Stop a running daemon after resuming every child: a test that SIGSTOPs its processes must
    never leave one stopped behind a failure."""
    if ht.proc is not None and ht.proc.poll() is None:
        for pid in ht.spares() + ht.children() + ht.recorders():
            signal_quietly(pid, signal.SIGCONT)
        ht.stop()


# -r of the dialogue tests' daemon (conftest.py's dialogue_sensor): a short read timeout, so the
# tests' clients finish soon; their banners come well before it.
DIALOGUE_READ_TIMEOUT = 3


def fields_by_port(records: list[dict[str, object]]) -> dict[int, dict[str, object]]:
    """Each record's dialogue fields (and its protocol), by the port it came to."""
    out: dict[int, dict[str, object]] = {}
    for record in records:
        conn = record["attack_connection"]
        dialogue = record.get("dialogue")
        assert isinstance(conn, dict) and isinstance(dialogue, dict)
        fields = dialogue.get("fields")
        assert isinstance(fields, dict)
        out[int(conn["local_port"])] = {"protocol": dialogue.get("protocol"), **fields}
    return out
