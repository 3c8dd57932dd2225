"""Giving the C heap's free pages back to the kernel (glibc's malloc_trim), now and then.

glibc's malloc gives every thread that allocates an arena of its own (up to 8 per core) and
returns an arena's free memory to the kernel only from its top, past a threshold that grows
with the largest block freed so far. Pages freed in the middle stay resident. The recorder's
pipeline starts a worker thread whenever a hook or a write is slow (pipeline.py BOOST_AFTER),
which under a disk's journal stalls happens minutes into a load, and each such thread kept
~0.9 MiB of its arena resident for good (bench/'s soak, /proc/PID/smaps: 7 MiB in 9 arenas,
and the main heap 5 -> 8.5 MiB, against a target of memory flat within 10%). malloc_trim(0)
releases every whole free page of every arena (madvise MADV_DONTNEED), ~1 ms for tens of MiB
of heap, so the recorder calls it every TRIM_INTERVAL.

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


def _find() -> Callable[[int], int] | None:
    try:
        # The process's own symbols (libc's among them), as outfile.py finds linkat: no
        # ctypes.util.find_library, which runs ldconfig or a compiler in a subprocess.
        function = ctypes.CDLL(None, use_errno=True).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_malloc_trim = _find()


def available() -> bool:
    return _malloc_trim is not None


def trim() -> bool:
    """Give every free page of the C heap back (the GIL is released meanwhile: ctypes). True
    if some memory was released."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
