"""Recording never waits for a download, through the real daemon in namespaces: a hundred
downloads from a server dripping its headers (in the attacker namespace) run at once while
ordinary attacks arrive; each ordinary attack is recorded no more than a second later than
the same attacks were before the downloads began. Every attack is recorded at once; each
dripping download is cut at its cap and followed up in attackers.json; the recorder's threads
do not pile up, and the pool then fetches a real sample again."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Honeytrap, nfq_rules, statistics
from download_servers import start
from netns import Host, Lab, inside

from honeytrap import pipeline

pytestmark = pytest.mark.netns

DRIPPING = 100  # dripping downloads at once (the figure)
ORDINARY = 20  # ordinary attacks measured before and while they drip
CAP = 15.0  # httpDownload's time cap, seconds
DELAY = 1.0  # an ordinary attack may be recorded at most this much later while they drip
WAIT = 60.0  # bound on every wait: only a bug reaches it
DOWNLOAD_PORT, ORDINARY_PORT, RECOVERY_PORT = 80, 8080, 8081
METRICS_PORT = 9131  # metrics_listen, inside the sensor namespace


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab.create(extra_attackers=1)
    try:
        yield lab
    finally:
        lab.close()
        for proc in lab.procs:
            if proc.stdout is not None:
                proc.stdout.close()


def send(source: Host, target: str, port: int, payload: bytes) -> int:
    """One attack from `source`'s address; its source port once the connection closed."""
    with inside(source):
        sock = socket.create_connection((target, port), timeout=10,
                                        source_address=(source.ip4, 0))
    with sock:
        local_port = int(sock.getsockname()[1])
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    return local_port


def records(ht: Honeytrap) -> list[dict[str, Any]]:
    """The whole lines of attackers.json (read while the daemon appends: a last line without
    its newline yet is not one)."""
    if not ht.attackers_json.exists():
        return []
    *lines, _partial = ht.attackers_json.read_text().split("\n")
    return [json.loads(line) for line in lines]


def recorded_after(ht: Honeytrap, source_port: int) -> float:
    """Seconds from now until attackers.json holds the attack from `source_port` (the file is
    the daemon's output under test: polled every 10 ms, bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < WAIT:
        for record in records(ht):
            conn = record.get("attack_connection", {})
            if not record.get("follow_up") and conn.get("remote_port") == source_port \
                    and conn.get("local_port") == ORDINARY_PORT:
                return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"attack from port {source_port} not recorded within {WAIT} s")


def ordinary_delays(lab: Lab, ht: Honeytrap) -> list[float]:
    payload = b"GET /index.html HTTP/1.0\r\nUser-Agent: scanner\r\n\r\n"
    return [recorded_after(ht, send(lab.attacker, lab.sensor.ip4, ORDINARY_PORT, payload))
            for _ in range(ORDINARY)]


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def pool_threads(lab: Lab) -> int:
    """The download pool's threads once the recorder has reported all of them: its gauge rises
    to download_workers (DRIPPING) when every download ran, the pool never starting more."""
    deadline = time.monotonic() + WAIT
    while True:
        value = statistics(lab, METRICS_PORT).get("pipeline_download_threads", 0.0)
        assert value <= DRIPPING, f"the download pool runs {value:g} threads"
        if value == DRIPPING or time.monotonic() > deadline:
            return int(value)
        time.sleep(0.2)


def wait_connections(proc: Any, count: int) -> None:
    """The hostile server prints `conn <n>` per client: wait until `count` have connected."""
    deadline = time.monotonic() + WAIT
    fd = proc.stdout.fileno()  # read raw: a buffered reader would hide lines from select
    seen, text = 0, ""
    while seen < count:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        assert ready, f"only {seen} of {count} downloads reached the dripping server"
        chunk = os.read(fd, 65536).decode()
        assert chunk, "the dripping server exited"
        text += chunk
        *lines, text = text.split("\n")
        for line in lines:
            if line.startswith("conn "):
                seen = int(line.split()[1])


@pytest.mark.slow
def test_a_hundred_dripping_downloads_do_not_delay_recording(lab: Lab, tmp_path: Path) -> None:
    dripping = start(lab, lab.attacker, "hostile", "headers", lab.attacker.ip4)
    hostile = lab.procs[-1]
    www = tmp_path / "www"
    www.mkdir()
    sample = os.urandom(30_000)
    (www / "bot.exe").write_bytes(sample)
    plain = start(lab, lab.attacker, "http", str(www), lab.attacker.ip4, "plain", os.devnull)
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"])
    ht.extra_config = f"""
download_allow = ["198.18.0.0/15"]
download_workers = "{DRIPPING}"
metrics_listen = "127.0.0.1:{METRICS_PORT}"
"""
    ht.plugins = f"""
plugin-httpDownload = {{ timeout = "{CAP:g}" }}
plugin-SaveFile = {{ attacks_dir = "{ht.attacks_dir}" downloads_dir = "{ht.downloads_dir}" }}
plugin-logJSON = {{ logfile = "{ht.attackers_json}" }}
"""
    ht.start()
    try:
        before = ordinary_delays(lab, ht)
        [recorder] = ht.recorders()
        threads_before = threads(recorder)
        # a hundred attacks, from two addresses, each telling its victim to fetch from the
        # dripping server
        sources = [lab.attacker, lab.extra[0]]
        started = time.monotonic()
        for n in range(DRIPPING):
            url = f"http://{lab.attacker.ip4}:{dripping}/bot{n}"
            send(sources[n % 2], lab.sensor.ip4, DOWNLOAD_PORT, f"wget {url}\r\n".encode())
        wait_connections(hostile, DRIPPING)
        during = ordinary_delays(lab, ht)
        threads_during = threads(recorder)
        dripped = time.monotonic() - started
        assert dripped < CAP, "the measurement must fall within the downloads' cap"
        # every dripping download is cut at its cap and followed up
        deadline = time.monotonic() + WAIT
        while len([r for r in records(ht) if r.get("follow_up")]) < DRIPPING:
            assert time.monotonic() < deadline, "dripping downloads not followed up"
            time.sleep(0.1)
        threads_after = threads(recorder)
        # the pool's own gauge (the recorder reports it every STATS_INTERVAL): one thread per
        # download, exactly, and they stayed
        pool_after = pool_threads(lab)
        # the pool recovered: a real sample is fetched again
        url = f"http://{lab.attacker.ip4}:{plain}/bot.exe"
        send(lab.attacker, lab.sensor.ip4, RECOVERY_PORT, f"wget {url}\r\n".encode())
        deadline = time.monotonic() + WAIT
        while len([r for r in records(ht) if r.get("follow_up")]) < DRIPPING + 1:
            assert time.monotonic() < deadline, "the pool did not fetch again"
            time.sleep(0.1)
        pool_recovered = pool_threads(lab)
    finally:
        assert ht.stop() == 0
    final = records(ht)
    attacks = [r for r in final if not r.get("follow_up")]
    followups = [r for r in final if r.get("follow_up")]
    assert len(attacks) == 2 * ORDINARY + DRIPPING + 1
    assert all(r["download_count"] == 0 for r in attacks)  # none waited for its download
    by_id = {r["id"]: r for r in attacks}
    cuts = []
    for record in followups[:DRIPPING]:
        [attempt] = record["download_attempts"]
        assert (attempt["outcome"], attempt["reason"]) == ("failed",
                                                           f"time cap of {CAP:g} s reached")
        attack = by_id[record["id"]]
        assert attack["attack_connection"]["local_port"] == DOWNLOAD_PORT
        cuts.append(_seconds(record["@timestamp"]) - _seconds(attack["end_time"]))
    [recovered] = followups[DRIPPING:]
    assert recovered["downloads"][0]["payload"]["md5_hash"] == hashlib.md5(sample).hexdigest()
    print(f"\nordinary attacks: recorded after {max(before):.3f} s at most before the downloads,"
          f" {max(during):.3f} s at most while {DRIPPING} dripped; attacks recorded "
          f"{len(attacks)}, follow-ups {len(followups)}; dripping downloads cut "
          f"{min(cuts):.2f}-{max(cuts):.2f} s after their attacks (cap {CAP:g} s); recorder "
          f"threads {threads_before} before, {threads_during} during, {threads_after} after; "
          f"the pool's {pool_after} after, {pool_recovered} once it fetched again")
    assert pool_after == pool_recovered == DRIPPING  # one per download; the fetch took an idle one
    assert max(during) <= max(before) + DELAY, (before, during)
    assert max(cuts) <= CAP + 2 * DELAY, cuts  # the cut, plus the follow-up's own recording
    # the pool's threads came with the downloads, one each (download_workers of them, and its
    # watchdog), and stayed: none piled up. The pipeline's own workers start as slow hooks
    # need them (pipeline.py: one at start, up to DEFAULT_WORKERS), more of them on a busy
    # machine, at any time: they are the only other threads that may come (seen: 3 before,
    # 106 during and after), and none of either kind ends.
    pipeline_room = pipeline.DEFAULT_WORKERS - 1
    assert threads_during <= threads_after <= threads_before + DRIPPING + 1 + pipeline_room


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_one_source_gets_its_budget_of_the_pool_the_rest_is_refused_on_the_record(
    lab: Lab, tmp_path: Path
) -> None:
    """The default pool (16 workers, 64 downloads at once per source): a hundred dripping
    downloads from one address, 36 refused at once with the reason on each attack's record and
    counted; at SIGTERM those still running are cut and the daemon exits cleanly."""
    from test_daemon_downloads import statistics_with

    from honeytrap import background
    from honeytrap.recorder import DRAIN_SECONDS, STATS_INTERVAL

    cap = 2 * DRAIN_SECONDS  # no download ends by itself while the test looks
    dripping = start(lab, lab.attacker, "hostile", "body", lab.attacker.ip4)
    nfq_rules(lab.sensor)
    ht = Honeytrap(lab, tmp_path / "ht", args=["-u", "nobody", "-g", "nogroup"])
    ht.extra_config = 'download_allow = ["198.18.0.0/15"]'
    ht.plugins = f"""
plugin-httpDownload = {{ timeout = "{cap:g}" }}
plugin-logJSON = {{ logfile = "{ht.attackers_json}" }}
"""
    ht.start()
    refused = DRIPPING - background.DEFAULT_PER_SOURCE
    try:
        for n in range(DRIPPING):
            url = f"http://{lab.attacker.ip4}:{dripping}/bot{n}"
            send(lab.attacker, lab.sensor.ip4, DOWNLOAD_PORT, f"wget {url}\r\n".encode())
        deadline = time.monotonic() + WAIT
        while len(records(ht)) < DRIPPING:
            assert time.monotonic() < deadline, "the attacks were not all recorded at once"
            time.sleep(0.05)
        stats = statistics_with(ht, f"pipeline_downloads_refused={refused}",
                                timeout=2 * STATS_INTERVAL + 10)
        assert stats.get("pipeline_downloads_refused") == str(refused), stats
        stopping = time.monotonic()
    finally:
        assert ht.stop(timeout=WAIT + DRAIN_SECONDS) == 0
    stopped = time.monotonic() - stopping
    attacks = [r for r in records(ht) if not r.get("follow_up")]
    assert len(attacks) == DRIPPING
    reasons = [t["reason"] for r in attacks for t in r["download_attempts"]]
    assert reasons == [f"at most {background.DEFAULT_PER_SOURCE} downloads at once per source "
                       "in the download pool"] * refused
    # the downloads running at SIGTERM were cut (DRAIN_SECONDS, then cancelled) and followed up
    cut = [t["reason"] for r in records(ht) if r.get("follow_up")
           for t in r["download_attempts"]]
    assert cut == ["cancelled by the download pool"] * background.DEFAULT_WORKERS
    print(f"\none source, {DRIPPING} dripping downloads: {refused} refused on the record, "
          f"{len(cut)} cut at SIGTERM, stopped in {stopped:.1f} s")
    assert stopped <= DRAIN_SECONDS + 10
