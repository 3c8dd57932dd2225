"""The recorder's memory under a steady load: the real recorder process, fed attacks at a pace.

bench/recorder.py measures the recorder's CPU per attack; this runs the same recorder (forked as
the master forks it, SaveFile + logAttacker + logJSON on a fresh filesystem) for --seconds at
--rate attacks a second, sent every --flush-ms as a dynamic server sends them, each attack made
when it is due (its times the clock's, its source port the next of a cycle, as the soak's load
makes them), and samples the recorder's memory every --sample seconds: smaps_rollup's Pss, Rss,
Private_Dirty, Shared_Dirty, Shared_Clean and Anonymous (KiB). A growth of Pss is then told
apart: Private_Dirty up by what Shared_* lose is the recorder writing on pages it shares with
the process that forked it (copy on write), bounded by that process's heap; Private_Dirty up
alone is its own heap.

--probe also asks the recorder itself, at each sample, from a thread of its own (a request on a
socketpair; the reply is JSON): sys.getallocatedblocks(), the garbage collector's counts and
collections, glibc's mallinfo2 (arena bytes, in use, free) and, with --census, the live
container objects by type (gc.get_objects(): it takes a reference to each, which writes on
every page that holds one, so the Pss figures of such a run are not the plain ones). With
--tracemalloc N (frames kept per allocation), tracemalloc runs in the recorder from its fork
on and each probe dumps a snapshot; at the end the top growth between the first probe after
--warmup and the last is printed, by line. Both cost CPU: use them to find what grows, and a
plain run to measure how much.

    .venv/bin/python bench/recordermemory.py --seconds 300 --rate 4000
    .venv/bin/python bench/recordermemory.py --seconds 300 --probe --census
    .venv/bin/python bench/recordermemory.py --seconds 300 --probe --tracemalloc 8

Same PYTHONPATH and --plugin-dir form as bench/recorder.py for another checkout.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import selectors
import socket
import statistics
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from recorder import PAYLOAD_BYTES, REPO, config, ready_link
from workdir import work_directory

from honeytrap import heaptrim, privileges, recorder, wire
from honeytrap.attack import Attack, Connection, DialogueRecord, Mode, Payload
from honeytrap.plugin import load_plugins
from honeytrap.recorderlink import max_frame

SMAPS_FIELDS = ("Rss", "Pss", "Private_Dirty", "Shared_Dirty", "Shared_Clean", "Anonymous")
# The soak's load cycles over this many source ports (an attacker's ephemeral range, roughly).
SOURCE_PORTS = 28000
# A probe's reply waits this long at most (a census of a few hundred thousand objects: ~0.1 s).
PROBE_TIMEOUT = 30.0
# Lines of tracemalloc's growth printed at the end.
TOP_LINES = 15
# Attacks sent and not yet acknowledged at most, as a server holds back past its
# unacknowledged_limit: a recorder slower than --rate (under tracemalloc) is fed at its pace.
MAX_IN_FLIGHT = 4096
# At the end, the last acknowledgements are waited for this long at most.
SETTLE_SECONDS = 60.0


def smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in SMAPS_FIELDS:
            out[name] = int(rest.split()[0])
    out.update(anonymous_by_kind(pid))
    return out


def vmas(pid: int) -> dict[str, tuple[int, int, str]]:
    """Each anonymous or heap mapping by its range: (size, Rss) in KiB and its permissions."""
    out: dict[str, tuple[int, int, str]] = {}
    current: list[Any] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):
            path = fields[5] if len(fields) > 5 else ""
            start = fields[0].split("-")[0]  # a mapping grows at its end: its key is its start
            current = [start, 0, fields[1]] if path in ("", "[heap]") else None
            if current is not None and path:
                current[0] += " [heap]"
        elif current is not None and fields[0] == "Size:":
            current[1] = int(fields[1])
        elif current is not None and fields[0] == "Rss:":
            out[current[0]] = (current[1], int(fields[1]), current[2])
    return out


def vma_growth(old: dict[str, tuple[int, int, str]], new: dict[str, tuple[int, int, str]]
               ) -> None:
    """The mappings whose Rss grew (or that are new) most, between two vmas()."""
    grown = sorted(((rss - old.get(key, (0, 0, ""))[1], key, size, perms)
                    for key, (size, rss, perms) in new.items()), reverse=True)
    gone = sum(rss for key, (_size, rss, _p) in old.items() if key not in new)
    print(f"# mappings' Rss growth (KiB; {gone} KiB in mappings gone since):")
    for grew, key, size, perms in grown[:TOP_LINES]:
        if grew:
            print(f"  {grew:+7} {key} {perms} size {size}{'' if key in old else ' (new)'}")


def anonymous_by_kind(pid: int) -> dict[str, int]:
    """Rss (KiB) of the main heap ([heap]: brk, glibc's main arena) and of the other anonymous
    mappings (pymalloc's arenas, glibc's thread arenas, the threads' stacks: told apart by the
    recorder's own figures, --probe, not here: adjacent mappings merge)."""
    out = {"rss_heap": 0, "rss_anon_mmaps": 0}
    kind: str | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's first line: range perms offset dev inode
            path = fields[5] if len(fields) > 5 else ""
            kind = "rss_heap" if path == "[heap]" else None if path else "rss_anon_mmaps"
        elif fields[0] == "Rss:" and kind is not None:
            out[kind] += int(fields[1])
    return out


# --- inside the recorder --------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> dict[str, int]:
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    function.restype = _Mallinfo2
    info = function()
    return {"malloc_arena": info.arena, "malloc_in_use": info.uordblks,
            "malloc_free": info.fordblks, "malloc_mmapped": info.hblkhd}


# sys._debugmallocstats()'s lines about pymalloc's arenas, and our names for their figures.
PYMALLOC_LINES = {"# arenas allocated total": "pyarenas_made",
                  "# arenas reclaimed": "pyarenas_freed",
                  "# arenas highwater mark": "pyarenas_highwater",
                  "# arenas allocated current": "pyarenas_now",
                  "# bytes in allocated blocks": "pymalloc_in_use",
                  "# bytes in available blocks": "pymalloc_free_blocks"}


def _pymalloc(dump_dir: Path) -> dict[str, int]:
    """pymalloc's arenas and blocks: sys._debugmallocstats() writes them on the C stderr, which
    is pointed at a file meanwhile (a line another thread logs then goes there too)."""
    path = dump_dir / "mallocstats.txt"
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "w") as out:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    figures = {}
    for line in path.read_text().splitlines():
        head, _, value = line.partition("=")
        head = head.strip()
        if head in PYMALLOC_LINES:
            figures[PYMALLOC_LINES[head]] = int(value.strip().replace(",", ""))
        elif head.endswith("unused pools * 16384 bytes"):
            figures["pymalloc_unused_pools"] = int(value.strip().replace(",", ""))
    return figures


def _probe(census: bool, dump_dir: Path, count: int) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "blocks": sys.getallocatedblocks(), "gc_count": gc.get_count(),
        "gc_collections": [s["collections"] for s in gc.get_stats()],
        "gc_frozen": gc.get_freeze_count(), "threads": threading.active_count(), **_mallinfo(),
        **_pymalloc(dump_dir)}
    if census:
        objects = gc.get_objects()
        reply["objects"] = len(objects)
        reply["by_type"] = collections.Counter(type(o).__qualname__ for o in objects)
        del objects
    if tracemalloc.is_tracing():
        reply["traced"] = tracemalloc.get_traced_memory()[0]
        path = dump_dir / f"trace-{count}.snapshot"
        tracemalloc.take_snapshot().dump(str(path))
        reply["snapshot"] = str(path)
    return reply


def _serve_probes(sock: socket.socket, census: bool, dump_dir: Path) -> None:
    count = 0
    while sock.recv(1):
        count += 1
        sock.sendall(json.dumps(_probe(census, dump_dir, count)).encode() + b"\n")


def _instrument(probe_end: socket.socket | None, census: bool, dump_dir: Path,
                frames: int) -> None:
    """Make the forked recorder start tracemalloc (at once) and a probe thread (once its loop
    runs: after heaptrim.limit_arenas, as its own threads)."""
    main = recorder.recorder_main
    run = recorder.Recorder.run

    def traced_main(spec: recorder.RecorderSpec) -> int:
        if frames:
            tracemalloc.start(frames)
        return main(spec)

    def probed_run(self: recorder.Recorder) -> None:
        if probe_end is not None:
            threading.Thread(target=_serve_probes, args=(probe_end, census, dump_dir),
                             name="probe", daemon=True).start()
        run(self)

    recorder.recorder_main = traced_main
    recorder.Recorder.run = probed_run  # type: ignore[method-assign]


# --- this process: the load and the samples ---------------------------------------------------


def attack_frame(seq: int, now: float, frame_limit: int) -> bytes:
    payload = Payload((b"BENCH" * (PAYLOAD_BYTES // 5 + 1))[:PAYLOAD_BYTES])
    conn = Connection("tcp", "192.0.2.1", 4444, "198.51.100.7",
                      1024 + seq % SOURCE_PORTS, payload)
    dialogue = DialogueRecord("raw", (PAYLOAD_BYTES, -1), Payload(b"\n"), {"sends": 1})
    attack = Attack(conn, mode=Mode.NORMAL, start_time=now - 0.01, end_time=now,
                    dialogue=dialogue)
    return wire.encode_attack(seq, attack, max_frame=frame_limit)


class Load:
    """Attacks sent at `rate` a second, those due every `flush` seconds, acknowledgements read."""

    def __init__(self, link: socket.socket, rate: float, flush: float, frame_limit: int) -> None:
        self.link = link
        link.setblocking(False)
        self.rate, self.flush, self.frame_limit = rate, flush, frame_limit
        self.reader = wire.FrameReader()
        self.out = bytearray()
        self.sent = self.acked = self.skipped = 0
        self.began = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.selector.register(link, selectors.EVENT_READ)

    def run_until(self, until: float, send: bool = True) -> None:
        while (now := time.monotonic()) < until and (send or self.acked < self.sent):
            if send:
                due = int((now - self.began) * self.rate) - self.skipped
                if due - self.sent > MAX_IN_FLIGHT:  # held back: those are not sent later
                    self.skipped += due - self.sent - MAX_IN_FLIGHT
                    due = self.sent + MAX_IN_FLIGHT
                wall = time.time()
                while self.sent < due and self.sent - self.acked < MAX_IN_FLIGHT:
                    self.sent += 1
                    self.out += attack_frame(self.sent, wall, self.frame_limit)
            try:
                while self.out:
                    del self.out[: self.link.send(self.out)]
            except BlockingIOError:
                pass
            self.selector.modify(self.link, selectors.EVENT_READ
                                 | (selectors.EVENT_WRITE if self.out else 0))
            for _key, events in self.selector.select(timeout=min(self.flush, until - now)):
                if events & selectors.EVENT_READ:
                    data = self.link.recv(1 << 20)
                    if not data:
                        raise RuntimeError("the recorder closed the link")
                    self.acked += sum(1 for kind, _s, _a in self.reader.feed(data)
                                      if kind == "ack")
            if send:
                time.sleep(max(0.0, self.flush - (time.monotonic() - now)))


def drain_channel(handle: recorder.RecorderHandle) -> None:
    """The recorder's stats messages to the master, read and dropped (as the master reads
    them), so that its control channel never fills."""
    handle.channel.sock.setblocking(False)
    try:
        while handle.channel.sock.recv(1 << 16):
            pass
    except BlockingIOError:
        pass


def ask(probe: socket.socket) -> dict[str, Any]:
    probe.sendall(b"?")
    data = b""
    probe.settimeout(PROBE_TIMEOUT)
    while not data.endswith(b"\n"):
        piece = probe.recv(1 << 20)
        if not piece:
            raise RuntimeError("the probe thread closed")
        data += piece
    return dict(json.loads(data))


def run(args: argparse.Namespace, directory: Path) -> list[dict[str, Any]]:
    cfg = config(directory, args.plugin_dir)
    registry = load_plugins(cfg)
    mine: socket.socket | None = None
    theirs: socket.socket | None = None
    if args.probe or args.tracemalloc:
        mine, theirs = socket.socketpair()
    _instrument(theirs, args.census, directory, args.tracemalloc)
    handle = recorder.fork_recorder(cfg, registry, privileges.Identity(None, None),
                                    [mine.fileno()] if mine is not None else [])
    if handle is None:
        raise RuntimeError("the recorder could not be forked")
    registry.close()
    if theirs is not None:
        theirs.close()
    samples: list[dict[str, Any]] = []
    try:
        link = ready_link(handle)
        load = Load(link, args.rate, args.flush_ms / 1000, max_frame(cfg))
        began = time.monotonic()
        next_sample = began
        first_vmas: dict[str, tuple[int, int, str]] | None = None
        while time.monotonic() < began + args.seconds:
            load.run_until(min(next_sample, began + args.seconds))
            if time.monotonic() < next_sample:
                continue
            next_sample += args.sample
            drain_channel(handle)
            sample: dict[str, Any] = {"t": round(time.monotonic() - began, 1),
                                      "sent": load.sent, "acked": load.acked,
                                      "skipped": load.skipped,
                                      **smaps(handle.pid)}
            if mine is not None:
                sample.update(ask(mine))
            samples.append(sample)
            if first_vmas is None and sample["t"] >= args.warmup:
                first_vmas = vmas(handle.pid)
            print(json.dumps({k: v for k, v in sample.items() if k != "by_type"}), flush=True)
        if first_vmas is not None:
            vma_growth(first_vmas, vmas(handle.pid))
        load.run_until(time.monotonic() + SETTLE_SECONDS, send=False)
        if load.acked != load.sent:
            raise RuntimeError(f"{load.acked} of {load.sent} attacks acknowledged")
        if load.skipped:
            print(f"# {load.skipped} attacks not sent: the recorder was over {MAX_IN_FLIGHT} "
                  "behind")
        link.close()
        handle.stop()
        os.waitpid(handle.pid, 0)
    except BaseException:
        os.kill(handle.pid, 9)
        os.waitpid(handle.pid, 0)
        raise
    finally:
        handle.channel.close()
        if mine is not None:
            mine.close()
    return samples


def report(samples: list[dict[str, Any]], warmup: float) -> None:
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 2:
        print("too short a run for a report")
        return
    first, last = after[0], after[-1]
    span = last["t"] - first["t"]
    print(f"# from {first['t']:.0f} s to {last['t']:.0f} s ({last['sent'] - first['sent']} "
          f"attacks): growth, KiB (KiB/s)")
    for name in (*SMAPS_FIELDS, "rss_heap", "rss_anon_mmaps", "blocks", "objects", "traced",
                 "malloc_arena", "malloc_in_use", "malloc_free", "pyarenas_now",
                 "pyarenas_highwater", "pyarenas_made",
                 "pymalloc_in_use", "pymalloc_free_blocks", "pymalloc_unused_pools"):
        if name in first and name in last:
            grown = last[name] - first[name]
            if name.startswith(("traced", "malloc_", "pymalloc_")):
                grown //= 1024
            print(f"{name:>14}: {first[name]:>10} -> {last[name]:>10}  {grown:+8} "
                  f"({grown / span:+.2f}/s)")
    pss = [s["Pss"] for s in after]
    print(f"Pss median {statistics.median(pss)} KiB, min {min(pss)} max {max(pss)}")
    if "by_type" in first and "by_type" in last:
        grown_types = collections.Counter(last["by_type"])
        grown_types.subtract(first["by_type"])
        print("objects grown by type:", grown_types.most_common(TOP_LINES))
    if "snapshot" in first and "snapshot" in last:
        old = tracemalloc.Snapshot.load(first["snapshot"])
        new = tracemalloc.Snapshot.load(last["snapshot"])
        for stat in new.compare_to(old, "traceback")[:TOP_LINES]:
            print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7} blocks")
            for line in stat.traceback.format()[-8:]:
                print("    " + line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--rate", type=float, default=4000.0)
    parser.add_argument("--flush-ms", type=float, default=5.0)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds before the first sample the report compares")
    parser.add_argument("--probe", action="store_true",
                        help="ask the recorder for its allocator's and collector's figures")
    parser.add_argument("--census", action="store_true",
                        help="with --probe: live container objects by type (perturbs Pss)")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace allocations in the recorder, this many frames each")
    parser.add_argument("--arenas", type=int, default=0,
                        help="malloc arenas the recorder's threads share (heaptrim."
                        "RECORDER_ARENAS; 0: its value)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-fresh-fs", action="store_true")
    parser.add_argument("--plugin-dir", default=str(REPO / "plugins"))
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args(argv)
    args.probe = args.probe or args.census
    if args.arenas:
        heaptrim.RECORDER_ARENAS = args.arenas  # read by recorder_main in the child
    load = os.getloadavg()[0]
    with work_directory(args.workdir.resolve(), not args.no_fresh_fs) as wd:
        directory = wd.path / "rep"
        directory.mkdir()
        samples = run(args, directory)
        if args.tracemalloc:
            report(samples, args.warmup)  # the snapshots are in the work directory
    print(f"# recorder at {args.rate:.0f}/s sent every {args.flush_ms:g} ms for "
          f"{args.seconds:.0f} s (load {load:.2f} -> {os.getloadavg()[0]:.2f})")
    if not args.tracemalloc:
        report(samples, args.warmup)
    if args.json:
        args.json.write_text(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
