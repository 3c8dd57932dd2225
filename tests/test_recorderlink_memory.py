"""What a server process's memory does under a recorder backlog (recorderlink.RecorderClient and
framestore.FrameStore), measured in a fresh process of its own (this file run as a script), its
link a real socketpair on a real event loop: the recorder's end reads nothing (its pipeline
full) and acknowledges the oldest frames as the soak's recorder does, a little slower than they
come, and the sensor's bound (unacked.py) lets the backlog fill to FRAMES and drain to half of
it, CYCLES times. The process's anonymous resident memory must follow what it holds: the frames'
bytes and little more at the fullest, half of that at half, nothing once everything is
acknowledged. (One bytes object per frame in a dict held twice the frames at the fullest and
kept that when half was acknowledged: the soak's servers, 61 -> 113 MiB.)"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FRAMES = 40_000  # ~15 MB of bench-sized frames at the fullest
PAYLOAD_BYTES = 200  # the bench's attacks: ~360-byte frames, from pymalloc's pools as bytes
ACKED_SHARE = 0.5  # of the frames handed over while filling, the recorder acknowledges these
CYCLES = 3
# What the frames may cost beyond their bytes (a chunk's page-rounded tail, offsets, flags),
# and what the process may move by meanwhile (the interpreter's own caches, the send buffer).
OVERHEAD = 1.15
SLACK = 4 * 1024 * 1024
RUN_TIMEOUT = 300.0
WAIT = 20.0  # a batch of acknowledgements taken in


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


async def backlog() -> dict[str, list[int]]:
    from honeytrap import recorderlink, wire
    from honeytrap.attack import Attack, Connection, Payload
    from honeytrap.config import Config

    server_end, recorder_end = socket.socketpair()
    recorder_end.setblocking(False)
    loop = asyncio.get_running_loop()
    acked = asyncio.Event()
    client = recorderlink.RecorderClient(server_end, Config(), lambda full: None,
                                         on_acked=acked.set)
    client.start(loop)
    oldest = 1  # the oldest frame not acknowledged yet

    async def acknowledge(count: int) -> None:
        nonlocal oldest
        seqs = range(oldest, oldest + count)
        oldest += count
        await loop.sock_sendall(recorder_end, b"".join(wire.encode_ack(seq) for seq in seqs))
        while client.unacked and next(iter(client.unacked)) != oldest:
            acked.clear()
            await asyncio.wait_for(acked.wait(), WAIT)

    figures: dict[str, list[int]] = {"base": [rss_anon()], "full": [], "full_bytes": [],
                                     "half": [], "half_bytes": []}
    due = 0.0
    for _cycle in range(CYCLES):
        while len(client.unacked) < FRAMES:
            n = client.seq + 1
            payload = (n.to_bytes(8, "big") * PAYLOAD_BYTES)[:PAYLOAD_BYTES]
            client.submit(Attack(Connection("tcp", "198.18.0.2", 4444, "198.18.0.1",
                                            40000 + n % 20000, Payload(payload))))
            due += ACKED_SHARE
            if due >= 1000:
                await acknowledge(int(due))
                due -= int(due)
        figures["full"].append(rss_anon())
        figures["full_bytes"].append(client.unacked_bytes)
        await acknowledge(len(client.unacked) // 2)
        figures["half"].append(rss_anon())
        figures["half_bytes"].append(client.unacked_bytes)
    await acknowledge(len(client.unacked))
    figures["drained"] = [rss_anon()]
    client._detach()
    recorder_end.close()
    return figures


def test_memory_follows_the_backlog_up_and_down() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, env=env, check=True)
    got = json.loads(proc.stdout)
    base = got["base"][0]
    for cycle in range(CYCLES):
        full, half = got["full"][cycle] - base, got["half"][cycle] - base
        assert full <= OVERHEAD * got["full_bytes"][cycle] + SLACK, (cycle, got)
        assert half <= OVERHEAD * got["half_bytes"][cycle] + SLACK, (cycle, got)
    assert got["drained"][0] - base <= SLACK, got


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(backlog())) + "\n")
