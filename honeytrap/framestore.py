"""The frames a server process keeps until the recorder acknowledges them, packed in chunks of
memory mapped for them alone (anonymous mmap), each unmapped once every frame in it is
acknowledged.

One bytes object per frame in a dict (as the link kept them before) costs its frame and that
much again under a backlog, and keeps it after: frames of a bench attack (~360 bytes) come from
pymalloc's pools, which a process gives back only once a whole 1 MiB arena is empty, and new
frames fill the holes the acknowledged ones left between frames still held. Under the soak's
backlog (the recorder ~4% slower than the load, the sensor holding 32-64 MiB unacknowledged as
unacked.py holds back and resumes) the servers' PSS went 61 -> 113 MiB and stayed at its
high-water mark while the backlog came down to half (a simulation of that pattern: 106 MiB
resident for 26 MiB of frames). Here a frame costs its bytes and a few of bookkeeping
(an offset and a flag), and the memory follows what is held, down too: frames come and go in
sequence order, so the oldest chunk empties first and goes back to the kernel whole.

Sequence numbers are consecutive (the link numbers its frames 1, 2, ...); acknowledgements may
come in any order (the recorder's workers finish attacks out of order) and for frames not held
(already acknowledged before a relink: sent again, acknowledged twice)."""

from __future__ import annotations

import mmap
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

# Bytes of one chunk: ~700 bench frames, so one mmap and one munmap per ~700 attacks; what an
# idle link keeps mapped (its last chunk, reused once empty) is this at most. Past
# FLUSH_BYTES-sized refills (recorderlink.py) a chunk is copied out in one or two slices.
CHUNK_BYTES = 256 * 1024
# Chunks a process's frames take at most (its share of unacknowledged_limit in chunks; past it,
# larger chunks): each is a mapping of its own, and the kernel allows a process 65,530
# (vm.max_map_count) in all. 64 MiB (the default limit) is 256 chunks; 64 GiB (the largest) would
# be 262,144: chunks of 16 MiB instead.
MAX_CHUNKS = 4096


def chunk_bytes(limit: int) -> int:
    """The chunk size for a process holding up to `limit` bytes of frames: CHUNK_BYTES, or
    larger past MAX_CHUNKS chunks (whole pages)."""
    size = max(CHUNK_BYTES, -(-limit // MAX_CHUNKS))
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


class _Chunk:
    """Frames first, first + 1, ... packed from offset 0 of their own mapping."""

    __slots__ = ("acked", "first", "live", "memory", "starts", "used")

    def __init__(self, first: int, size: int) -> None:
        self.first = first
        # Rounded up to whole pages: a frame larger than a chunk gets a mapping of its own.
        # Private (anonymous, counted as the process's own), not mmap's default MAP_SHARED.
        self.memory = mmap.mmap(-1, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE,
                                flags=mmap.MAP_PRIVATE)
        self.used = 0  # bytes written
        self.starts = array("Q")  # each frame's offset; its end is the next one's, or `used`
        self.acked = bytearray()  # one flag per frame: 1 once acknowledged
        self.live = 0  # frames not acknowledged

    def end(self, index: int) -> int:
        return self.starts[index + 1] if index + 1 < len(self.starts) else self.used


class FrameStore:
    """Frames by sequence number, kept until popped (acknowledged)."""

    def __init__(self, chunk_size: int = CHUNK_BYTES) -> None:
        self.chunk_size = chunk_size
        self._chunks: list[_Chunk] = []  # in sequence order
        self._firsts: list[int] = []  # each chunk's first sequence number (bisect)
        self.count = 0  # frames held
        self.bytes = 0  # their bytes
        self.last = 0  # the last sequence number added

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[int]:
        """The sequence numbers held, oldest first."""
        for chunk in self._chunks:
            for index, flag in enumerate(chunk.acked):
                if not flag:
                    yield chunk.first + index

    def oldest(self) -> int | None:
        return next(iter(self), None)

    def mapped(self) -> int:
        """Bytes mapped for the frames (what they cost, page-rounded chunks)."""
        return sum(len(chunk.memory) for chunk in self._chunks)

    def add(self, seq: int, frame: bytes) -> None:
        """Keep `frame`, sequence number `seq`: the one after the last added."""
        if seq != self.last + 1:
            raise ValueError(f"frame {seq} added after {self.last}: not the next one")
        size = len(frame)
        chunk = self._chunks[-1] if self._chunks else None
        # A new chunk when the last one is full, or when it no longer ends with the frame
        # before (the chunk after it, a large frame's own, was freed).
        if (chunk is None or chunk.used + size > len(chunk.memory)
                or chunk.first + len(chunk.acked) != seq):
            chunk = _Chunk(seq, max(self.chunk_size, size))
            self._chunks.append(chunk)
            self._firsts.append(seq)
        at = chunk.used
        chunk.memory[at:at + size] = frame
        chunk.used = at + size
        chunk.starts.append(at)
        chunk.acked.append(0)
        chunk.live += 1
        self.last = seq
        self.count += 1
        self.bytes += size

    def _find(self, seq: int) -> tuple[int, _Chunk] | None:
        """The chunk holding `seq` (by position) or None (freed, or never added)."""
        chunks = self._chunks
        if not chunks or seq > self.last:
            return None
        first = chunks[0]
        if first.first <= seq < first.first + len(first.acked):
            return 0, first  # acknowledgements mostly come oldest first
        position = bisect_right(self._firsts, seq) - 1
        if position < 0:
            return None
        chunk = chunks[position]
        return (position, chunk) if seq - chunk.first < len(chunk.acked) else None

    def get(self, seq: int) -> bytes | None:
        """The frame `seq`, or None if it is not held."""
        found = self._find(seq)
        if found is None:
            return None
        chunk = found[1]
        index = seq - chunk.first
        if chunk.acked[index]:
            return None
        return chunk.memory[chunk.starts[index]:chunk.end(index)]

    def pop(self, seq: int) -> int:
        """Acknowledged: the frame's bytes, now freed (0 if it was not held)."""
        return self.pop_many((seq,))

    def pop_many(self, seqs: Iterable[int]) -> int:
        """Acknowledged, each of `seqs`: the bytes freed (a frame not held frees none). A chunk
        whose every frame is acknowledged is unmapped, or, the last one, reused from its start.
        (One call per batch of acknowledgements, the chunk of the one before tried first: they
        mostly come in order; ~0.5 us an acknowledgement.)"""
        freed = count = 0
        chunk: _Chunk | None = None
        first = frames = 0
        for seq in seqs:
            index = seq - first
            if chunk is None or not 0 <= index < frames:
                found = self._find(seq)
                if found is None:
                    continue
                chunk = found[1]
                first, frames = chunk.first, len(chunk.acked)
                index = seq - first
            acked = chunk.acked
            if acked[index]:
                continue
            acked[index] = 1
            starts = chunk.starts
            size = (starts[index + 1] if index + 1 < frames else chunk.used) - starts[index]
            freed += size
            count += 1
            chunk.live -= 1
            if not chunk.live:
                self._release(chunk)
                chunk = None
        self.count -= count
        self.bytes -= freed
        return freed

    def _release(self, chunk: _Chunk) -> None:
        """Every frame of `chunk` is acknowledged."""
        position = self._chunks.index(chunk)
        if position == len(self._chunks) - 1 and len(chunk.memory) == self.chunk_size:
            # The one being written (not a large frame's own): started again.
            chunk.first = self.last + 1
            self._firsts[position] = chunk.first
            chunk.used = 0
            del chunk.starts[:]
            chunk.acked.clear()
        else:
            chunk.memory.close()
            del self._chunks[position], self._firsts[position]

    def copy_into(self, out: bytearray, seq: int, limit: int) -> int:
        """Append the frames held from `seq` on to `out` until it holds `limit` bytes or more
        (the frame that crosses it whole); the sequence number to go on from."""
        last = self.last
        while seq <= last and len(out) < limit:
            found = self._find(seq)
            if found is None:  # freed: every frame before the next chunk was acknowledged
                position = bisect_right(self._firsts, seq)
                if position == len(self._chunks):
                    return last + 1
                seq = self._chunks[position].first
                continue
            chunk = found[1]
            index = seq - chunk.first
            if chunk.acked[index]:
                seq += 1
                continue
            # The run of frames held from `index` on (to the next acknowledged one), as far as
            # the frame that crosses `limit`, copied in one slice.
            stop = chunk.acked.find(1, index)
            if stop < 0:
                stop = len(chunk.acked)
            starts = chunk.starts
            target = starts[index] + limit - len(out)
            run_end = bisect_left(starts, target, index + 1, stop)  # the first past it
            out += chunk.memory[starts[index]:chunk.end(run_end - 1)]
            seq = chunk.first + run_end
        return seq
