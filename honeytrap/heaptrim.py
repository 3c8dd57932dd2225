"""Giving the C heap's free pages back to the kernel (glibc's malloc_trim), now and then.

glibc's malloc gives every thread that allocates an arena of its own (up to 8 per core) and
returns an arena's free memory to the kernel only from its top, past a threshold that grows
with the largest block freed so far. Pages freed in the middle stay resident. The recorder's
pipeline starts a worker thread whenever a hook or a write is slow (pipeline.py BOOST_AFTER),
which under a disk's journal stalls happens minutes into a load, and each such thread kept
~0.9 MiB of its arena resident for good (bench/'s soak, /proc/PID/smaps: 7 MiB in 9 arenas,
and the main heap 5 -> 8.5 MiB, against a target of memory flat within 10%). malloc_trim(0)
releases every whole free page of every arena (madvise MADV_DONTNEED), ~1 ms for tens of MiB
of heap, so the recorder calls it every TRIM_INTERVAL. And it makes no arena per thread: its
threads share RECORDER_ARENAS (limit_arenas, glibc's M_ARENA_MAX, set before its first thread).
They run Python under one GIL, so they hardly ever allocate at the same time: an arena each buys
them nothing but its pages.

Python's own small-object allocator (pymalloc, objects up to 512 bytes) maps its arenas itself
and frees one only once it is empty: this does not touch them; bounding what is held (the
recorder's queue: recorder.MAX_QUEUED_ATTACKS) is what keeps those flat.

Elsewhere than glibc (musl, other systems) there is no malloc_trim: trim() does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger("honeytrap.heaptrim")

# Seconds between two trims of a busy process: each costs ~1 ms of CPU for tens of MiB of heap,
# and memory a load's burst left behind is resident this long at most.
TRIM_INTERVAL = 10.0
# malloc arenas the recorder's threads share (the main one and one more, for the C code that
# allocates without the GIL: a download's TLS, hashing a large sample).
RECORDER_ARENAS = 2


# glibc's mallopt parameter for the most arenas a process makes (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8


def _find(name: str, argtypes: list[type[ctypes.c_int] | type[ctypes.c_size_t]]
          ) -> Callable[..., int] | None:
    try:
        # The process's own symbols (libc's among them), as outfile.py finds linkat: no
        # ctypes.util.find_library, which runs ldconfig or a compiler in a subprocess.
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_malloc_trim = _find("malloc_trim", [ctypes.c_size_t])
_mallopt = _find("mallopt", [ctypes.c_int, ctypes.c_int])


def available() -> bool:
    return _malloc_trim is not None


def limit_arenas(count: int) -> bool:
    """Let the process's threads share at most `count` malloc arenas from now on (call it before
    it starts threads): a thread started later takes one of those, not an arena of its own that
    keeps its pages. True if the C library took the limit."""
    return _mallopt is not None and bool(_mallopt(_M_ARENA_MAX, count))


def trim() -> bool:
    """Give every free page of the C heap back (the GIL is released meanwhile: ctypes). True
    if some memory was released."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
