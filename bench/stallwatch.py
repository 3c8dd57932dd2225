"""Sweep reps under watch, as root:  python bench/stallwatch.py [--reps N] [--long S] --out DIR

The throughput phase's sweep rep (bench/throughput.py: a fresh daemon, 5,000 connections over
1,000 ports, the load generator's 200 in flight) run again and again against honeytrap alone, in
the lab bench/run.py makes (harness.prepare_lab). When a rep's burst runs past --long seconds
(one takes ~1 s) it captures (Bench.watched, which bench/run.py's honeytrap bursts use too,
into bench/results/captures-<start>/), once, while the rep is still stuck, what each part is
doing (capture()): the sensor's listening sockets and their accept queues (Recv-Q of `ss -ltn`), the
sockets by state on both sides (a SYN never answered stays SYN-SENT on the attacker), the
kernel's NFQUEUE and connection tracking counters and its log's netfilter lines, the daemon's
/metrics (its port table, held-back and unacknowledged counters), and for every honeytrap
process its state, kernel wait channel and a py-spy dump of its Python stack. One JSON line per
rep on stdout (elapsed, completed, timed out, what the sensor's connection tracking dropped,
where its capture is: --out/burst-N/).

The one stall of issue 13 (a sweep rep of the full run: 360 connections never answered, 107 s)
was the lab's connection tracking table full (bench/conntrack.py; the bench now flushes it
before each load). To see it again: --fill R fills the table before each rep up to R entries
short of full (conntrack.fill: entries the kernel does not evict, as a closed connection's) and
leaves out the flush (R < 5,000: the rep's last 5,000 - R connections find no room); --time-wait
S sets how long the sensor tracks a closed connection (the kernel's is 120 s); --burner N runs N
CPU burners beside the reps (the full run's load). Everything started here is stopped by PID at
the end, the lab removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import conntrack  # noqa: E402
from daemon import metrics_text  # noqa: E402
from harness import (  # noqa: E402
    CAPTURE_AFTER,
    CAPTURE_RATE,
    FULL,
    METRICS_PORT,
    RECORDS_WAIT,
    Bench,
    LineCounter,
    descendants,
    prepare_lab,
    role,
    wait_lines,
)
from netns import Host, Lab  # noqa: E402
from throughput import SWEEP_BASE  # noqa: E402
from workdir import work_directory  # noqa: E402

# Each capture command is bounded (py-spy on a process stuck in the kernel may wait).
CAPTURE_TIMEOUT = 20.0
# The kernel's own TIME_WAIT for tracked TCP connections (what the lab had before).
KERNEL_TIME_WAIT = 120


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=80, help="sweep reps (default 80)")
    parser.add_argument("--long", type=float, default=CAPTURE_AFTER,
                        help="capture a rep whose burst runs past this, or 1 s per "
                             f"{CAPTURE_RATE:.0f} connections if longer (s; {CAPTURE_AFTER})")
    parser.add_argument("--out", type=Path, required=True, help="where captures go")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--burner", type=int, default=0, help="CPU burner processes beside")
    parser.add_argument("--time-wait", type=int, default=None, metavar="S",
                        help="the sensor's conntrack TIME_WAIT instead of the bench's "
                             f"(the kernel's is {KERNEL_TIME_WAIT})")
    parser.add_argument("--fill", type=int, default=None, metavar="R",
                        help="before each rep, fill the sensor's conntrack table to R short "
                             "of full")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.stderr.write("bench/stallwatch.py must run as root: it creates network namespaces\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                start_new_session=True) for _ in range(args.burner)]
    try:
        with work_directory(args.workdir.resolve(), True) as wd:
            lab = Lab.create()
            try:
                prepare_lab(lab)
                if args.time_wait is not None:
                    lab.sensor.cmd("sysctl", "-qw", "net.netfilter."
                                   f"nf_conntrack_tcp_timeout_time_wait={args.time_wait}")
                bench = Bench(lab, wd.path, FULL)
                bench.flush_conntrack = args.fill is None  # what it filled stays
                bench.captures, bench.capture_floor = args.out, args.long
                for rep in range(args.reps):
                    if args.fill is not None:
                        conntrack.flush(lab.sensor)  # the rep before's entries: R exactly
                        conntrack.fill(lab.sensor, args.fill)
                    result = watched_rep(bench)
                    sys.stdout.write(json.dumps({"rep": rep, **result}) + "\n")
                    sys.stdout.flush()
            finally:
                lab.close()
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    return 0


def watched_rep(bench: Bench) -> dict[str, Any]:
    """One sweep rep against a fresh daemon, captured (Bench.watched) if it runs long."""
    ht = bench.honeytrap(extra=f'metrics_listen = "127.0.0.1:{METRICS_PORT}"\n')
    try:
        records = LineCounter(ht.attackers_json)
        tracked = conntrack.counters(bench.lab.sensor)
        sizes = bench.sizes
        procs = bench.start_burst(SWEEP_BASE, sizes.sweep_ports, sizes.sweep_conns)
        result = bench.watched(procs, ht.master_pid(), sizes.sweep_conns)
        result["conntrack_drops"] = conntrack.dropped(tracked,
                                                      conntrack.counters(bench.lab.sensor))
        result["records_wait"] = wait_lines(records, int(result["completed"]), RECORDS_WAIT)
    finally:
        stopped = bench.stop_honeytrap(ht)
    return {**result, "records": stopped["json"], "exit": stopped["exit"]}


def capture(bench: Bench, master: int, where: Path) -> None:
    """What every part is doing now, a file each in `where` (summary.txt first to read)."""
    where.mkdir(parents=True, exist_ok=True)
    lab = bench.lab
    summary = [f"captured at {time.strftime('%H:%M:%S')} UTC"]
    tracked = conntrack.counters(lab.sensor)
    summary.append(f"sensor conntrack: {tracked}")
    listening = lab.sensor.cmd("ss", "-ltn", check=False)
    (where / "ss-listen.txt").write_text(listening)
    queued = [line for line in listening.splitlines()[1:] if line.split()[1:2] != ["0"]]
    summary.append(f"listening sockets with connections queued (Recv-Q > 0): {len(queued)}")
    for host, name in ((lab.sensor, "sensor"), (lab.attacker, "attacker")):
        states = states_of(host)
        summary.append(f"{name} sockets by state: {states}")
    (where / "nfqueue.txt").write_text(
        lab.sensor.cmd("cat", "/proc/net/netfilter/nfnetlink_queue", check=False))
    kernel = run(["dmesg", "-T"])
    (where / "dmesg.txt").write_text("\n".join(
        line for line in kernel.splitlines()[-2000:] if "nf_" in line or "conntrack" in line))
    try:
        (where / "metrics.txt").write_text(metrics_text(lab, METRICS_PORT))
    except OSError as exc:
        summary.append(f"metrics: {exc}")
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    for pid in descendants(master):
        name = role(pid, master)
        status = proc_line(pid, "status", "State:")
        wchan = proc_text(pid, "wchan")
        summary.append(f"pid {pid} {name}: {status} wchan {wchan}")
        (where / f"py-spy-{name}-{pid}.txt").write_text(
            run([py_spy, "dump", "--nonblocking", "--pid", str(pid)]))
    (where / "summary.txt").write_text("\n".join(summary) + "\n")


def states_of(host: Host) -> dict[str, int]:
    """The host's TCP sockets counted by state (`ss -tan`)."""
    counts: dict[str, int] = {}
    for line in host.cmd("ss", "-tan", check=False).splitlines()[1:]:
        state = line.split()[0] if line.split() else "?"
        counts[state] = counts.get(state, 0) + 1
    return counts


def run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CAPTURE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}\n"
    return proc.stdout + proc.stderr


def proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text().strip()
    except OSError:
        return "?"


def proc_line(pid: int, name: str, prefix: str) -> str:
    for line in proc_text(pid, name).splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    return "?"


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
