"""The full-sweep phases: every one of the 65,535 TCP ports, with honeytrap's *default*
configuration (no max_servers, rate or process overrides: what an operator gets), issue 13.

  syn_sweep      nmap -sS -p- --min-rate SYN_RATE --max-retries 0 from the attacker namespace
                 against the sensor address: one SYN per port, so the open ports nmap reports are
                 the SYNs answered with a SYN-ACK (target >= 99%);
  connect_sweep  a connect sweep over all ports, CONNECT_IN_FLIGHT in flight (bench/loadgen.py
                 burst: connect, 200 bytes, half-close, read to the end): completed and recorded
                 (attackers.json lines) against the ports (target >= 99% each).

During each sweep a sampler reads, every SAMPLE_INTERVAL, honeytrap's processes (peak count,
target <= 200), their open descriptors (peak, summed) and their total PSS (peak, target <= 250
MiB); a second attacker (the attacker namespace's IPv6 address) connects to PROBE_PORT every
PROBE_INTERVAL during the sweep and once after it: the daemon must serve new attackers meanwhile.
The first SYN's latency on fresh ports is the latency phase's (bench/latency.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from daemon import Honeytrap
from harness import CLOCK_TICKS, LOGLEVEL, QUICK, Bench, descendants, pss_kib, role
from netns import inside
from phases import Phase, register
from report import Row, row
from workdir import DAEMON_GROUP, DAEMON_USER

ALL_PORTS = 65535
# nmap's send rate floor: the sweep rate.
SYN_RATE = 5000
# The connect sweep's connections in flight (two load generator processes, harness.CONCURRENCY
# each).
CONNECT_IN_FLIGHT = 200
SAMPLE_INTERVAL = 0.5
PROBE_INTERVAL = 1.0
PROBE_PORT = 4444
PROBE_TIMEOUT = 5.0
# A sweep is bounded: nmap and the load generators stop after this long.
SWEEP_DEADLINE = 300.0
# The records of a connect sweep are waited for this long at most.
RECORDS_WAIT = 180.0
# Targets (issue 13).
ANSWERED_TARGET = 0.99
MAX_PROCESSES = 200
MAX_PSS_MIB = 250.0
QUICK_PORTS = 2000  # --quick sweeps this many ports (the CI mode), from QUICK_BASE
QUICK_BASE = 30000


def default_honeytrap(bench: Bench) -> Honeytrap:
    """The real daemon as an operator runs it: nfq, SaveFile/logAttacker/logJSON, default keys."""
    bench.runs += 1
    ht = Honeytrap(
        bench.lab, bench.workdir / f"honeytrap-sweep-{bench.runs}",
        args=["-u", DAEMON_USER, "-g", DAEMON_GROUP, "-t", str(LOGLEVEL)],
    )
    return ht.start()


def ports(bench: Bench) -> tuple[int, int]:
    """(first port, count): all of them, or a quick range."""
    return (QUICK_BASE, QUICK_PORTS) if bench.sizes == QUICK else (1, ALL_PORTS)


class Sampler:
    """Peaks of honeytrap's processes, descriptors and PSS; probes from a second attacker."""

    def __init__(self, bench: Bench, master: int) -> None:
        self.bench = bench
        self.master = master
        self.peak = {"processes": 0, "fds": 0, "pss_kib": 0, "master_fds": 0,
                     "process_fds": 0}
        self.probes = {"ok": 0, "failed": 0}
        self.pss_roles: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._probe_loop, daemon=True)]

    def __enter__(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            pids = descendants(self.master)
            fds = {pid: _fds(pid) for pid in pids}
            figures = {
                "processes": len(pids) - 1,  # the master's children
                "fds": sum(fds.values()),
                "pss_kib": sum(pss_kib(pid) for pid in pids),
                "master_fds": fds.get(self.master, 0),
                "process_fds": max((n for pid, n in fds.items() if pid != self.master),
                                   default=0),
            }
            if figures["pss_kib"] > self.peak["pss_kib"]:
                roles: dict[str, int] = {}
                for pid in pids:
                    name = role(pid, self.master)
                    roles[name] = roles.get(name, 0) + pss_kib(pid)
                self.pss_roles = roles  # at the peak: master, recorder, servers
            for name, value in figures.items():
                self.peak[name] = max(self.peak[name], value)

    def _probe_loop(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            self.probes["ok" if probe(self.bench) else "failed"] += 1


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def probe(bench: Bench) -> bool:
    """A new attacker (the attacker's IPv6 address) is served on PROBE_PORT: connected, its
    bytes taken, the connection ended by honeytrap."""
    lab = bench.lab
    with inside(lab.attacker):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.settimeout(PROBE_TIMEOUT)
    try:
        sock.connect((lab.sensor.ip6, PROBE_PORT))
        sock.sendall(b"probe\r\n")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        return True
    except OSError:
        return False
    finally:
        sock.close()


def own_cpu_seconds(pid: int) -> float:
    """CPU of the process itself, to the nanosecond (harness.single_thread_cpu_seconds: the
    master has one thread), not its reaped children's, which for the master are its server
    processes'."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def nfqueue_drops(bench: Bench) -> dict[str, int]:
    """The sensor's NFQUEUE counters (/proc/net/netfilter/nfnetlink_queue, per namespace): SYNs
    the kernel dropped because the queue was full (queue_dropped) or our socket's buffer was
    (user_dropped): they never reach the master, and nmap sees nothing."""
    text = bench.lab.sensor.cmd("cat", "/proc/net/netfilter/nfnetlink_queue", check=False)
    fields = text.split()
    if len(fields) < 8:
        return {}
    return {"queue_total": int(fields[2]), "queue_dropped": int(fields[5]),
            "user_dropped": int(fields[6])}


def totals(ht: Honeytrap) -> dict[str, int]:
    """The last statistics line the daemon logged (SIGUSR1 asks for one)."""
    text = ht.logfile.read_text() if ht.logfile.exists() else ""
    lines = [line for line in text.splitlines() if "statistics:" in line]
    if not lines:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", lines[-1].split("statistics:")[1])}


def syn_sweep(bench: Bench) -> dict[str, Any]:
    first, count = ports(bench)
    ht = default_honeytrap(bench)
    try:
        master = ht.master_pid()
        with Sampler(bench, master) as sampler:
            bench.fresh_table()
            drops_before = nfqueue_drops(bench)
            cpu_before = own_cpu_seconds(master)
            started = time.monotonic()
            out = subprocess.run(
                bench.lab.attacker.argv(
                    "nmap", "-sS", "-n", "-Pn", f"-p{first}-{first + count - 1}",
                    "--min-rate", str(SYN_RATE), "--max-retries", "0", "--host-timeout",
                    f"{SWEEP_DEADLINE:.0f}s", "-oG", "-", bench.lab.sensor.ip4,
                ),
                capture_output=True, text=True, timeout=SWEEP_DEADLINE + 60,
            ).stdout
            seconds = time.monotonic() - started
            master_cpu = own_cpu_seconds(master) - cpu_before
            drops = {k: v - drops_before.get(k, 0) for k, v in nfqueue_drops(bench).items()}
        after = probe(bench)
    finally:
        stopped = bench.stop_honeytrap(ht)
    stats = totals(ht)  # the last statistics, logged at the stop
    opened = len(re.findall(r"\d+/open/tcp", out))
    return {"ports": count, "open": opened, "seconds": seconds, "rate": count / seconds,
            "answered": opened / count, "peak": sampler.peak, "pss_roles": sampler.pss_roles,
            "probes": sampler.probes,
            "probe_after": after, "stats": _refusals(stats), "stop": stopped,
            "master_cpu": master_cpu, "nfqueue": drops}


def connect_sweep(bench: Bench) -> dict[str, Any]:
    first, count = ports(bench)
    ht = default_honeytrap(bench)
    try:
        with Sampler(bench, ht.master_pid()) as sampler:
            bench.fresh_table()
            procs = [
                bench.loadgen(
                    "burst", "--port", str(first), "--ports", str(count),
                    "--count", str(count // 2 + (i < count % 2)),
                    "--concurrency", str(CONNECT_IN_FLIGHT // 2), "--offset", str(i),
                    "--stride", "2", deadline=SWEEP_DEADLINE,
                )
                for i in range(2)
            ]
            result = bench.collect(procs, SWEEP_DEADLINE)
        after = probe(bench)
        ht.wait_records(int(result["completed"]) + sampler.probes["ok"] + after,
                        timeout=RECORDS_WAIT)
    finally:
        stopped = bench.stop_honeytrap(ht)
    stats = totals(ht)  # the last statistics, logged at the stop
    # The probes' attacks are in the records too.
    recorded = int(stopped["json"]) - sampler.probes["ok"] - int(after)
    return {"ports": count, **result, "recorded": recorded,
            "completed_share": result["completed"] / count, "recorded_share": recorded / count,
            "peak": sampler.peak, "pss_roles": sampler.pss_roles, "probes": sampler.probes,
            "probe_after": after,
            "stats": _refusals(stats), "stop": stopped}


def _refusals(stats: dict[str, int]) -> dict[str, int]:
    keep = ("attempts", "servers_started", "servers_evicted", "servers_expired", "refused_no_room",
            "refused_rate", "refused_draining", "refused_pending", "refused_handovers",
            "bind_failures", "forks_on_path", "spares_forked", "server_crashes", "connections",
            "attacks")
    return {k: stats[k] for k in keep if k in stats}


def _common_rows(name: str, r: dict[str, Any], met: dict[str, bool]) -> list[Row]:
    peak = r["peak"]
    pss_mib = peak["pss_kib"] / 1024
    met[f"{name}_processes"] = peak["processes"] <= MAX_PROCESSES
    met[f"{name}_pss"] = pss_mib <= MAX_PSS_MIB
    served = r["probes"]["failed"] == 0 and r["probe_after"]
    met[f"{name}_serves_others"] = served
    return [
        row(f"{name}: peak server processes (all children)", honeytrap=str(peak["processes"]),
            target=f"<= {MAX_PROCESSES}"),
        row(f"{name}: peak descriptors (all processes; master; largest child)",
            honeytrap=f"{peak['fds']:,}; {peak['master_fds']:,}; {peak['process_fds']:,}"),
        row(f"{name}: peak PSS (MiB, all processes)", honeytrap=f"{pss_mib:.0f}",
            target=f"<= {MAX_PSS_MIB:.0f}"),
        row(f"{name}: another attacker served during / after",
            honeytrap=f"{r['probes']['ok']} of {r['probes']['ok'] + r['probes']['failed']} / "
                      f"{'yes' if r['probe_after'] else 'no'}", target="all / yes"),
    ]


def syn_rows(r: dict[str, Any], bench: Bench, met: dict[str, bool]) -> list[Row]:
    met["syn_sweep_answered"] = r["answered"] >= ANSWERED_TARGET
    return [
        row(f"SYN sweep, {r['ports']:,} ports at {r['rate']:,.0f} SYN/s: answered with a SYN-ACK",
            honeytrap=f"{r['open']:,} ({100 * r['answered']:.2f}%)",
            target=f">= {100 * ANSWERED_TARGET:.0f}%"),
        *_master_rows(r),
        *_common_rows("SYN sweep", r, met),
    ]


def _master_rows(r: dict[str, Any]) -> list[Row]:
    """The master's CPU per SYN it saw (its own, during the sweep), and the SYNs the kernel
    dropped before it saw them (a full queue or socket buffer: the master fell behind)."""
    attempts = r["stats"].get("attempts", 0)
    per_syn = f"{1e6 * r['master_cpu'] / attempts:.0f}" if attempts else "-"
    queue = r.get("nfqueue", {})
    dropped = queue.get("queue_dropped", 0) + queue.get("user_dropped", 0)
    return [
        row("SYN sweep: master CPU per SYN seen (us; SYNs seen)",
            honeytrap=f"{per_syn} ({attempts:,})"),
        row("SYN sweep: SYNs dropped by the kernel's queue (full queue; full socket buffer)",
            honeytrap=f"{dropped:,} ({queue.get('queue_dropped', 0):,}; "
                      f"{queue.get('user_dropped', 0):,})"),
    ]


def connect_rows(r: dict[str, Any], bench: Bench, met: dict[str, bool]) -> list[Row]:
    met["connect_sweep_completed"] = r["completed_share"] >= ANSWERED_TARGET
    met["connect_sweep_recorded"] = r["recorded_share"] >= ANSWERED_TARGET
    return [
        row(f"connect sweep, {r['ports']:,} ports, {CONNECT_IN_FLIGHT} in flight: completed / "
            "recorded", honeytrap=f"{100 * r['completed_share']:.2f}% / "
                                  f"{100 * r['recorded_share']:.2f}% ({r['rate']:,.0f}/s)",
            target=f">= {100 * ANSWERED_TARGET:.0f}% each"),
        *_common_rows("connect sweep", r, met),
    ]


register(Phase("syn_sweep", syn_sweep, syn_rows))
register(Phase("connect_sweep", connect_sweep, connect_rows))

