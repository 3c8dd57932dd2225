"""entropy.py: random draws from os.urandom in blocks, never the same bytes twice, in threads
or across a fork."""

from __future__ import annotations

import os
import threading

from honeytrap import entropy
from honeytrap.attack import new_id
from honeytrap.dialogue.base import SENSOR_RNG

DRAWS = 5000  # several blocks' worth


def test_draws_are_in_range_and_spread() -> None:
    rng = entropy.BlockRandom()
    values = [rng.random() for _ in range(DRAWS)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(values) / DRAWS < 0.55
    quiet = [SENSOR_RNG.uniform(0.15, 0.45) for _ in range(DRAWS)]
    assert all(0.15 <= q <= 0.45 for q in quiet) and len(set(quiet)) == DRAWS
    bits = [rng.getrandbits(k) for k in (1, 7, 53, 64, 65, 200) for _ in range(200)]
    assert all(b >= 0 for b in bits) and max(bits) >= 1 << 150
    assert sorted({rng.randrange(10) for _ in range(DRAWS)}) == list(range(10))


def test_ids_are_version_4_uuids_and_unique_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_id() for _ in range(DRAWS))

    threads = [threading.Thread(target=draw, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for into in found for i in into]
    assert len(set(ids)) == len(ids) == 4 * DRAWS
    assert all(len(i) == 32 and i[12] == "4" and i[16] in "89ab" for i in ids)


def test_a_forked_child_does_not_draw_its_parents_bytes() -> None:
    entropy.word(), entropy.bytes16()  # the parent holds partly used blocks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next draws, to the parent
        try:
            os.write(write, b"".join(entropy.bytes16() for _ in range(8)))
            os.write(write, b"".join(entropy.word().to_bytes(8, "little") for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    parent = b"".join(entropy.bytes16() for _ in range(8))
    parent += b"".join(entropy.word().to_bytes(8, "little") for _ in range(8))
    assert len(child) == len(parent) == 192
    assert child[:128] != parent[:128] and child[128:] != parent[128:]
