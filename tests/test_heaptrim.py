"""heaptrim gives the C heap's free pages in the middle of the heap back to the kernel, which
free() alone does not (glibc trims only the heap's top): measured in a fresh interpreter on its
own resident set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from honeytrap import heaptrim

# In the child: BLOCKS blocks of BLOCK bytes (under malloc's mmap threshold: from the heap),
# then one kept past them so that the heap's top stays in use, then the others freed.
CHILD = """
import json, os, sys
from honeytrap import heaptrim
BLOCK, BLOCKS = 64 * 1024, 1600
page = os.sysconf("SC_PAGE_SIZE")
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
blocks = [b"x" * BLOCK for _ in range(BLOCKS)]  # written: every page resident
pin = b"x" * BLOCK
del blocks
freed = resident()
released = heaptrim.trim()
print(json.dumps({"freed": freed, "trimmed": resident(), "released": released}))
"""
HEAP = 1600 * 64 * 1024  # what the child frees: 100 MiB


@pytest.mark.skipif(not heaptrim.available(), reason="no malloc_trim: not glibc")
def test_trim_returns_the_free_middle_of_the_heap() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    figures = json.loads(out)
    assert figures["released"] is True
    # free() left (nearly) all of it resident; the trim gave back at least 90% of it
    assert figures["freed"] - figures["trimmed"] >= 0.9 * HEAP, figures


# In the child: THREADS threads each allocating from malloc (blocks past pymalloc's 512 bytes)
# and holding it until all have, then glibc's own count of its arenas (malloc_stats, on stderr).
THREADS_CHILD = """
import sys, threading
from honeytrap import heaptrim
THREADS = int(sys.argv[2])
if sys.argv[1] == "limited":
    assert heaptrim.limit_arenas(heaptrim.RECORDER_ARENAS)
barrier = threading.Barrier(THREADS + 1)
def work():
    kept = [b"x" * 4096 for _ in range(64)]
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(THREADS)]
for thread in threads:
    thread.start()
barrier.wait()
import ctypes
ctypes.CDLL(None).malloc_stats()
barrier.wait()
for thread in threads:
    thread.join()
"""
THREADS = 8


def arenas(mode: str) -> int:
    err = subprocess.run([sys.executable, "-c", THREADS_CHILD, mode, str(THREADS)],
                         capture_output=True, text=True,
                         check=True, timeout=60).stderr
    return err.count("Arena ")


@pytest.mark.skipif(not heaptrim.available(), reason="no malloc_trim: not glibc")
def test_limited_arenas_are_shared_by_threads_started_later() -> None:
    unlimited, limited = arenas("unlimited"), arenas("limited")
    assert unlimited > heaptrim.RECORDER_ARENAS  # threads get arenas of their own by default
    assert limited == heaptrim.RECORDER_ARENAS, (unlimited, limited)
