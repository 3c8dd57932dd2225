"""The honeytrap benchmark, one command, as root:  python bench/run.py [--quick]

Makes its own attacker and sensor network namespaces (tests/netns.py), queues new SYNs to NFQUEUE
in the sensor as the README says, and measures, each beside a baseline measured in the same run
on the same ports in the same sensor namespace (bench/baseline.py: banner, read, one JSON line
per connection; honeytrap is not running then):

  (a) connections/s with a 200-byte payload and half-close, on one port and across a port sweep,
      and the records written vs the connections completed (attackers.json lines for honeytrap);
  (b) idle connections held at once: how many were served (got the banner), and the total PSS of
      the server's processes (honeytrap: the master and all its children);
  (c) the time from the first SYN to a fresh port until connect() completes, p50/p99.

honeytrap is the real daemon (`python -m honeytrap`, nfq monitor) with SaveFile, logAttacker and
logJSON on. The load generator (bench/loadgen.py) runs in the attacker namespace, in the same
number of processes against both servers. Results: a markdown table printed and written to
bench/results/ (with the raw figures as JSON).

The daemon's files (one per attack: SaveFile) go in a work directory made in --workdir (default
/var/tmp, not /tmp: see bench/README.md) and removed at the end. By default it is a filesystem of
its own, so that what the machine's disk did before (deletions by earlier runs and tests) does not
weigh on the figures: a sparse FRESH_FS_BYTES image file in --workdir, formatted ext4 with its
journal and loop-mounted (bench/workdir.py), unmounted and deleted at the end, also on errors,
Ctrl-C and SIGTERM. --no-fresh-fs makes a plain directory instead; where the loop mount cannot be
made, the run says why on stderr and does the same. Before the phases, the run times creating,
writing and closing CALIBRATION_FILES small files there and reports the mean, the filesystem and
whether it was fresh: what one attack's file costs there, which the baseline never pays.
--only runs some of the phases (one_port, sweep, idle, latency).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from daemon import Honeytrap, nfq_rules  # noqa: E402
from netns import Lab  # noqa: E402
from workdir import (  # noqa: E402
    DAEMON_GROUP,
    DAEMON_USER,
    FRESH_FS_BYTES,
    WorkDir,
    filesystem,
    journal,
    problem,
    work_directory,
)

from honeytrap.templates import load_template  # noqa: E402

PYTHON = sys.executable
# The ports measured: a port without a template (honeytrap answers a newline, so does the
# baseline), a sweep range and a range of fresh ports for the latency test, all unserved.
ONE_PORT = 4444
SWEEP_BASE = 20000
FRESH_BASE = 40000
# Load generator processes: the machine has 2 cores; both servers face the same load.
LOADGEN_PROCS = 2
CONCURRENCY = 100  # connections in flight per load generator process
# honeytrap's configuration for the load (its needs, as an operator would set them).
HONEYTRAP_CONFIG = """
max_servers = "1100"
max_server_rate = "2000"
max_connections = "20000"
"""
# Read timeout of the idle test (-r): the banner goes out after one read timeout and idle
# connections close after 11, so this keeps them open while they are counted and measured.
IDLE_READ_TIMEOUT = 5.0
# Each phase is bounded: the load generators stop after this long.
PHASE_DEADLINE = 180.0
# honeytrap logs at its default level, as an operator runs it (the tests' harness says -t 6).
LOGLEVEL = 3
# The targets of the issue, as ratios to the baseline.
TARGET_THROUGHPUT = 0.6
TARGET_PSS = 2.0
# The phases, in the order they run (--only picks some).
PHASES = ("one_port", "sweep", "idle", "latency")
# Where the work directory is made by default. Not /tmp: test runs create and delete many files
# there, and an ext4 without a journal then spends up to ~1 ms per file creation skipping the
# recently deleted inodes (find_inode_bit -> recently_deleted), a machine-state cost the
# baseline (no files) never pays. bench/README.md has the figures.
DEFAULT_WORKDIR_PARENT = Path("/var/tmp")
# The filesystem calibration: this many files of this size (the throughput phases' payload),
# created, written and closed as SaveFile does, in a scratch directory of the work directory.
# 2,000 gives a stable mean in well under a second on a fresh ext4 directory.
CALIBRATION_FILES = 2000
CALIBRATION_BYTES = 200
# SaveFile's flags and mode for an attack file (honeytrap/outfile.py).
CALIBRATION_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
CALIBRATION_MODE = 0o644


@dataclass(frozen=True)
class Sizes:
    one_port: int  # connections to one port
    sweep_ports: int
    sweep_conns: int
    idle: tuple[int, ...]
    fresh_ports: int


FULL = Sizes(20000, 1000, 5000, (5000, 15000), 200)
QUICK = Sizes(300, 50, 100, (300,), 20)


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
    """Total PSS of a process and all its descendants, in KiB (smaps_rollup)."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Bench:
    def __init__(self, lab: Lab, workdir: Path, sizes: Sizes) -> None:
        self.lab = lab
        self.workdir = workdir
        self.sizes = sizes
        self.address = lab.sensor.ip4
        self.banner = load_template(str(REPO / "templates"), "tcp", ONE_PORT)
        self.runs = 0

    # --- servers ---

    def baseline(self, port: int, ports: int) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        out = self.workdir / f"baseline-{self.runs}.json"
        proc = self.lab.spawn(
            self.lab.sensor,
            [PYTHON, str(BENCH / "baseline.py"), "--port", str(port), "--ports", str(ports),
             "--banner-hex", self.banner.hex(), "--out", str(out)],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the baseline server did not start")
        return proc, out

    def stop_baseline(self, proc: subprocess.Popen[bytes], out: Path) -> int:
        proc.terminate()
        proc.wait(30)
        return len(out.read_text().splitlines()) if out.exists() else 0

    def honeytrap(self, read_timeout: float = 1.0) -> Honeytrap:
        self.runs += 1
        ht = Honeytrap(
            self.lab, self.workdir / f"honeytrap-{self.runs}",
            args=["-u", DAEMON_USER, "-g", DAEMON_GROUP, "-l", "600", "-r", str(read_timeout),
                  "-t", str(LOGLEVEL)],
            extra_config=HONEYTRAP_CONFIG,
        )
        return ht.start()

    def stop_honeytrap(self, ht: Honeytrap) -> dict[str, int]:
        """SIGTERM (honeytrap finishes every attack in flight), then count its three outputs."""
        code = ht.stop(timeout=120)
        files = len(os.listdir(ht.attacks_dir)) if ht.attacks_dir.exists() else 0
        log_lines = (
            len(ht.attacker_log.read_text().splitlines()) if ht.attacker_log.exists() else 0
        )
        return {"exit": code, "json": len(ht.records()), "log": log_lines, "files": files}

    # --- load ---

    def loadgen(self, *argv: str, stdin: bool = False) -> subprocess.Popen[bytes]:
        return self.lab.spawn(
            self.lab.attacker,
            [PYTHON, str(BENCH / "loadgen.py"), *argv, "--address", self.address,
             "--deadline", str(PHASE_DEADLINE)],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        )

    def burst(self, port: int, ports: int, count: int) -> dict[str, float]:
        procs = [
            self.loadgen(
                "burst", "--port", str(port), "--ports", str(ports),
                "--count", str(count // LOADGEN_PROCS + (i < count % LOADGEN_PROCS)),
                "--concurrency", str(CONCURRENCY), "--offset", str(i),
                "--stride", str(LOADGEN_PROCS),
            )
            for i in range(LOADGEN_PROCS)
        ]
        results = [json.loads(p.communicate(timeout=PHASE_DEADLINE + 30)[0]) for p in procs]
        total = {k: sum(r[k] for r in results) for k in ("completed", "failed", "timeout")}
        elapsed = max(r["elapsed"] for r in results)
        return {**total, "elapsed": elapsed, "rate": total["completed"] / elapsed}

    def idle(self, count: int, server_pid: int) -> dict[str, float]:
        procs = [
            self.loadgen(
                "idle", "--port", str(ONE_PORT),
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
        pss = pss_kib(server_pid)
        processes = len(descendants(server_pid))
        for p in procs:
            p.communicate(b"\n", timeout=60)
        served = sum(r["served"] for r in results)
        return {"served": served, "pss_kib": pss, "processes": processes}

    def latency(self, port: int, ports: int) -> list[float]:
        proc = self.loadgen("latency", "--port", str(port), "--ports", str(ports))
        result = json.loads(proc.communicate(timeout=PHASE_DEADLINE + 30)[0])
        return list(result["samples_ms"])

    # --- phases: each measures the baseline, then honeytrap ---

    def throughput(self, port: int, ports: int, count: int) -> dict[str, dict[str, float]]:
        proc, out = self.baseline(port, ports)
        base = self.burst(port, ports, count)
        base["records"] = self.stop_baseline(proc, out)
        ht = self.honeytrap()
        mine = self.burst(port, ports, count)
        outputs = self.stop_honeytrap(ht)
        mine["records"] = outputs["json"]
        mine.update({f"records_{k}": v for k, v in outputs.items()})
        return {"baseline": base, "honeytrap": mine}

    def idle_phase(self, count: int) -> dict[str, dict[str, float]]:
        proc, out = self.baseline(ONE_PORT, 1)
        base = self.idle(count, proc.pid)
        self.stop_baseline(proc, out)
        ht = self.honeytrap(read_timeout=IDLE_READ_TIMEOUT)
        mine = self.idle(count, ht.master_pid())
        self.stop_honeytrap(ht)
        return {"baseline": base, "honeytrap": mine}

    def latency_phase(self) -> dict[str, list[float]]:
        n = self.sizes.fresh_ports
        proc, out = self.baseline(FRESH_BASE, n)
        base = self.latency(FRESH_BASE, n)
        self.stop_baseline(proc, out)
        ht = self.honeytrap()
        mine = self.latency(FRESH_BASE, n)
        self.stop_honeytrap(ht)
        return {"baseline": base, "honeytrap": mine}

    def run(self, phases: Sequence[str]) -> dict[str, Any]:
        s = self.sizes
        results: dict[str, Any] = {}
        if "one_port" in phases:
            results["one_port"] = self.throughput(ONE_PORT, 1, s.one_port)
        if "sweep" in phases:
            results["sweep"] = self.throughput(SWEEP_BASE, s.sweep_ports, s.sweep_conns)
        if "idle" in phases:
            for count in s.idle:
                results[f"idle_{count}"] = self.idle_phase(count)
        if "latency" in phases:
            results["latency"] = self.latency_phase()
        return results


# --- the filesystem calibration ---------------------------------------------------------------


def calibrate(wd: WorkDir) -> dict[str, object]:
    """Time creating, writing and closing CALIBRATION_FILES files of CALIBRATION_BYTES in a
    scratch directory of the work directory, and say what filesystem that was. The files stay
    until the work directory goes at the end of the run: deleting them now would leave recently
    deleted inodes beside the daemon's files, the very cost this keeps out of the figures."""
    workdir = wd.path
    scratch = workdir / "calibration"
    scratch.mkdir()
    data = b"x" * CALIBRATION_BYTES
    samples = []
    dir_fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    cpu_start = time.thread_time()
    try:
        for i in range(CALIBRATION_FILES):
            start = time.perf_counter()
            fd = os.open(f"f{i}", CALIBRATION_FLAGS, CALIBRATION_MODE, dir_fd=dir_fd)
            os.write(fd, data)
            os.close(fd)
            samples.append((time.perf_counter() - start) * 1e6)
    finally:
        cpu = time.thread_time() - cpu_start
        os.close(dir_fd)
    return {
        "dir": str(workdir), "filesystem": filesystem(workdir), "journal": journal(workdir),
        "fresh_fs": wd.fresh_fs, "why": wd.why, "image": str(wd.image) if wd.image else None,
        "files": CALIBRATION_FILES, "bytes": CALIBRATION_BYTES,
        # CPU time (mostly the kernel's) is what weighs on a CPU-bound daemon, and unlike the
        # wall clock it does not count other processes' turns on a busy machine.
        "cpu_us": cpu * 1e6 / CALIBRATION_FILES,
        "mean_us": sum(samples) / len(samples),
        "p99_us": percentile(samples, 0.99),
    }


def filesystem_words(cal: dict[str, object]) -> str:
    """'ext4 with journal, fresh: ...' or 'ext4 without journal, not fresh: <why>'."""
    has_journal = ""
    if cal["journal"] is not None:
        has_journal = " with journal" if cal["journal"] else " without journal"
    if cal["fresh_fs"]:
        where = f"fresh: a loop-mounted image on {Path(str(cal['image'])).parent}"
    else:
        where = f"not fresh: {cal['why']}"
    return f"{cal['filesystem']}{has_journal}, {where}"


def calibration_line(cal: dict[str, object]) -> str:
    return (
        f"Work directory {cal['dir']} ({filesystem_words(cal)}): creating, writing "
        f"({cal['bytes']} B) and closing one file there cost {cal['cpu_us']:.0f} us of CPU on "
        f"average (wall clock: mean {cal['mean_us']:.0f} us, p99 {cal['p99_us']:.0f} us; "
        f"{cal['files']:,} files). honeytrap's SaveFile does this once per attack, the baseline "
        "never.\n"
    )


# --- the table ---------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Row = tuple[str, str, str, str, str]


def ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a else "-"


def throughput_rows(r: dict[str, dict[str, float]], label: str, met: dict[str, bool]) -> list[Row]:
    b, h = r["baseline"], r["honeytrap"]
    ok = h["rate"] >= TARGET_THROUGHPUT * b["rate"]
    met[f"throughput {label}"] = ok
    recorded = h["records"] == h["completed"]
    met[f"records {label}"] = recorded
    return [
        (f"connections/s, {label} (200 B, half-close)", f"{b['rate']:.0f}", f"{h['rate']:.0f}",
         ratio(b["rate"], h["rate"]), f">= {TARGET_THROUGHPUT}x: {'met' if ok else 'MISSED'}"),
        (f"completed / records, {label}", f"{b['completed']:.0f} / {b['records']:.0f}",
         f"{h['completed']:.0f} / {h['records']:.0f}", "",
         f"equal: {'met' if recorded else 'MISSED'}"),
    ]


def idle_rows(r: dict[str, dict[str, float]], count: int, first: bool,
              met: dict[str, bool]) -> list[Row]:
    b, h = r["baseline"], r["honeytrap"]
    all_served = h["served"] == count
    met[f"idle {count} served"] = all_served
    pss_ok = h["pss_kib"] <= TARGET_PSS * b["pss_kib"]
    target = ""
    if first:  # the PSS target is about the smaller idle count
        met[f"PSS {count} idle"] = pss_ok
        target = f"<= {TARGET_PSS}x: {'met' if pss_ok else 'MISSED'}"
    return [
        (f"idle connections served, {count:,}", f"{b['served']:.0f}", f"{h['served']:.0f}", "",
         f"all: {'met' if all_served else 'MISSED'}"),
        (f"PSS at {count:,} idle (MiB; processes)",
         f"{b['pss_kib'] / 1024:.1f} ({b['processes']:.0f})",
         f"{h['pss_kib'] / 1024:.1f} ({h['processes']:.0f})",
         ratio(b["pss_kib"], h["pss_kib"]), target),
    ]


def latency_rows(lat: dict[str, list[float]], sizes: Sizes) -> list[Row]:
    rows = []
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        b_ms, h_ms = percentile(lat["baseline"], q), percentile(lat["honeytrap"], q)
        rows.append((f"first SYN to accept, fresh port, {name} (ms; {len(lat['honeytrap'])} "
                     f"of {sizes.fresh_ports})", f"{b_ms:.2f}", f"{h_ms:.2f}",
                     ratio(b_ms, h_ms), ""))
    return rows


def table(results: dict[str, Any], sizes: Sizes) -> tuple[str, dict[str, bool]]:
    """The markdown table of the phases that ran, and whether each target was met."""
    rows: list[Row] = []
    met: dict[str, bool] = {}
    for key, label in (("one_port", "one port"), ("sweep", f"{sizes.sweep_ports}-port sweep")):
        if key in results:
            rows += throughput_rows(results[key], label, met)
    for count in sizes.idle:
        if f"idle_{count}" in results:
            rows += idle_rows(results[f"idle_{count}"], count, count == sizes.idle[0], met)
    if "latency" in results:
        rows += latency_rows(results["latency"], sizes)
    head = ("measurement", "baseline", "honeytrap", "ratio", "target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n", met


# --- the command -------------------------------------------------------------------------------


def phase_list(text: str) -> tuple[str, ...]:
    """--only's value: phase names, comma-separated, run in PHASES order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(PHASES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"phases are {', '.join(PHASES)}; not {', '.join(sorted(unknown)) or 'none'}"
        )
    return tuple(p for p in PHASES if p in names)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts (the CI mode)")
    parser.add_argument("--out", default=str(BENCH / "results"), help="where results go")
    parser.add_argument(
        "--workdir", metavar="DIR", type=Path, default=DEFAULT_WORKDIR_PARENT,
        help="make the run's work directory (the daemon's attack files and logs) in DIR, and "
             "remove it at the end; DIR and its parents must be enterable by nobody "
             f"(default: {DEFAULT_WORKDIR_PARENT})",
    )
    parser.add_argument(
        "--no-fresh-fs", dest="fresh_fs", action="store_false",
        help="make the work directory a plain directory in DIR, on DIR's filesystem, instead of "
             f"a fresh ext4 of its own (a {FRESH_FS_BYTES // 1024**3} GiB sparse image in DIR, "
             "loop-mounted)",
    )
    parser.add_argument("--only", metavar="PHASE[,PHASE]", type=phase_list, default=PHASES,
                        help=f"run only these phases ({', '.join(PHASES)})")
    return parser.parse_args()


def measure(sizes: Sizes, wd: WorkDir,
            phases: Sequence[str]) -> tuple[dict[str, object], dict[str, Any]]:
    """The calibration, then the phases, in a lab of their own."""
    calibration = calibrate(wd)
    lab = Lab.create()
    try:
        for host in (lab.attacker, lab.sensor):
            # Many short connections from one address: wide ephemeral range, TIME_WAIT reuse.
            host.cmd("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
            host.cmd("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        nfq_rules(lab.sensor)
        results = Bench(lab, wd.path, sizes).run(phases)
    finally:
        lab.close()
    return calibration, results


def write_results(out: Path, name: str, header: str, text: str, data: dict[str, object]) -> None:
    stamp = str(data["started"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-{name}-{stamp}.md").write_text(header + text)
    (out / f"bench-{name}-{stamp}.json").write_text(json.dumps(data, indent=1))
    (out / f"latest-{name}.json").write_text(json.dumps(data, indent=1))


def title(mode: str, phases: Sequence[str], started: str) -> str:
    only = "" if tuple(phases) == PHASES else f"{', '.join(phases)} only, "
    return f"# honeytrap benchmark ({mode} mode, {only}{started}, {os.cpu_count()} cores)\n\n"


def terminated(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM ends the run as Ctrl-C does: through the `finally`s, which unmount and delete the
    work directory's filesystem and remove the namespaces."""
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        sys.stderr.write("bench/run.py must run as root: it creates network namespaces\n")
        return 2
    parent = args.workdir.resolve()
    why_not = problem(parent)
    if why_not is not None:
        sys.stderr.write(f"bench/run.py: --workdir: {why_not}\n")
        return 2
    sizes = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    signal.signal(signal.SIGTERM, terminated)
    with work_directory(parent, args.fresh_fs) as wd:
        calibration, results = measure(sizes, wd, args.only)
    text, met = table(results, sizes)
    header = (title(mode, args.only, started)
              + "Baseline: bench/baseline.py on the same ports in the same sensor namespace.\n"
              + calibration_line(calibration) + "\n")
    data: dict[str, object] = {
        "mode": mode, "phases": list(args.only), "started": started,
        "calibration": calibration, "results": results, "targets_met": met,
    }
    # A partial run gets files of its own, so that it never stands in for a whole one.
    name = mode if args.only == PHASES else f"{mode}-{'+'.join(args.only)}"
    write_results(Path(args.out), name, header, text, data)
    sys.stdout.write(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
