"""The wire format between a dynamic server and the recorder: finished attacks one way, acks back.

A dynamic server hands each *finished* attack to the recorder process (which runs the plugins)
over a Unix stream socket; the recorder acknowledges it by sequence number. This module is the
codec only (bytes in, messages out; no sockets), so it is tested and fuzzed without a network.

The recorder must not trust these bytes: a compromised server process (it runs unprivileged and
talks to attackers) must not get code execution, or a crash, in the recorder. Hence no pickle or
marshal: fixed `struct` layouts, every length checked against what is left of its frame, and
only `WireError` escapes the decoder.

Frame (all integers little-endian, both ends are the same host and the same code):

    header   u32 body length (the bytes after the header), u8 type
    ack      body: u64 seq
    attack   body: u64 seq, u8 mode (Mode's value), u8 flags (1: is_virtual, 2: has proxy,
                   4: has dialogue),
                   f64 start_time, f64 end_time, u32 id length, u32 note count,
                   attack_connection's fixed part: u32 lengths of protocol, local_addr,
                   remote_addr, payload, then u16 local_port, u16 remote_port,
                   then the id, and the protocol, local_addr, remote_addr, payload bytes;
                   if flag 2: proxy_connection, the same fixed part and bytes;
                   if flag 4: the dialogue record: u32 lengths of protocol, sent, fields, u32
                   turn count, then the protocol (ASCII), i64 per turn, the sent bytes, and
                   the fields as UTF-8 JSON (an object);
                   then per note: u32 length, UTF-8 bytes

Strings: the id and notes are UTF-8 (notes may hold text from the configuration or templates);
protocol and addresses are ASCII (IP address literals and "tcp"/"udp"). A new layout gets new
type codes, so an old reader refuses it instead of misreading it.

What is not carried: `downloads`, `download_tries`, `analysis` and `parent`. A server hands an
attack over before any plugin ran, so they are empty; `encode_attack` refuses an attack where they
are not (they would be lost silently otherwise).

Times must be finite and within what `datetime` can show (0 to the end of year 9999): `to_json`
turns them into ISO dates, and a NaN or 1e300 from a compromised server must not make every
output plugin fail on that record. The encoder refuses what the decoder would refuse, so a
well-behaved server never breaks the stream.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .attack import (
    Attack,
    Connection,
    DialogueRecord,
    Mode,
    Payload,
    made_attack,
    made_connection,
    made_dialogue,
    made_payload,
)

# The largest frame body accepted. An attack carries at most read_limit bytes of payload on each
# of its two connections (read_limit is configurable, 20 MiB in the shipped configuration), plus
# a few hundred bytes of fields and notes. A larger read_limit needs a larger bound, passed to
# both ends as max_frame (at most 4 GiB - 1, the u32 length prefix). The bound is what a
# compromised server can make the recorder buffer per connection.
MAX_FRAME = 64 * 1024 * 1024
# The latest time accepted, 9999-12-31T23:59:59Z: the last second datetime (to_json) can show.
MAX_TIME = 253402300799.0

_TYPE_ATTACK = 1
_TYPE_ACK = 2

_FLAG_VIRTUAL = 1
_FLAG_PROXY = 2
_FLAG_DIALOGUE = 4
_KNOWN_FLAGS = _FLAG_VIRTUAL | _FLAG_PROXY | _FLAG_DIALOGUE

_MODES = {mode.value: mode for mode in Mode}
_NORMAL = Mode.NORMAL.value

_HEADER = struct.Struct("<IB")
_ACK_BODY = struct.Struct("<Q")
_ACK_FRAME = struct.Struct("<IBQ")
# A connection's fixed part: lengths of protocol, local_addr, remote_addr, payload; the ports.
_CONN_FORMAT = "IIIIHH"
_CONNECTION = struct.Struct("<" + _CONN_FORMAT)
_ATTACK_FORMAT = "QBBddII" + _CONN_FORMAT
_ATTACK_BODY = struct.Struct("<" + _ATTACK_FORMAT)
# Header and fixed fields in one call when encoding.
_ATTACK_FRAME = struct.Struct("<IB" + _ATTACK_FORMAT)
_LENGTH = struct.Struct("<I")
_DIALOGUE = struct.Struct("<IIII")
_TURN = struct.Struct("<q")
# The turns' layouts for the usual counts (up to SMALL_TURNS; most connections have a few),
# compiled once: struct.pack / unpack_from with a format made per attack ("<{n}q") looked it up in
# struct's cache by its text each time (~0.4 us of each attack's encoding, timeit).
SMALL_TURNS = 16
_TURNS = tuple(struct.Struct(f"<{count}q") for count in range(SMALL_TURNS + 1))


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _fields_encoder() -> Callable[[Any], str]:
    """The dialogue's fields as compact JSON, as json.dumps(fields, separators=(",", ":"),
    allow_nan=False) writes them (TypeError, ValueError alike), at a third of its cost: dumps
    builds an encoder and json's C encoder on every call; this keeps one C encoder. Without the
    circular-reference check: the fields come from attack.jsonable, which makes fresh containers
    of what it is given (a cycle would never get that far)."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]  # None without _json
    if make is None:
        return json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    encode = make(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",",
                  False, False, False)
    return lambda fields: "".join(encode(fields, 0))


_FIELDS_JSON = _fields_encoder()

# A dialogue's fields nest a few levels (TLS: {"tls": {...}}); deeper is a compromised server.
MAX_FIELD_DEPTH = 8
# Small flat dialogue fields repeat from attack to attack (a raw template's {"sends": 1}): their
# decoding (json.loads and the depth check, 4 us) is remembered for this many texts of at most
# FIELDS_REMEMBERED_BYTES each (a bounded cache whatever a server sends).
FIELDS_REMEMBERED = 64
FIELDS_REMEMBERED_BYTES = 256
# The texts of the ASCII strings that repeat from attack to attack (the protocols, the dialogue's
# name, the sensor's own addresses) are remembered by their bytes, up to this many (then new ones
# are decoded each time): one str for all their attacks, not a new one each (and the outputs'
# lookups of it hash it once). Not the attacker's address, which varies. Bounded whatever a
# server sends.
NAMES_REMEMBERED = 64


class Endpoints(Protocol):
    """A connection's two ends as a frame carries them: an attack.Connection, or a normal-mode
    TCP connection's handler itself (normal.py: no Connection made for its record)."""

    @property
    def protocol(self) -> str: ...
    @property
    def local_addr(self) -> str: ...
    @property
    def local_port(self) -> int: ...
    @property
    def remote_addr(self) -> str: ...
    @property
    def remote_port(self) -> int: ...


class WireError(ValueError):
    """A malformed frame or record (the message says what), or an attack that cannot be encoded
    faithfully."""


Message = tuple[str, int, Attack | None]


def encode_ack(seq: int) -> bytes:
    """One complete frame acknowledging seq."""
    try:
        return _ACK_FRAME.pack(_ACK_BODY.size, _TYPE_ACK, seq)
    except struct.error as exc:
        raise WireError(f"sequence number {seq!r} is not a u64") from exc


def ack_seqs(data: bytes) -> list[int] | None:
    """The sequence numbers acknowledged by `data` when it is whole, well-formed ack frames and
    nothing else (what a server reads from its link, almost always), in order; None otherwise
    (FrameReader then decodes it, and refuses what is malformed). A server reads an ack per
    connection: this takes each for a fraction of FrameReader's messages (~1 us, measured)."""
    if len(data) % _ACK_FRAME.size:
        return None
    seqs = []
    for length, kind, seq in _ACK_FRAME.iter_unpack(data):
        if length != _ACK_BODY.size or kind != _TYPE_ACK:
            return None
        seqs.append(seq)
    return seqs


def encode_attack(seq: int, attack: Attack, *, max_frame: int = MAX_FRAME) -> bytes:
    """One complete frame (length prefix included) carrying `attack` with sequence number seq.

    Raises WireError (a ValueError) for what the frame cannot carry: downloads, download tries,
    analysis or a parent; times out of range; ports out of 0..65535; a non-ASCII protocol or
    address, a lone surrogate in the id or a note; a frame body over max_frame."""
    try:
        return _encode_attack(seq, attack, max_frame)
    except UnicodeEncodeError as exc:
        raise WireError(f"attack {attack.id!r}: a string is not {exc.encoding}: "
                        f"{exc.reason}") from exc


def _encode_attack(seq: int, attack: Attack, max_frame: int) -> bytes:
    if attack.downloads or attack.download_tries or attack.analysis or attack.parent:
        raise WireError(f"attack {attack.id!r}: downloads, download tries, analysis and parent are "
                        "not carried; hand an attack over before plugins ran")
    conn = attack.attack_connection
    extra: tuple[bytes, ...] = ()
    flags = _FLAG_VIRTUAL if attack.is_virtual else 0
    if attack.proxy_connection is not None:
        flags |= _FLAG_PROXY
        extra = _connection_parts(attack.proxy_connection)
    if attack.dialogue is not None:
        flags |= _FLAG_DIALOGUE
        record = attack.dialogue
        extra += _dialogue_parts(record.protocol, record.turns, record.sent.data, record.fields)
    return _frame(seq, attack.id, attack.mode.value, flags, attack.start_time, attack.end_time,
                  conn, conn.payload.data, extra, tuple(attack.notes), max_frame)


def encode_normal(seq: int, ident: str, conn: Endpoints, payload: bytes, start: float,
                  end: float, dialogue: str, turns: Sequence[int], sent: bytes,
                  fields: dict[str, Any], notes: Sequence[str], *,
                  max_frame: int = MAX_FRAME) -> bytes:
    """The frame encode_attack makes of a normal-mode attack with this id, connection's ends
    (with `payload`), times, dialogue record (protocol, turns, sent, fields) and
    notes, byte for byte, without the Attack, its Connection, Payloads and DialogueRecord made
    first (a server process finishes one per connection: ~4 us of its CPU, measured). The
    same WireError for what the frame cannot carry."""
    try:
        if notes or not (0.0 <= start <= MAX_TIME and 0.0 <= end <= MAX_TIME):
            # Notes, and the refusal of bad times (said in _frame's order of checks).
            extra = _dialogue_parts(dialogue, turns, sent, fields)
            return _frame(seq, ident, _NORMAL, _FLAG_DIALOGUE, start, end, conn, payload,
                          extra, notes, max_frame)
        return _normal_frame(seq, ident, conn, payload, start, end, dialogue, turns, sent,
                             fields, max_frame)
    except UnicodeEncodeError as exc:
        raise WireError(f"attack {ident!r}: a string is not {exc.encoding}: "
                        f"{exc.reason}") from exc


def _normal_frame(seq: int, ident: str, conn: Endpoints, payload: bytes, start: float,
                  end: float, dialogue: str, turns: Sequence[int], sent: bytes,
                  fields: dict[str, Any], max_frame: int) -> bytes:
    """_frame(..., _dialogue_parts(...), no notes) in one piece, the same checks in the same
    order (most connections' frame: ~1 us less than building it in parts, timeit)."""
    name = dialogue.encode("ascii")
    text, packed = _fields_and_turns(fields, turns)
    ident_bytes = ident.encode()
    protocol = conn.protocol.encode("ascii")
    local = conn.local_addr.encode("ascii")
    remote = conn.remote_addr.encode("ascii")
    length = (_ATTACK_BODY.size + len(ident_bytes) + len(protocol) + len(local) + len(remote)
              + len(payload) + _DIALOGUE.size + len(name) + len(packed) + len(sent) + len(text))
    if length > max_frame:
        raise WireError(f"attack {ident!r}: frame body of {length} bytes is over the "
                        f"limit of {max_frame}")
    try:
        head = _ATTACK_FRAME.pack(
            length, _TYPE_ATTACK, seq, _NORMAL, _FLAG_DIALOGUE, start, end, len(ident_bytes), 0,
            len(protocol), len(local), len(remote), len(payload), conn.local_port,
            conn.remote_port)
    except struct.error as exc:
        raise WireError(f"attack {ident!r}: {_unencodable(seq, conn)}") from exc
    return b"".join((head, ident_bytes, protocol, local, remote, payload,
                     _DIALOGUE.pack(len(name), len(sent), len(text), len(turns)), name, packed,
                     sent, text))


def _frame(seq: int, ident: str, mode: int, flags: int, start: float, end: float,
           conn: Endpoints, payload: bytes, extra: tuple[bytes, ...], notes: Sequence[str],
           max_frame: int) -> bytes:
    """The frame: fixed fields, the attack connection (with `payload`), `extra` (the proxy
    connection's and the dialogue record's parts, as flags say), the notes."""
    if not (0.0 <= start <= MAX_TIME and 0.0 <= end <= MAX_TIME):
        raise WireError(f"attack {ident!r}: times must be within 0..{MAX_TIME}, "
                        f"not {start!r}, {end!r}")
    ident_bytes = ident.encode()
    protocol = conn.protocol.encode("ascii")
    local = conn.local_addr.encode("ascii")
    remote = conn.remote_addr.encode("ascii")
    parts = [b"", ident_bytes, protocol, local, remote, payload, *extra]
    for note in notes:
        data = note.encode()
        parts += (_LENGTH.pack(len(data)), data)
    length = _ATTACK_BODY.size + sum(map(len, parts))
    if length > max_frame:
        raise WireError(f"attack {ident!r}: frame body of {length} bytes is over the "
                        f"limit of {max_frame}")
    try:
        parts[0] = _ATTACK_FRAME.pack(
            length, _TYPE_ATTACK, seq, mode, flags, start, end, len(ident_bytes),
            len(notes), len(protocol), len(local), len(remote), len(payload),
            conn.local_port, conn.remote_port)
    except struct.error as exc:
        raise WireError(f"attack {ident!r}: {_unencodable(seq, conn)}") from exc
    return b"".join(parts)


def _connection_parts(conn: Connection) -> tuple[bytes, ...]:
    protocol = conn.protocol.encode("ascii")
    local = conn.local_addr.encode("ascii")
    remote = conn.remote_addr.encode("ascii")
    payload = conn.payload.data
    try:
        fixed = _CONNECTION.pack(len(protocol), len(local), len(remote), len(payload),
                                 conn.local_port, conn.remote_port)
    except struct.error as exc:
        raise WireError(f"proxy connection ports {conn.local_port!r}, {conn.remote_port!r} "
                        "are not in 0..65535") from exc
    return fixed, protocol, local, remote, payload


def _fields_and_turns(fields: dict[str, Any], turns: Sequence[int]) -> tuple[bytes, bytes]:
    """A dialogue record's fields as JSON and its turns packed, or the WireError saying why not."""
    try:
        text = _FIELDS_JSON(fields).encode()
        count = len(turns)
        packed = (_TURNS[count].pack(*turns) if count <= SMALL_TURNS
                  else struct.pack(f"<{count}q", *turns))
    except (TypeError, ValueError, struct.error) as exc:
        raise WireError(f"dialogue record not encodable: {exc}") from exc
    return text, packed


def _dialogue_parts(name: str, turns: Sequence[int], sent: bytes,
                    fields: dict[str, Any]) -> tuple[bytes, ...]:
    protocol = name.encode("ascii")
    text, packed = _fields_and_turns(fields, turns)
    fixed = _DIALOGUE.pack(len(protocol), len(sent), len(text), len(turns))
    return fixed, protocol, packed, sent, text


def _unencodable(seq: int, conn: Endpoints) -> str:
    """Which field made struct refuse (the slow path, for the message only)."""
    if not 0 <= seq < 1 << 64:
        return f"sequence number {seq!r} is not a u64"
    for port in (conn.local_port, conn.remote_port):
        if not 0 <= port <= 0xFFFF:
            return f"port {port!r} is not in 0..65535"
    return "a length does not fit in u32"


class FrameReader:
    """Incremental decoder for a byte stream: feed(data) -> list of messages, where a message is
    ("attack", seq, Attack) or ("ack", seq, None).

    Raises WireError on a malformed frame (length over max_frame, unknown type, truncated or
    garbage body, trailing bytes in a body) - a length over the bound as soon as the header is
    in, before buffering the body. After an error the reader is unusable: the stream is out of
    sync (or its peer is hostile), every later feed raises WireError, and the caller must close
    the connection. Messages decoded in the same feed before the bad frame are lost with it;
    their sender gets no ack for them.
    """

    def __init__(self, *, max_frame: int = MAX_FRAME) -> None:
        self._max_frame = max_frame
        # The incomplete frame. BytesIO, not bytearray: a large frame arrives in many pieces,
        # and bytearray's appends copied it over and over (40 times slower for 1 MiB in 64 KiB
        # pieces, measured); a list of pieces would cost an object per byte fed one at a time.
        self._buffer = io.BytesIO()
        self._buffered = 0
        # How many bytes must be buffered before the next frame can be complete.
        self._need = _HEADER.size
        self._error: WireError | None = None

    def pending(self) -> int:
        """Bytes buffered of an incomplete frame."""
        return self._buffered

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        if self._error is not None:
            raise WireError(f"reader unusable after an earlier error: {self._error}")
        if self._buffered:
            self._buffered += self._buffer.write(data)
            if self._buffered < self._need:
                return []
            data = self._buffer.getvalue()
            self._buffer = io.BytesIO()  # getvalue shared its bytes: start a new buffer
            self._buffered = 0
        else:
            data = bytes(data)  # no copy for bytes; a memoryview of a read buffer is copied
        try:
            messages, used = self._parse(data)
        except WireError as exc:
            self._error = exc
            raise
        if used < len(data):
            self._buffered = self._buffer.write(memoryview(data)[used:])
        return messages

    def _parse(self, data: bytes) -> tuple[list[Message], int]:
        """The complete frames at the start of data, and how many bytes they took."""
        messages: list[Message] = []
        pos = 0
        size = len(data)
        while size - pos >= _HEADER.size:
            length, kind = _HEADER.unpack_from(data, pos)
            if length > self._max_frame:
                raise WireError(f"frame body of {length} bytes is over the limit of "
                                f"{self._max_frame}")
            decode = _DECODERS.get(kind)
            if decode is None:
                raise WireError(f"unknown frame type {kind}")
            end = pos + _HEADER.size + length
            if end > size:
                self._need = end - pos
                return messages, pos
            messages.append(decode(data, pos + _HEADER.size, end))
            pos = end
        self._need = _HEADER.size
        return messages, pos


def _decode_ack(data: bytes, pos: int, end: int) -> Message:
    if end - pos != _ACK_BODY.size:
        raise WireError(f"ack body of {end - pos} bytes, not {_ACK_BODY.size}")
    return "ack", _ACK_BODY.unpack_from(data, pos)[0], None


def _decode_attack(data: bytes, pos: int, end: int) -> Message:
    """An attack frame's body. Its connection and their payload are made here
    (attackparts.made_connection's and payload.made_payload's way, without their calls), not
    through _decode_connection (the recorder decodes every attack: ~0.6 us of its ~4 in a loop,
    more in the recorder); the attack and its dialogue record by made_attack and made_dialogue,
    the one copy of each one's fields."""
    try:
        if end - pos < _ATTACK_BODY.size:
            raise WireError(f"attack body of {end - pos} bytes is shorter than its fixed fields")
        (seq, mode_value, flags, start, finish, id_length, note_count, protocol_length,
         local_length, remote_length, payload_length, local_port,
         remote_port) = _ATTACK_BODY.unpack_from(data, pos)
        mode = _MODES.get(mode_value)
        if mode is None:
            raise WireError(f"unknown mode {mode_value}")
        if flags & ~_KNOWN_FLAGS:
            raise WireError(f"unknown flags {flags:#x}")
        if not (0.0 <= start <= MAX_TIME and 0.0 <= finish <= MAX_TIME):
            raise WireError(f"times {start!r}, {finish!r} are not within 0..{MAX_TIME}")
        pos += _ATTACK_BODY.size
        stop = pos + id_length
        if stop > end:
            raise WireError(f"id of {id_length} bytes overruns the body")
        ident = data[pos:stop].decode()
        # The attack connection (_decode_connection's, inline).
        local_at = stop + protocol_length
        remote_at = local_at + local_length
        payload_at = remote_at + remote_length
        pos = payload_at + payload_length
        if pos > end:
            raise WireError("connection strings and payload overrun the body")
        payload: Payload = _new(Payload)
        payload.data = data[payload_at:pos]
        connection: Connection = _new(Connection)
        name = data[stop:local_at]
        _set_protocol(connection, _NAMES.get(name) or _name(name))
        name = data[local_at:remote_at]
        _set_local_addr(connection, _NAMES.get(name) or _name(name))
        _set_local_port(connection, local_port)
        _set_remote_addr(connection, data[remote_at:payload_at].decode("ascii"))
        _set_remote_port(connection, remote_port)
        _set_payload(connection, payload)
        proxy = None
        if flags & _FLAG_PROXY:
            if end - pos < _CONNECTION.size:
                raise WireError("proxy connection's fixed fields overrun the body")
            fixed = _CONNECTION.unpack_from(data, pos)
            pos, proxy = _decode_connection(data, pos + _CONNECTION.size, end, *fixed)
        dialogue = None
        if flags & _FLAG_DIALOGUE:
            pos, dialogue = _decode_dialogue(data, pos, end)
        notes: list[str] = []
        if note_count:
            pos = _decode_notes(data, pos, end, note_count, notes)
        if pos != end:
            raise WireError(f"{end - pos} trailing bytes after the attack")
    except UnicodeDecodeError as exc:
        raise WireError(f"attack string not valid {exc.encoding}: {exc.reason}") from exc
    # made_attack's field list is the one copy of it (a field added to Attack goes there).
    attack = made_attack(connection, mode, start, finish, proxy, dialogue,
                         bool(flags & _FLAG_VIRTUAL), ident, notes)
    return "attack", seq, attack


def _decode_connection(data: bytes, pos: int, end: int, protocol_length: int,
                       local_length: int, remote_length: int, payload_length: int,
                       local_port: int, remote_port: int) -> tuple[int, Connection]:
    local_at = pos + protocol_length
    remote_at = local_at + local_length
    payload_at = remote_at + remote_length
    stop = payload_at + payload_length
    if stop > end:
        raise WireError("connection strings and payload overrun the body")
    connection = made_connection(data[pos:local_at].decode("ascii"),
                                 data[local_at:remote_at].decode("ascii"), local_port,
                                 data[remote_at:payload_at].decode("ascii"), remote_port,
                                 made_payload(data[payload_at:stop]))
    return stop, connection


def _decode_dialogue(data: bytes, pos: int, end: int) -> tuple[int, DialogueRecord]:
    if end - pos < _DIALOGUE.size:
        raise WireError("dialogue record's fixed fields overrun the body")
    protocol_length, sent_length, fields_length, turn_count = _DIALOGUE.unpack_from(data, pos)
    pos += _DIALOGUE.size
    turns_at = pos + protocol_length
    sent_at = turns_at + turn_count * _TURN.size
    fields_at = sent_at + sent_length
    stop = fields_at + fields_length
    if stop > end:
        raise WireError("dialogue record overruns the body")
    name = data[pos:turns_at]
    protocol = _NAMES.get(name) or _name(name)
    # One unpack for all the turns (struct keeps the compiled formats of recent counts).
    turns = (_TURNS[turn_count].unpack_from(data, turns_at) if turn_count < len(_TURNS)
             else struct.unpack_from(f"<{turn_count}q", data, turns_at))
    raw = data[fields_at:stop]
    fields: dict[str, Any]
    if raw == b"{}":  # many dialogues record no fields
        fields = {}
    elif len(raw) <= FIELDS_REMEMBERED_BYTES and (flat := _flat_fields(raw)) is not None:
        fields = flat.copy()  # a new dict per attack; its values are immutable
    else:
        fields = _decode_fields(raw)
    return stop, made_dialogue(protocol, turns, made_payload(data[sent_at:fields_at]), fields)


def _name(raw: bytes) -> str:
    """An ASCII string's text (UnicodeDecodeError if it is not), remembered while fewer than
    NAMES_REMEMBERED are (_NAMES: read without a call)."""
    text = raw.decode("ascii")
    if len(_NAMES) < NAMES_REMEMBERED:
        _NAMES[raw] = text
    return text


_NAMES: dict[bytes, str] = {}


@functools.lru_cache(maxsize=FIELDS_REMEMBERED)
def _flat_fields(raw: bytes) -> dict[str, Any] | None:
    """The fields if no value is a container (so copies cannot share anything mutable), to be
    copied (never handed out: a dict's copy costs half of one made from its items); None
    otherwise. WireError (not remembered) as _decode_fields."""
    fields = _decode_fields(raw)
    if any(isinstance(value, dict | list) for value in fields.values()):
        return None
    return fields


def _decode_fields(raw: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:
        raise WireError(f"dialogue fields are not JSON: {exc}") from exc
    if not isinstance(fields, dict) or _depth(fields) > MAX_FIELD_DEPTH:
        raise WireError(f"dialogue fields must be an object at most {MAX_FIELD_DEPTH} deep")
    return fields


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_FIELD_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) \
        else ()
    deepest = level
    for child in children:  # a leaf counts as a level too
        depth = _depth(child, level + 1) if isinstance(child, dict | list) else level + 1
        if depth > deepest:
            deepest = depth
    return deepest


def _decode_notes(data: bytes, pos: int, end: int, count: int, notes: list[str]) -> int:
    """Append count notes to notes; return where they end."""
    if count * _LENGTH.size > end - pos:
        raise WireError(f"{count} notes cannot fit in the {end - pos} bytes left")
    for _ in range(count):
        if end - pos < _LENGTH.size:
            raise WireError("note length overruns the body")
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        stop = pos + length
        if stop > end:
            raise WireError(f"note of {length} bytes overruns the body")
        notes.append(data[pos:stop].decode())
        pos = stop
    return pos


_DECODERS = {_TYPE_ATTACK: _decode_attack, _TYPE_ACK: _decode_ack}
# What the decoder makes its records with, inline (attack.py's made_attack says why).
_new = object.__new__
(_set_protocol, _set_local_addr, _set_local_port, _set_remote_addr, _set_remote_port,
 _set_payload) = (getattr(Connection, name).__set__ for name in (
    "protocol", "local_addr", "local_port", "remote_addr", "remote_port", "payload"))
