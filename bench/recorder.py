"""The recorder's CPU per attack: the real recorder process, fed encoded attacks over a link.

The recorder (honeytrap/recorder.py) is forked as the master forks it (fork_recorder), with
SaveFile, logAttacker and logJSON on (bench/run.py's configuration) writing to a fresh
filesystem (bench/workdir.py). This process plays a dynamic server: it sends --attacks attack
frames (200-byte payloads, a raw dialogue record, as a server in normal mode hands them over) in
bursts of --window in flight, reads the acknowledgements until every attack is acknowledged,
then stops the recorder and takes its CPU time (user + system, from wait4). That is what the
recorder spends per attack, decoding, hooks, outputs and acknowledgements included, and none of
what the server side costs. Reps run in turn, each with a new recorder and directory; medians
with min-max are printed (--json: the raw figures).

    .venv/bin/python bench/recorder.py [--attacks 20000] [--reps 5] [--workdir /var/tmp]
    .venv/bin/python bench/recorder.py --rate 4000 --flush-ms 5   # at a server's pace

By default the frames go as fast as they are acknowledged, in large sends. --rate alone sends
each as it is due; with --flush-ms, those due go in one send every so many ms, as a dynamic
server sends them (FLUSH_DELAY): each send then finds the recorder idle since the last one, its
loop and a worker wake for a few attacks in caches other processes used meanwhile, and that
costs far more per attack (issue 13, no plugins, 4,000/s on the busy 2-core machine: ~25 us
sent every 5 ms, against ~10 us in large sends or one by one as due). It is what the daemon's
recorder sees below its full speed.

honeytrap is imported from PYTHONPATH (or the installed one), so the same script measures
another checkout: PYTHONPATH=/path/to/checkout, --plugin-dir its plugins. A/B: run it for each
checkout in turn (old, new, old, new...).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path

from workdir import work_directory

from honeytrap import privileges, wire
from honeytrap.attack import Attack, Connection, DialogueRecord, Mode, Payload
from honeytrap.config import Config, PluginSpec
from honeytrap.plugin import load_plugins
from honeytrap.recorder import RecorderHandle, fork_recorder, max_frame

REPO = Path(__file__).resolve().parent.parent
# The load bench/run.py sends: a 200-byte payload per connection, answered with a newline.
PAYLOAD_BYTES = 200
DEFAULT_ATTACKS = 20000
DEFAULT_REPS = 5
# Attacks in flight (sent, not yet acknowledged) at once: a server's unacknowledged window
# under load is of this order (bench/run.py: 64 connections in flight, a few loop iterations).
DEFAULT_WINDOW = 256
# A rep that does not finish in this long is a recorder stall (issue 13's ack stall).
REP_TIMEOUT = 300.0


def frames(count: int, frame_limit: int) -> list[bytes]:
    start = time.time()
    made = []
    for n in range(count):
        payload = Payload(bytes((n + i) % 251 for i in range(PAYLOAD_BYTES)))
        conn = Connection("tcp", "192.0.2.1", 4444, "198.51.100.7", 40000 + n % 20000, payload)
        dialogue = DialogueRecord("raw", (PAYLOAD_BYTES, -1), Payload(b"\n"), {"sends": 1})
        attack = Attack(conn, mode=Mode.NORMAL, start_time=start + n * 1e-4,
                        end_time=start + n * 1e-4 + 0.01, dialogue=dialogue)
        made.append(wire.encode_attack(n + 1, attack, max_frame=frame_limit))
    return made


def config(directory: Path, plugin_dir: str, outputs: bool = True) -> Config:
    cfg = Config(plugin_dir=plugin_dir)
    if not outputs:  # the recorder's own cost: decoding, the pipeline, acknowledgements
        return cfg
    cfg.plugins = [
        PluginSpec("SaveFile", {"attacks_dir": str(directory / "attacks"),
                                "downloads_dir": str(directory / "downloads")}),
        PluginSpec("logAttacker", {"logfile": str(directory / "attacker.log")}),
        PluginSpec("logJSON", {"logfile": str(directory / "attackers.json")}),
    ]
    return cfg


def ready_link(handle: RecorderHandle) -> socket.socket:
    """The forked recorder's link once it said it is ready (RuntimeError if it did not)."""
    if not handle.wait_ready():
        raise RuntimeError("the recorder did not say ready")
    link = handle.link()
    if link is None:
        raise RuntimeError("no link to the recorder")
    return link


def run_rep(directory: Path, count: int, window: int, plugin_dir: str,
            outputs: bool = True, rate: float = 0.0, flush: float = 0.0) -> tuple[float, float]:
    """CPU seconds the recorder spent on `count` attacks: user, system."""
    cfg = config(directory, plugin_dir, outputs)
    registry = load_plugins(cfg)
    batch = frames(count, max_frame(cfg))
    handle = fork_recorder(cfg, registry, privileges.Identity(None, None), [])
    if handle is None:
        raise RuntimeError("the recorder could not be forked")
    registry.close()  # the recorder has its own copy of the plugins' descriptors
    try:
        link = ready_link(handle)
        acked = _feed(link, batch, window, rate, flush)
        link.close()
        if acked != count:
            raise RuntimeError(f"{acked} of {count} attacks acknowledged")
        handle.stop()
        _pid, status, usage = os.wait4(handle.pid, 0)
    except BaseException:
        os.kill(handle.pid, 9)
        os.waitpid(handle.pid, 0)
        raise
    finally:
        handle.channel.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the recorder exited with status {status}")
    return usage.ru_utime, usage.ru_stime


def _feed(link: socket.socket, batch: list[bytes], window: int, rate: float = 0.0,
          flush: float = 0.0) -> int:
    """Send the frames, at most `window` unacknowledged (and with `rate`, no more than `rate`
    per second, as connections end on a server; with `flush` too, those due only every `flush`
    seconds, as a server sends them); return how many were acknowledged."""
    link.setblocking(False)
    reader = wire.FrameReader()
    selector = selectors.DefaultSelector()
    selector.register(link, selectors.EVENT_READ)
    out = bytearray()
    sent = acked = 0
    began = time.monotonic()
    deadline = began + REP_TIMEOUT
    tick = began  # with flush: when the frames due go next
    due = 0
    while acked < len(batch):
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"stalled: {acked} of {len(batch)} acknowledged")
        if rate <= 0:
            due = len(batch)
        elif flush <= 0 or now >= tick:
            due = min(len(batch), int((now - began) * rate) + 1)
            while tick <= now:
                tick += flush if flush > 0 else 1.0
        while sent < due and sent - acked < window:
            out += batch[sent]
            sent += 1
        try:
            while out:
                del out[: link.send(out)]
        except BlockingIOError:
            pass
        selector.modify(link, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
        wait = (1.0 if rate <= 0 else max(0.0, tick - time.monotonic()) if flush > 0
                else 1.0 if sent == due else 1 / rate)
        for _key, events in selector.select(timeout=wait):
            if events & selectors.EVENT_READ:
                data = link.recv(1 << 20)
                if not data:
                    raise RuntimeError("the recorder closed the link")
                acked += sum(1 for kind, _seq, _a in reader.feed(data) if kind == "ack")
    selector.close()
    return acked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", type=int, default=DEFAULT_ATTACKS)
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-fresh-fs", action="store_true")
    parser.add_argument("--plugin-dir", default=str(REPO / "plugins"))
    parser.add_argument("--rate", type=float, default=0.0,
                        help="attacks sent per second at most (0: as fast as acknowledged)")
    parser.add_argument("--flush-ms", type=float, default=0.0,
                        help="with --rate: send the attacks due every this many ms in one "
                        "send, as a server does (recorderlink.FLUSH_DELAY is 5)")
    parser.add_argument("--no-outputs", action="store_true",
                        help="no plugins: the recorder's own cost per attack")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    micros: list[float] = []
    # The split: system time is mostly the kernel creating SaveFile's file per attack (the
    # run's calibration line in bench/run.py says what one costs), user time the Python.
    user: list[float] = []
    system: list[float] = []
    load = os.getloadavg()[0]
    with work_directory(args.workdir.resolve(), not args.no_fresh_fs) as wd:
        for rep in range(args.reps):
            directory = wd.path / f"rep-{rep}"
            directory.mkdir()
            utime, stime = run_rep(directory, args.attacks, args.window, args.plugin_dir,
                                   not args.no_outputs, args.rate, args.flush_ms / 1000)
            user.append(utime / args.attacks * 1e6)
            system.append(stime / args.attacks * 1e6)
            micros.append(user[-1] + system[-1])
        fresh = "fresh filesystem" if wd.fresh_fs else f"not fresh: {wd.why}"
    what = "no plugins" if args.no_outputs else "SaveFile, logAttacker, logJSON"
    pace = f", at most {args.rate:.0f}/s" if args.rate > 0 else ""
    if args.rate > 0 and args.flush_ms > 0:
        pace += f" sent every {args.flush_ms:g} ms"
    print(f"# recorder ({what}), {args.attacks} attacks x {args.reps} reps, window {args.window}"
          f"{pace} "
          f"({fresh}; load {load:.2f} -> {os.getloadavg()[0]:.2f})")
    print(f"recorder CPU per attack: median {statistics.median(micros):.1f} us  "
          f"min {min(micros):.1f} max {max(micros):.1f} (user {statistics.median(user):.1f}, "
          f"system {statistics.median(system):.1f})")
    if args.json:
        print(json.dumps({"us_per_attack": micros, "user_us": user, "system_us": system,
                          "fresh_fs": wd.fresh_fs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
