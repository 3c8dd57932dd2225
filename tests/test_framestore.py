"""framestore.FrameStore against a dict of the same frames (what the link kept before): any
sequence of frames added (bench-sized, tiny, larger than a chunk), acknowledged oldest first,
out of order, twice or never added, and copied out for sending from any point, gives what the
dict gives; and a chunk whose frames are all acknowledged is given back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap.config import MAX_UNACKNOWLEDGED_LIMIT, MIN_UNACKNOWLEDGED_LIMIT
from honeytrap.framestore import CHUNK_BYTES, MAX_CHUNKS, FrameStore, chunk_bytes

SIZES = st.one_of(st.integers(300, 420), st.sampled_from([1, 64, 5000, CHUNK_BYTES + 1]))
STEPS = st.lists(st.one_of(
    st.tuples(st.just("add"), SIZES),
    st.tuples(st.just("ack_oldest"), st.integers(1, 50)),
    st.tuples(st.just("ack"), st.integers(0, 400)),
    st.tuples(st.just("copy"), st.integers(0, 400), st.integers(1, 2 * CHUNK_BYTES)),
), max_size=300)


def copied(frames: dict[int, bytes], seq: int, last: int, limit: int) -> tuple[bytes, int]:
    out = bytearray()
    while seq <= last and len(out) < limit:
        out += frames.get(seq, b"")
        seq += 1
    return bytes(out), seq


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_the_store_keeps_what_a_dict_keeps(steps: list[tuple[object, ...]]) -> None:
    store, frames = FrameStore(), {}
    last = 0
    for step in steps:
        if step[0] == "add":
            last += 1
            frame = bytes([last % 251]) * int(step[1])  # type: ignore[call-overload]
            store.add(last, frame)
            frames[last] = frame
        elif step[0] == "ack_oldest":
            for seq in sorted(frames)[: int(step[1])]:  # type: ignore[call-overload]
                assert store.pop(seq) == len(frames.pop(seq))
        elif step[0] == "ack":
            seq = int(step[1])  # type: ignore[call-overload]
            assert store.pop(seq) == (len(frames.pop(seq)) if seq in frames else 0)
        else:
            seq, limit = int(step[1]), int(step[2])  # type: ignore[call-overload]
            out = bytearray()
            after = store.copy_into(out, seq, limit)
            want, want_after = copied(frames, seq, last, limit)
            assert bytes(out) == want
            assert after == want_after or min(after, want_after) > last
        assert len(store) == len(frames) and bool(store) == bool(frames)
        assert store.bytes == sum(map(len, frames.values()))
        assert list(store) == sorted(frames)
        assert store.oldest() == min(frames, default=None)
        for seq in range(last + 2):
            assert store.get(seq) == frames.get(seq)


def test_acknowledged_chunks_are_given_back() -> None:
    store = FrameStore()
    frame = b"x" * 400
    per_chunk = CHUNK_BYTES // len(frame)
    for seq in range(1, 10 * per_chunk + 1):
        store.add(seq, frame)
    assert store.mapped() >= 10 * CHUNK_BYTES
    for seq in range(1, 5 * per_chunk + 1):
        store.pop(seq)
    assert store.mapped() <= 6 * CHUNK_BYTES  # the partly acknowledged one stays
    for seq in range(5 * per_chunk + 1, 10 * per_chunk + 1):
        store.pop(seq)
    assert not store and store.mapped() <= CHUNK_BYTES  # the last one, kept for the next
    store.add(10 * per_chunk + 1, frame)
    assert store.get(10 * per_chunk + 1) == frame and store.mapped() == CHUNK_BYTES


def test_a_frame_out_of_sequence_is_refused() -> None:
    store = FrameStore()
    store.add(1, b"a")
    with pytest.raises(ValueError, match="not the next one"):
        store.add(3, b"c")
    assert list(store) == [1]


def test_a_large_limit_takes_larger_chunks_not_more_mappings() -> None:
    """Each chunk is a mapping (vm.max_map_count allows 65,530 a process): the largest limit
    is held in at most MAX_CHUNKS chunks, the default's in chunks of CHUNK_BYTES."""
    assert chunk_bytes(MIN_UNACKNOWLEDGED_LIMIT) == chunk_bytes(64 * 1024 * 1024) == CHUNK_BYTES
    size = chunk_bytes(MAX_UNACKNOWLEDGED_LIMIT)
    assert MAX_UNACKNOWLEDGED_LIMIT / size <= MAX_CHUNKS
    store = FrameStore(size)
    store.add(1, b"x")
    assert store.mapped() == size
