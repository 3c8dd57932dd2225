"""The server-to-recorder wire codec: attacks and acks round-trip, any split of the stream decodes
the same, and hostile bytes give WireError and nothing else."""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap import wire
from honeytrap.attack import (
    Attack,
    Connection,
    DialogueRecord,
    Download,
    DownloadTry,
    Mode,
    Payload,
)
from honeytrap.wire import (
    MAX_FIELD_DEPTH,
    MAX_FRAME,
    MAX_TIME,
    NAMES_REMEMBERED,
    SMALL_TURNS,
    FrameReader,
    WireError,
    ack_seqs,
    encode_ack,
    encode_attack,
    encode_normal,
)

# Offsets in an attack frame, from the layout in wire.py's docstring: header (u32 length, u8
# type), then u64 seq, u8 mode, u8 flags, f64 start_time, f64 end_time, u32 id length, u32 note
# count, u32 x4 connection lengths, u16 local_port, u16 remote_port.
HEADER = 5
MODE_AT = HEADER + 8
FLAGS_AT = MODE_AT + 1
START_AT = FLAGS_AT + 1
NOTES_COUNT_AT = START_AT + 16 + 4
LOCAL_PORT_AT = NOTES_COUNT_AT + 4 + 16


def conn(local: str = "198.18.0.1", remote: str = "198.18.0.2", payload: bytes = b"GET /",
         lport: int = 80, rport: int = 51234) -> Connection:
    return Connection("tcp", local, lport, remote, rport, Payload(payload))


def state(attack: Attack) -> tuple[Any, ...]:
    """Everything an attack carries, comparable (Attack itself compares by identity)."""
    return (attack.id, attack.mode, attack.start_time, attack.end_time, attack.is_virtual,
            attack.attack_connection, attack.proxy_connection, attack.notes, attack.downloads,
            attack.download_tries, attack.analysis, attack.parent, attack.dialogue)


def decode_one(frame: bytes) -> tuple[str, int, Attack | None]:
    reader = FrameReader()
    messages = reader.feed(frame)
    assert len(messages) == 1
    assert reader.pending() == 0
    return messages[0]


def round_trip(attack: Attack, seq: int = 1) -> Attack:
    kind, got_seq, decoded = decode_one(encode_attack(seq, attack))
    assert (kind, got_seq) == ("attack", seq)
    assert decoded is not None
    return decoded


TYPICAL = {
    "ipv4": Attack(conn(), start_time=1.7e9, end_time=1.7e9 + 2.5),
    "ipv6": Attack(conn("2001:db8::1", "2001:db8::2", b"\x00\xff" * 100, 445, 1),
                   start_time=1.7e9, end_time=1.7e9 + 0.001),
    "proxy": Attack(conn(payload=b"EHLO x\r\n", lport=25), mode=Mode.PROXY, start_time=1.0,
                    end_time=2.0,
                    proxy_connection=Connection("udp", "192.0.2.1", 40000, "192.0.2.5", 53,
                                                Payload(b"220 ready\r\n"))),
    "mirror with empty proxy payload": Attack(
        conn(), mode=Mode.MIRROR, start_time=1.0, end_time=1.0,
        proxy_connection=conn("198.18.0.1", "198.18.0.2", b"", 40001, 80)),
    "notes": Attack(conn(), notes=["template 80_tcp", "read_limit reached", "", "ünïcode ✓"],
                    start_time=5.0),
    "empty payload": Attack(conn(payload=b""), start_time=0.0, end_time=0.0),
    "1 MiB payload": Attack(conn(payload=bytes(range(256)) * 4096), start_time=1.7e9),
    "virtual, ignore mode": Attack(conn(), mode=Mode.IGNORE, is_virtual=True, start_time=1.0),
    "dialogue": Attack(conn(payload=b"USER a\r\n"), start_time=1.0, dialogue=DialogueRecord(
        "ftp", (-20, 8, -34), Payload(b"220 hi\r\n331 pw\r\n"),
        {"state": "password", "commands": ["USER"], "tls": {"ja4": "t13d", "alpn": []}})),
}


@pytest.mark.parametrize("name", TYPICAL)
def test_typical_attack_round_trips_with_its_id(name: str) -> None:
    attack = TYPICAL[name]
    decoded = round_trip(attack, seq=42)
    assert decoded is not attack
    assert state(decoded) == state(attack)


def test_ack_round_trips() -> None:
    for seq in (0, 1, 2**32, 2**64 - 1):
        assert decode_one(encode_ack(seq)) == ("ack", seq, None)


@pytest.mark.parametrize("seq", [-1, 2**64])
def test_sequence_number_outside_u64_is_refused(seq: int) -> None:
    with pytest.raises(WireError, match="sequence number"):
        encode_ack(seq)
    with pytest.raises(WireError, match="sequence number"):
        encode_attack(seq, TYPICAL["ipv4"])


def stream() -> tuple[bytes, list[tuple[str, int, tuple[Any, ...] | None]]]:
    """Several frames of every kind back to back, and what they should decode to."""
    small = [a for name, a in TYPICAL.items() if name != "1 MiB payload"]
    data = b""
    expected: list[tuple[str, int, tuple[Any, ...] | None]] = []
    for seq, attack in enumerate(small):
        data += encode_attack(seq, attack) + encode_ack(seq)
        expected += [("attack", seq, state(attack)), ("ack", seq, None)]
    return data, expected


def comparable(messages: list[tuple[str, int, Attack | None]]) -> list[Any]:
    return [(kind, seq, None if a is None else state(a)) for kind, seq, a in messages]


def test_stream_split_at_every_byte_boundary_decodes_the_same() -> None:
    data, expected = stream()
    for cut in range(len(data) + 1):
        reader = FrameReader()
        first = reader.feed(data[:cut])
        assert reader.pending() == cut - sum(len(f) for f in frames_in(data[:cut]))
        second = reader.feed(data[cut:])
        assert comparable(first + second) == expected
        assert reader.pending() == 0


def frames_in(prefix: bytes) -> list[bytes]:
    """The complete frames at the start of prefix (by their length prefixes)."""
    frames = []
    pos = 0
    while len(prefix) - pos >= HEADER:
        (length,) = struct.unpack_from("<I", prefix, pos)
        if pos + HEADER + length > len(prefix):
            break
        frames.append(prefix[pos:pos + HEADER + length])
        pos += HEADER + length
    return frames


def test_stream_fed_one_byte_at_a_time_decodes_the_same() -> None:
    data, expected = stream()
    reader = FrameReader()
    messages = []
    for i in range(len(data)):
        messages += reader.feed(data[i:i + 1])
    assert comparable(messages) == expected


def test_many_frames_in_one_feed() -> None:
    data, expected = stream()
    assert comparable(FrameReader().feed(data * 50)) == expected * 50


def test_large_frame_in_socket_sized_pieces_between_small_ones() -> None:
    big = TYPICAL["1 MiB payload"]
    data = encode_ack(1) + encode_attack(2, big) + encode_ack(3)
    reader = FrameReader()
    messages = []
    for at in range(0, len(data), 65536):
        messages += reader.feed(data[at:at + 65536])
    assert [(k, s) for k, s, _ in messages] == [("ack", 1), ("attack", 2), ("ack", 3)]
    assert messages[1][2] is not None and state(messages[1][2]) == state(big)


def test_feed_accepts_bytearray_and_memoryview() -> None:
    frame = encode_attack(9, TYPICAL["notes"])
    for data in (bytearray(frame), memoryview(frame)):
        ((kind, seq, attack),) = FrameReader().feed(data)  # type: ignore[arg-type]
        assert attack is not None and state(attack) == state(TYPICAL["notes"])


# --- what the encoder refuses ---------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"downloads": [Download("http", "192.0.2.1", 80, "x", "http://192.0.2.1/x", Payload(b"x"))]},
    {"download_tries": [DownloadTry("http", "http://192.0.2.1/x", "192.0.2.1", 80, "failed")]},
    {"analysis": {"ClamAV": {}}},
    {"parent": Attack(conn())},
])
def test_encoder_refuses_what_the_frame_would_lose(extra: dict[str, Any]) -> None:
    attack = Attack(conn(), **extra)
    with pytest.raises(ValueError, match="not carried"):
        encode_attack(1, attack)


@pytest.mark.parametrize("port", [-1, 65536, 100_000])
@pytest.mark.parametrize("where", ["local", "remote", "proxy"])
def test_encoder_refuses_port_out_of_range(port: int, where: str) -> None:
    if where == "proxy":
        attack = Attack(conn(), proxy_connection=conn(lport=port))
    else:
        attack = Attack(conn(lport=port) if where == "local" else conn(rport=port))
    with pytest.raises(WireError, match=f"{port}.*0..65535"):
        encode_attack(1, attack)


@pytest.mark.parametrize("when", [math.nan, math.inf, -math.inf, -1.0, MAX_TIME * 2])
def test_encoder_refuses_time_a_date_cannot_show(when: float) -> None:
    with pytest.raises(WireError, match="times"):
        encode_attack(1, Attack(conn(), start_time=when))
    with pytest.raises(WireError, match="times"):
        encode_attack(1, Attack(conn(), start_time=1.0, end_time=when))


def test_encoder_refuses_strings_it_cannot_encode() -> None:
    with pytest.raises(WireError, match="not ascii"):
        encode_attack(1, Attack(conn(remote="198.18.0.ü")))
    with pytest.raises(WireError, match="not ascii"):
        encode_attack(1, Attack(conn(), proxy_connection=conn(local="ü")))
    with pytest.raises(WireError, match="not utf-8"):
        encode_attack(1, Attack(conn(), notes=["lone \udc80 surrogate"]))


def test_encoder_refuses_frame_over_the_limit() -> None:
    attack = Attack(conn(payload=b"x" * 1000))
    encode_attack(1, attack, max_frame=2000)
    with pytest.raises(WireError, match="over the limit of 1000"):
        encode_attack(1, attack, max_frame=1000)


# --- what the decoder refuses ---------------------------------------------------------------

def reject(data: bytes, match: str, reader: FrameReader | None = None) -> FrameReader:
    reader = reader or FrameReader()
    with pytest.raises(WireError, match=match):
        reader.feed(data)
    return reader


def patched(offset: int, fmt: str, value: Any, attack: Attack | None = None) -> bytes:
    """A valid attack frame (checked) with one fixed field overwritten."""
    frame = encode_attack(7, attack or TYPICAL["notes"])
    decode_one(frame)
    data = bytearray(frame)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def test_oversized_length_is_refused_before_its_body_is_buffered() -> None:
    header = struct.pack("<IB", MAX_FRAME + 1, 1)
    reader = FrameReader()
    assert reader.feed(header[:3]) == []
    reject(header[3:], "over the limit", reader)
    assert reader.pending() == 0


def test_length_at_the_limit_is_buffered_not_refused() -> None:
    reader = FrameReader(max_frame=100)
    assert reader.feed(struct.pack("<IB", 100, 1) + b"\0" * 50) == []
    assert reader.pending() == HEADER + 50
    reject(struct.pack("<IB", 101, 1), "over the limit of 100", FrameReader(max_frame=100))


def test_unknown_frame_type_is_refused_from_the_header() -> None:
    reject(struct.pack("<IB", 1000, 3), "unknown frame type 3")


def test_reader_is_unusable_after_an_error() -> None:
    reader = reject(struct.pack("<IB", 8, 0), "unknown frame type 0")
    reject(encode_ack(1), "unusable after an earlier error", reader)


@pytest.mark.parametrize("length", [0, 7, 9])
def test_ack_of_wrong_length_is_refused(length: int) -> None:
    reject(struct.pack("<IB", length, 2) + b"\0" * length, "ack body")


def test_attack_body_shorter_than_fixed_fields_is_refused() -> None:
    reject(struct.pack("<IB", 10, 1) + b"\0" * 10, "shorter than its fixed fields")


def test_trailing_bytes_in_a_body_are_refused() -> None:
    frame = bytearray(encode_attack(1, TYPICAL["ipv4"]) + b"\0")
    struct.pack_into("<I", frame, 0, len(frame) - HEADER)
    reject(bytes(frame), "1 trailing bytes")
    ack = bytearray(encode_ack(1) + b"\0")
    struct.pack_into("<I", ack, 0, 9)
    reject(bytes(ack), "ack body of 9 bytes")


def test_truncated_body_is_refused() -> None:
    frame = bytearray(encode_attack(1, TYPICAL["notes"]))
    for cut in (1, 5, len(frame) - HEADER - 60):
        short = frame[:len(frame) - cut]
        struct.pack_into("<I", short, 0, len(short) - HEADER)
        reject(bytes(short), "overrun|shorter|cannot fit")


@pytest.mark.parametrize("when", [math.nan, math.inf, -1.0, MAX_TIME + 1])
def test_time_out_of_range_is_refused(when: float) -> None:
    reject(patched(START_AT, "<d", when), "times")
    reject(patched(START_AT + 8, "<d", when), "times")


def test_unknown_mode_and_flags_are_refused() -> None:
    reject(patched(MODE_AT, "<B", 3), "unknown mode 3")
    reject(patched(FLAGS_AT, "<B", 8), "unknown flags 0x8")


def test_ports_decode_over_their_whole_range() -> None:
    """u16 on the wire: no out-of-range port can be sent, and 0 and 65535 come through."""
    for port in (0, 65535):
        decoded = round_trip(Attack(conn(lport=port, rport=port)))
        assert (decoded.attack_connection.local_port,
                decoded.attack_connection.remote_port) == (port, port)
    frame = patched(LOCAL_PORT_AT, "<H", 65535)
    _, _, attack = decode_one(frame)
    assert attack is not None and attack.attack_connection.local_port == 65535


def test_dialogue_fields_that_are_not_a_shallow_json_object_are_refused() -> None:
    record = DialogueRecord("ftp", (), Payload(b""), {"k": "v"})
    frame = encode_attack(1, Attack(conn(), dialogue=record))
    reject(frame.replace(b'{"k":"v"}', b'["k","v"]'), "must be an object")
    reject(frame.replace(b'{"k":"v"}', b'{"k":"v",'), "not JSON")
    deep = DialogueRecord("ftp", (), Payload(b""), {"k": [[[[[[[[["x"]]]]]]]]]})
    reject(encode_attack(1, Attack(conn(), dialogue=deep)), "deep")


def test_dialogue_fields_nest_up_to_max_field_depth_levels_leaves_included() -> None:
    def nested(levels: int) -> dict[str, object]:
        value: object = "leaf"  # the leaf is a level: {"k": "leaf"} is 2 deep
        for _ in range(levels - 2):
            value = [value]
        return {"k": value}

    ok = DialogueRecord("ftp", (), Payload(b""), nested(MAX_FIELD_DEPTH))
    assert round_trip(Attack(conn(), dialogue=ok)).dialogue == ok
    too_deep = DialogueRecord("ftp", (), Payload(b""), nested(MAX_FIELD_DEPTH + 1))
    reject(encode_attack(1, Attack(conn(), dialogue=too_deep)), "deep")


def test_remembered_flat_fields_give_each_attack_a_dict_of_its_own() -> None:
    record = DialogueRecord("raw", (1, -1), Payload(b"\n"), {"sends": 1, "x": None})
    first, second = (round_trip(Attack(conn(), dialogue=record)) for _ in range(2))
    assert first.dialogue is not None and second.dialogue is not None
    assert first.dialogue.fields == second.dialogue.fields == {"sends": 1, "x": None}
    first.dialogue.fields["sends"] = 2
    assert second.dialogue.fields == {"sends": 1, "x": None}
    nested = DialogueRecord("tls", (), Payload(b""), {"tls": {"version": "1.2"}})
    third, fourth = (round_trip(Attack(conn(), dialogue=nested)) for _ in range(2))
    assert third.dialogue is not None and fourth.dialogue is not None
    assert third.dialogue.fields["tls"] is not fourth.dialogue.fields["tls"]
    assert third.dialogue.fields == fourth.dialogue.fields == {"tls": {"version": "1.2"}}


def test_remembered_names_stay_bounded_and_decode_to_what_was_sent() -> None:
    """A server sending ever new protocols, dialogue names and sensor addresses (a compromised
    one) fills the names' memory up to its bound only; each attack still decodes whole."""
    for n in range(NAMES_REMEMBERED * 2):
        record = DialogueRecord(f"d{n}", (1,), Payload(b""), {})
        sent = Attack(Connection(f"p{n}", f"198.18.{n // 250}.{n % 250}", 80, "198.18.0.2", 1,
                                 Payload(b"x")), dialogue=record)
        assert state(round_trip(sent)) == state(sent)
        assert len(wire._NAMES) <= NAMES_REMEMBERED
    # A remembered name's bytes changed into non-ASCII ones are refused, as before.
    frame = encode_attack(1, Attack(conn(), dialogue=DialogueRecord("raw", (), Payload(b""))))
    decode_one(frame)
    reject(frame.replace(b"198.18.0.1", b"198.18.0\xc3\xa9"), "not valid ascii")
    reject(frame.replace(b"tcp", b"t\xc3\xa9"), "not valid ascii")
    reject(frame.replace(b"raw", b"r\xc3\xa9"), "not valid ascii")


def test_note_count_beyond_the_body_is_refused() -> None:
    reject(patched(NOTES_COUNT_AT, "<I", 2**32 - 1), "cannot fit")
    reject(patched(NOTES_COUNT_AT, "<I", 5), "overruns")


def test_invalid_utf8_and_non_ascii_addresses_are_refused() -> None:
    attack = Attack(conn(), id="abcd", notes=["é"])
    frame = encode_attack(1, attack)
    reject(frame.replace("é".encode(), b"\xff\xfe"), "not valid utf-8")
    reject(frame.replace(b"abcd", b"ab\xc3("), "not valid utf-8")
    reject(frame.replace(b"198.18.0.2", b"198.18.0\xc3\xa9"), "not valid ascii")


# --- hypothesis -----------------------------------------------------------------------------

ASCII = st.text(st.characters(max_codepoint=127), max_size=50)
PORTS = st.integers(0, 65535)
# Any float the codec accepts: finite, 0..MAX_TIME (NaN, infinities and the rest are refused by
# both ends, tested above); bit-exact round trip, -0.0 included.
TIMES = st.floats(0.0, MAX_TIME, allow_nan=False)
CONNECTIONS = st.builds(Connection, ASCII, ASCII, PORTS, ASCII, PORTS,
                        st.builds(Payload, st.binary(max_size=2000)))
# JSON values as a dialogue's record() gives them (after attack.jsonable): finite numbers.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
DIALOGUES = st.builds(
    DialogueRecord, ASCII, st.lists(st.integers(-2**63, 2**63 - 1), max_size=8).map(tuple),
    st.builds(Payload, st.binary(max_size=500)),
    st.dictionaries(st.text(max_size=10), JSON, max_size=4))
ATTACKS = st.builds(
    Attack, attack_connection=CONNECTIONS, mode=st.sampled_from(Mode), start_time=TIMES,
    end_time=TIMES, proxy_connection=st.none() | CONNECTIONS, is_virtual=st.booleans(),
    id=st.text(max_size=64), notes=st.lists(st.text(max_size=200), max_size=5),
    dialogue=st.none() | DIALOGUES)


@settings(max_examples=500, deadline=None)
@given(ATTACKS, st.integers(0, 2**64 - 1))
def test_any_attack_round_trips(attack: Attack, seq: int) -> None:
    decoded = round_trip(attack, seq)
    assert state(decoded) == state(attack)
    assert math.copysign(1, decoded.start_time) == math.copysign(1, attack.start_time)


def test_decoded_records_have_every_field_their_classes_give() -> None:
    """The decoder makes its records without their classes' __init__ (attack.made_*): a field
    added to a class must be set there too, in the same order (Attack's instance dicts share
    their keys), and the attack must take notes, downloads and analysis as any other."""
    decoded = round_trip(TYPICAL["dialogue"])
    made = Attack(conn())
    assert list(vars(decoded)) == list(vars(made)) == [f.name for f in dataclasses.fields(Attack)]
    assert decoded.dialogue is not None
    assert list(vars(decoded.dialogue)) == [f.name for f in dataclasses.fields(DialogueRecord)]
    for record in (decoded.attack_connection, decoded.dialogue.sent):
        for name in type(record).__slots__:
            if name != "__dict__":
                getattr(record, name)  # every slot set (AttributeError otherwise)
    decoded.add_note("n")
    decoded.set_analysis("p", 1)
    decoded.add_download_try(DownloadTry("http", "http://x/", "x", 80, "failed"))
    assert (decoded.notes, decoded.analysis, len(decoded.download_tries)) == (["n"], {"p": 1}, 1)
    assert (decoded.downloads, decoded.parent) == ([], None)
    other = round_trip(TYPICAL["dialogue"])
    assert other.notes is not decoded.notes and other._lock is not decoded._lock


@pytest.mark.parametrize("count", [0, 1, SMALL_TURNS, SMALL_TURNS + 1, 1024])
def test_dialogue_turns_round_trip_whatever_their_count(count: int) -> None:
    turns = tuple((-1) ** i * (i + 1) * 2**40 for i in range(count))
    attack = Attack(conn(), start_time=1.0, dialogue=DialogueRecord("raw", turns))
    decoded = round_trip(attack)
    assert decoded.dialogue is not None and decoded.dialogue.turns == turns


def test_acks_only_are_taken_whole_anything_else_goes_to_the_reader() -> None:
    acks = b"".join(encode_ack(seq) for seq in (3, 1, 2**64 - 1))
    assert ack_seqs(acks) == [3, 1, 2**64 - 1]
    assert ack_seqs(b"") == []
    assert ack_seqs(acks[:-1]) is None  # a frame cut
    assert ack_seqs(encode_attack(1, TYPICAL["ipv4"])) is None
    wrong_type = bytearray(acks)
    wrong_type[4] = 1
    assert ack_seqs(bytes(wrong_type)) is None
    wrong_length = bytearray(acks)
    wrong_length[13] = 9
    assert ack_seqs(bytes(wrong_length)) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | st.lists(st.integers(0, 2**64 - 1), max_size=6).map(
    lambda seqs: b"".join(encode_ack(seq) for seq in seqs)))
def test_acks_taken_whole_are_what_the_reader_decodes(data: bytes) -> None:
    seqs = ack_seqs(data)
    if seqs is not None:
        assert FrameReader().feed(data) == [("ack", seq, None) for seq in seqs]


@settings(max_examples=300, deadline=None)
@given(CONNECTIONS, TIMES, TIMES, st.text(max_size=64), st.lists(st.text(max_size=200), max_size=5),
       DIALOGUES, st.integers(0, 2**64 - 1))
def test_normal_attack_encoded_from_its_figures_is_the_frame_of_its_attack(
        connection: Connection, start: float, end: float, ident: str, notes: list[str],
        dialogue: DialogueRecord, seq: int) -> None:
    """A server encodes its normal-mode attacks without an Attack (encode_normal): the same
    bytes as encode_attack, so the recorder decodes the same record."""
    attack = Attack(connection, mode=Mode.NORMAL, start_time=start, end_time=end, id=ident,
                    notes=list(notes), dialogue=dialogue)
    bare = Connection(connection.protocol, connection.local_addr, connection.local_port,
                      connection.remote_addr, connection.remote_port)
    frame = encode_normal(seq, ident, bare, connection.payload.data, start, end,
                          dialogue.protocol, list(dialogue.turns), dialogue.sent.data,
                          dialogue.fields, notes)
    assert frame == encode_attack(seq, attack)


def test_normal_attack_encoder_refuses_what_encode_attack_refuses() -> None:
    def normal(connection: Connection | None = None, start: float = 1.0, note: str = "",
               max_frame: int = MAX_FRAME) -> bytes:
        return encode_normal(1, "id", connection or conn(), b"x" * 500, start, start, "raw",
                             [500], b"", {}, [note], max_frame=max_frame)

    with pytest.raises(WireError, match="times"):
        normal(start=math.inf)
    with pytest.raises(WireError, match="not ascii"):
        normal(conn(remote="198.18.0.ü"))
    with pytest.raises(WireError, match="not utf-8"):
        normal(note="lone \udc80 surrogate")
    with pytest.raises(WireError, match="70000 is not in 0..65535"):
        normal(conn(lport=70000))
    with pytest.raises(WireError, match="over the limit of 500"):
        normal(max_frame=500)


@settings(max_examples=100, deadline=None)
@given(st.lists(ATTACKS, min_size=1, max_size=5), st.data())
def test_any_split_of_any_stream_decodes_the_same(attacks: list[Attack], data: st.DataObject
                                                  ) -> None:
    frames = b"".join(encode_attack(i, a) + encode_ack(i) for i, a in enumerate(attacks))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(frames)), max_size=10)))
    reader = FrameReader()
    messages = []
    for start, stop in zip([0, *cuts], [*cuts, len(frames)], strict=True):
        messages += reader.feed(frames[start:stop])
    assert reader.pending() == 0
    expected = [m for i, a in enumerate(attacks)
                for m in (("attack", i, state(a)), ("ack", i, None))]
    assert comparable(messages) == expected


def feed_hostile(reader: FrameReader, pieces: list[bytes]) -> None:
    """Feed everything; only WireError may escape, and after one every feed raises it."""
    failed = False
    for piece in pieces:
        try:
            messages = reader.feed(piece)
        except WireError:
            failed = True
            continue
        assert not failed, "a feed after a WireError returned normally"
        for kind, _seq, attack in messages:
            assert kind in ("attack", "ack")
            assert (attack is None) == (kind == "ack")
        assert 0 <= reader.pending() <= MAX_FRAME + HEADER


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_give_messages_or_wire_error(pieces: list[bytes]) -> None:
    feed_hostile(FrameReader(), pieces)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([1, 2]), st.binary(max_size=400))
def test_well_framed_garbage_body_gives_message_or_wire_error(kind: int, body: bytes) -> None:
    feed_hostile(FrameReader(), [struct.pack("<IB", len(body), kind) + body])


@settings(max_examples=500, deadline=None)
@given(ATTACKS, st.data())
def test_mutated_attack_frame_gives_message_or_wire_error(attack: Attack,
                                                          data: st.DataObject) -> None:
    frame = bytearray(encode_attack(1, attack) + encode_ack(2))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    feed_hostile(FrameReader(), [bytes(frame[:cut]), bytes(frame[cut:])])


def test_normal_attack_encoder_without_notes_refuses_the_same() -> None:
    """Most normal-mode frames have no notes: their one-piece encoding (_normal_frame) refuses
    what the general one does, with the same messages."""

    def normal(connection: Connection | None = None, start: float = 1.0, name: str = "raw",
               fields: dict[str, Any] | None = None, max_frame: int = MAX_FRAME) -> bytes:
        return encode_normal(1, "id", connection or conn(), b"x" * 500, start, start, name,
                             [500], b"", {} if fields is None else fields, [],
                             max_frame=max_frame)

    with pytest.raises(WireError, match="times"):
        normal(start=math.inf)
    with pytest.raises(WireError, match="not ascii"):
        normal(conn(remote="198.18.0.ü"))
    with pytest.raises(WireError, match="not ascii"):
        normal(name="rāw")
    with pytest.raises(WireError, match="not encodable"):
        normal(fields={"x": math.nan})
    with pytest.raises(WireError, match="70000 is not in 0..65535"):
        normal(conn(lport=70000))
    with pytest.raises(WireError, match="over the limit of 500"):
        normal(max_frame=500)
