"""What the benchmark's phases share: the lab, the servers measured (the asyncio and uvloop
floors, bench/baseline.py; honeytrap, the real daemon), the load (bench/loadgen.py) and the
process figures (CPU time and PSS from /proc, by role).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import conntrack  # noqa: E402
from daemon import Honeytrap, metrics, nfq_rules  # noqa: E402
from netns import Lab  # noqa: E402
from workdir import DAEMON_GROUP, DAEMON_USER  # noqa: E402

from honeytrap.templates import DEFAULT_TEMPLATE, load_template  # noqa: E402

PYTHON = sys.executable
# Load generator processes: the machine has 2 cores; every target faces the same load.
LOADGEN_PROCS = 2
CONCURRENCY = 100  # connections in flight per load generator process
# honeytrap's configuration for the load (its needs, as an operator would set them; the idle
# phase holds 15,000 connections from the one load generator address: per-source budgets up).
HONEYTRAP_CONFIG = """
max_servers = "1100"
max_server_rate = "2000"
max_connections = "20000"
max_connections_per_source = "20000"
max_connections_per_network = "20000"
"""
# The floors' loops (bench/baseline.py --loop).
FLOORS = ("asyncio", "uvloop")
# Each load generator run is bounded: it stops after this long.
PHASE_DEADLINE = 180.0
# After a burst, honeytrap's records (the recorder works behind the servers) are waited for
# this long at most before its CPU time is read.
RECORDS_WAIT = 120.0
# A honeytrap burst still running after max(CAPTURE_AFTER, its connections / CAPTURE_RATE)
# seconds is captured (Bench.watched): a sweep rep's 5,000 take ~1 s, 10 s at that rate;
# one_port's 20,000 ~3 s, 40 s. The one stall seen took 107 s.
CAPTURE_AFTER = 8.0
CAPTURE_RATE = 500.0
WATCH_POLL = 0.1
# honeytrap logs at its default level, as an operator runs it (the tests' harness says -t 6).
LOGLEVEL = 3
# The daemon's metrics port inside the sensor namespace (the soak reads `unacknowledged`).
METRICS_PORT = 9100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RECORDER_NAME = "honeytrap-rec"  # /proc/<pid>/comm of the recorder (proctitle.RECORDER)


@dataclass(frozen=True)
class Sizes:
    one_port: int  # connections to one port, per rep and target
    sweep_ports: int
    sweep_conns: int  # per rep and target
    idle: tuple[int, ...]
    fresh_ports: int
    reps: int
    soak_seconds: float
    # The soak's load (connections/s); 0: SOAK_LOAD times one_port's median (bench/soak.py).
    soak_rate: float = 0.0


FULL = Sizes(20000, 1000, 5000, (5000, 15000), 200, 5, 600.0)
QUICK = Sizes(300, 50, 100, (300,), 20, 2, 5.0)


# --- processes ---------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def pss_kib(pid: int) -> int:
    """PSS of one process in KiB (smaps_rollup); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(pid: int) -> int:
    """Total PSS of a process and all its descendants, in KiB."""
    return sum(pss_kib(p) for p in descendants(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its reaped children (proc(5) stat 14-17)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def single_thread_cpu_seconds(pid: int) -> float:
    """cpu_seconds for a process of one thread (the master: "no thread in the master"; a floor),
    its own part to the nanosecond: the first field of /proc/<pid>/schedstat is the thread's
    on-CPU time, where stat's utime + stime are whole clock ticks (10 ms). On the sweep the
    master spends ~0.1 s a rep, so ticks gave its CPU per fresh port in steps of 10 us (~8% of
    it); schedstat is the leader thread's alone, hence one thread only. Its reaped children as
    cpu_seconds counts them (ticks); stat's figures where schedstat is missing
    (no CONFIG_SCHED_INFO)."""
    try:
        own_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)
    return own_ns / 1e9 + (int(fields[13]) + int(fields[14])) / CLOCK_TICKS


def role(pid: int, master: int) -> str:
    if pid == master:
        return "master"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    return "recorder" if comm == RECORDER_NAME else "servers"


def by_role(master: int, figure: Any, master_figure: Any = None) -> dict[str, float]:
    """figure(pid) summed over honeytrap's processes, by role (master, recorder, servers);
    `master_figure`, if given, is the master's instead."""
    out = {"master": 0.0, "recorder": 0.0, "servers": 0.0}
    for pid in descendants(master):
        name = role(pid, master)
        if name in out:
            out[name] += (master_figure or figure)(pid) if name == "master" else figure(pid)
    return out


# --- the lab -------------------------------------------------------------------------------------


def prepare_lab(lab: Lab) -> None:
    """The namespaces as every phase needs them: many short connections from one address (a
    wide ephemeral range, TIME_WAIT reuse), new SYNs queued to NFQUEUE in the sensor as the
    README says, and the sensor's connection tracking sized for the load (bench/conntrack.py)."""
    for host in (lab.attacker, lab.sensor):
        host.cmd("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
        host.cmd("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
    nfq_rules(lab.sensor)
    lab.sensor.cmd("sysctl", "-qw",
                   f"net.netfilter.nf_conntrack_tcp_timeout_time_wait={conntrack.TIME_WAIT}")


# --- the bench ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, lab: Lab, workdir: Path, sizes: Sizes) -> None:
        self.lab = lab
        self.workdir = workdir
        self.sizes = sizes
        self.address = lab.sensor.ip4
        # What honeytrap answers on the measured ports (none has a template: a newline).
        self.banner = load_template(str(REPO / "templates"), "tcp", 4444) or DEFAULT_TEMPLATE
        self.runs = 0
        self.results: dict[str, Any] = {}  # the figures of the phases run so far
        # Each load starts with the sensor's connection tracking empty (conntrack.flush);
        # bench/stallwatch.py --fill keeps what it filled.
        self.flush_conntrack = True
        # Where a honeytrap burst that runs long is captured (watched); None: not watched.
        self.captures: Path | None = None
        self.capture_floor = CAPTURE_AFTER  # bench/stallwatch.py --long
        self.captured = 0
        self.failed: dict[str, str] = {}  # phases that raised: what they raised

    # --- servers ---

    def floor(self, loop: str, port: int, ports: int, banner: bytes | None = None,
              files: bool = False) -> Floor:
        """A floor on `port` .. `port + ports - 1`, answering `banner` (default: honeytrap's
        answer on the throughput ports) at once; `files`: the file floor (baseline.py --files),
        saving one atomic file per connection in a directory of its own."""
        self.runs += 1
        out = self.workdir / f"floor-{loop}-{self.runs}.json"
        command = [PYTHON, str(BENCH / "baseline.py"), "--port", str(port), "--ports",
                   str(ports), "--banner-hex", (self.banner if banner is None else banner).hex(),
                   "--out", str(out), "--loop", loop]
        saved = None
        if files:
            saved = self.workdir / f"floor-{loop}-{self.runs}.files"
            saved.mkdir()
            command += ["--files", str(saved)]
        proc = self.lab.spawn(self.lab.sensor, command, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the {loop} floor did not start")
        return Floor(loop, proc, out, port, ports, saved)

    def honeytrap(self, read_timeout: float = 1.0, extra: str = "") -> Honeytrap:
        self.runs += 1
        ht = Honeytrap(
            self.lab, self.workdir / f"honeytrap-{self.runs}",
            args=["-u", DAEMON_USER, "-g", DAEMON_GROUP, "-l", "600", "-r", str(read_timeout),
                  "-t", str(LOGLEVEL)],
            extra_config=HONEYTRAP_CONFIG + extra,
        )
        return ht.start()

    def stop_honeytrap(self, ht: Honeytrap) -> dict[str, Any]:
        """SIGTERM (honeytrap finishes every attack in flight), then count its three outputs."""
        started = time.monotonic()
        code = ht.stop(timeout=120)
        stop_seconds = time.monotonic() - started
        files = len(os.listdir(ht.attacks_dir)) if ht.attacks_dir.exists() else 0
        crashes = server_crashes(ht)
        # Counted: its files go, so that the later phases (and the soak's hundreds of thousands
        # of files) do not fill the work directory's filesystem.
        shutil.rmtree(ht.attacks_dir, ignore_errors=True)
        return {"exit": code, "stop_seconds": stop_seconds, "json": lines(ht.attackers_json),
                "log": lines(ht.attacker_log), "files": files,
                "server_crashes": crashes}

    # --- load ---

    def fresh_table(self) -> None:
        """Before a load (its load generators not started yet): the sensor's connection
        tracking as a fresh lab's (conntrack.flush)."""
        if not self.flush_conntrack:
            return
        try:
            conntrack.flush(self.lab.sensor)
        except OSError as exc:  # no ctnetlink here (a kernel without nf_conntrack_netlink)
            self.flush_conntrack = False
            sys.stderr.write(f"bench: the sensor's conntrack table cannot be flushed ({exc}): "
                             "loads run on what the ones before left there (TIME_WAIT "
                             f"{conntrack.TIME_WAIT} s); the conntrack drops row shows if it "
                             "filled\n")

    def loadgen(self, *argv: str, stdin: bool = False,
                deadline: float = PHASE_DEADLINE) -> subprocess.Popen[bytes]:
        return self.lab.spawn(
            self.lab.attacker,
            [PYTHON, str(BENCH / "loadgen.py"), *argv, "--address", self.address,
             "--deadline", str(deadline)],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        )

    def burst(self, port: int, ports: int, count: int, rate: float = 0.0,
              deadline: float = PHASE_DEADLINE) -> dict[str, float]:
        return self.collect(self.start_burst(port, ports, count, rate, deadline), deadline)

    def start_burst(self, port: int, ports: int, count: int, rate: float = 0.0,
                    deadline: float = PHASE_DEADLINE,
                    duration: float = 0.0) -> list[subprocess.Popen[bytes]]:
        """The load generators' bursts (bench/loadgen.py); `duration`: none started after
        that many seconds, those in flight waited for until `deadline`."""
        self.fresh_table()
        return [
            self.loadgen(
                "burst", "--port", str(port), "--ports", str(ports),
                "--count", str(count // LOADGEN_PROCS + (i < count % LOADGEN_PROCS)),
                "--concurrency", str(CONCURRENCY), "--offset", str(i),
                "--stride", str(LOADGEN_PROCS), "--rate", str(rate / LOADGEN_PROCS),
                "--duration", str(duration), deadline=deadline,
            )
            for i in range(LOADGEN_PROCS)
        ]

    def collect(self, procs: list[subprocess.Popen[bytes]],
                deadline: float = PHASE_DEADLINE) -> dict[str, float]:
        results = [json.loads(p.communicate(timeout=deadline + 30)[0]) for p in procs]
        total = {k: sum(r[k] for r in results)
                 for k in ("completed", "failed", "timeout", "unfinished", "started")}
        elapsed = max(r["elapsed"] for r in results)
        # The burst's span on the wall clock, from the first generator's start to the last's end.
        started_at = min(r["ended_at"] - r["elapsed"] for r in results)
        ended_at = max(r["ended_at"] for r in results)
        return {**total, "elapsed": elapsed, "rate": total["completed"] / elapsed,
                "started_at": started_at, "ended_at": ended_at}

    def idle(self, port: int, count: int, server_pid: int) -> dict[str, Any]:
        self.fresh_table()
        procs = [
            self.loadgen(
                "idle", "--port", str(port),
                "--count", str(count // LOADGEN_PROCS + (i < count % LOADGEN_PROCS)),
                stdin=True,
            )
            for i in range(LOADGEN_PROCS)
        ]
        results = []
        for p in procs:
            assert p.stdout is not None
            ready, _, _ = select.select([p.stdout], [], [], PHASE_DEADLINE + 30)
            if not ready:
                raise RuntimeError("an idle load generator did not report")
            results.append(json.loads(p.stdout.readline()))
        pss = tree_pss_kib(server_pid)
        roles = by_role(server_pid, pss_kib)
        processes = len(descendants(server_pid))
        for p in procs:
            p.communicate(b"\n", timeout=60)
        served = sum(r["served"] for r in results)
        return {"served": served, "pss_kib": pss, "processes": processes, "pss_roles": roles}

    def latency(self, port: int, ports: int) -> list[float]:
        self.fresh_table()
        proc = self.loadgen("latency", "--port", str(port), "--ports", str(ports))
        result = json.loads(proc.communicate(timeout=PHASE_DEADLINE + 30)[0])
        return list(result["samples_ms"])

    # --- measuring one target under a burst ---

    def measure_floor(self, floor: Floor, count: int, port: int | None = None) -> dict[str, Any]:
        before = single_thread_cpu_seconds(floor.proc.pid)
        tracked = conntrack.counters(self.lab.sensor)
        result = self.burst(floor.port if port is None else port, floor.ports, count)
        after = single_thread_cpu_seconds(floor.proc.pid)
        result["cpu_us"] = (after - before) * 1e6 / max(1, count)
        result["conntrack_drops"] = conntrack.dropped(tracked,
                                                      conntrack.counters(self.lab.sensor))
        # A floor writes each record before it closes the connection: its last write is within
        # the burst (the file floor's files too).
        written = last_write([floor.out] + ([floor.files] if floor.files else []))
        result["recorded_rate"] = recorded_rate(result, written)
        return result

    def watched(self, procs: list[subprocess.Popen[bytes]], master: int,
                count: int) -> dict[str, Any]:
        """collect(procs), capturing what honeytrap's processes and the lab are doing
        (bench/stallwatch.py capture) into `captures` once, while the burst still runs, if it
        runs past capture_after(count): a stall is seen before it recovers."""
        started = time.monotonic()
        where = None
        while self.captures is not None and any(p.poll() is None for p in procs):
            if where is None and time.monotonic() - started > self.capture_after(count):
                from stallwatch import capture  # it imports this module

                self.captured += 1
                where = self.captures / f"burst-{self.captured}"
                capture(self, master, where)
            time.sleep(WATCH_POLL)
        result: dict[str, Any] = dict(self.collect(procs))
        result["captured"] = None if where is None else str(where)
        return result

    def capture_after(self, count: int) -> float:
        """How long a burst of `count` connections runs before it is captured."""
        return max(self.capture_floor, count / CAPTURE_RATE)

    def measure_honeytrap(self, ht: Honeytrap, port: int, ports: int,
                          count: int) -> dict[str, Any]:
        """A burst, then the wait (bounded) for the recorder to write every record, so the CPU
        time read after it is the whole cost of the burst's attacks, by role."""
        master = ht.master_pid()
        before = by_role(master, cpu_seconds, single_thread_cpu_seconds)
        records = LineCounter(ht.attackers_json)
        records_before = records()
        log = LineCounter(ht.attacker_log)
        log_before = log()
        tracked = conntrack.counters(self.lab.sensor)
        result = self.watched(self.start_burst(port, ports, count), master, count)
        result["conntrack_drops"] = conntrack.dropped(tracked,
                                                      conntrack.counters(self.lab.sensor))
        result["records_wait"] = wait_lines(
            records, records_before + int(result["completed"]), RECORDS_WAIT
        )
        if result["records_wait"] >= 0:  # and the other line output's (the files come first)
            waited = wait_lines(log, log_before + int(result["completed"]), RECORDS_WAIT)
            result["records_wait"] = -1.0 if waited < 0 else result["records_wait"] + waited
        written = last_write([ht.attackers_json, ht.attacker_log, ht.attacks_dir])
        result["recorded_rate"] = (recorded_rate(result, written)
                                   if result["records_wait"] >= 0 else 0.0)
        after = by_role(master, cpu_seconds, single_thread_cpu_seconds)
        done = max(1, int(result["completed"]))
        result["cpu_roles_us"] = {k: (after[k] - before[k]) * 1e6 / done for k in after}
        result["cpu_us"] = sum(result["cpu_roles_us"].values())
        result["pss_kib"] = tree_pss_kib(master)
        result["pss_roles"] = by_role(master, pss_kib)
        return result


@dataclass
class Floor:
    loop: str
    proc: subprocess.Popen[bytes]
    out: Path
    port: int
    ports: int
    files: Path | None = None  # the file floor's directory

    def stop(self) -> int:
        """SIGTERM; the records it wrote (one JSON line per connection)."""
        self.proc.terminate()
        self.proc.wait(30)
        return lines(self.out)

    def saved(self) -> int:
        """The files the file floor saved (0 for the others)."""
        return 0 if self.files is None else sum(1 for _ in os.scandir(self.files))


def lines(path: Path) -> int:
    """The lines of `path` (0 if there is none)."""
    return LineCounter(path)()


class LineCounter:
    """The lines of a file that only grows (an output log), counted as it grows: each call
    reads only what was appended since the one before. Counting the whole file at every look
    cost ~1.4 us of the bench's CPU per line already written (logJSON's 1.7 KB lines): in the
    10-minute soak 1.2 s per sample at 870,000 records and 4 s at 2.8 million, so the samples
    came every 9 s instead of 5 and took that CPU from the daemon on the 2-core machine, more
    the longer it ran; the records wait after the load read the whole file every 50 ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes counted
        self.count = 0

    def __call__(self) -> int:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return self.count
        with f:
            f.seek(self.offset)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                self.count += chunk.count(b"\n")
                self.offset += len(chunk)
        return self.count


def wait_lines(path: Path | LineCounter, count: int, seconds: float) -> float:
    """Wait until `path` has `count` lines (bounded); the seconds it took, -1 if it never did."""
    started = time.monotonic()
    counter = path if isinstance(path, LineCounter) else LineCounter(path)
    while counter() < count:
        if time.monotonic() - started > seconds:
            return -1.0
        time.sleep(0.05)
    return time.monotonic() - started


def last_write(paths: list[Path]) -> float:
    """The latest modification time (wall clock, seconds) of the paths that exist (0 if none):
    an output's last record, or a directory's last file created in it."""
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime_ns)
        except FileNotFoundError:
            continue
    return max(times, default=0) / 1e9


def recorded_rate(burst: dict[str, Any], written: float) -> float:
    """Connections per second from the burst's start until the last of its records was written
    (or the burst's end, if that came later): what a target records, not only what it serves.
    honeytrap's recorder writes behind its servers, so its served rate alone flatters it; the
    floors write each record before they close the connection. The modification times are
    right to the kernel's coarse clock tick (a few ms: under 1% of a burst of ~0.5 s or more),
    where the records wait polls every 50 ms (wait_lines)."""
    span = max(float(burst["ended_at"]), written) - float(burst["started_at"])
    return float(burst["completed"]) / span if span > 0 else 0.0


def server_crashes(ht: Honeytrap) -> int:
    """Server processes the master logged as exited with an error (it counts each one in
    server_crashes; the line is an error, logged at the bench's level)."""
    try:
        text = ht.logfile.read_text(errors="replace")
    except OSError:
        return -1
    return sum(1 for line in text.splitlines()
               if "server process" in line and "exited with status" in line)


def scrape(lab: Lab, port: int = METRICS_PORT) -> dict[str, float]:
    """honeytrap's Prometheus metrics (metrics_listen), from inside the sensor namespace."""
    return metrics(lab, port)
