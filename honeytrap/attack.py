"""The attack record: what one connection (or one UDP exchange) to a dynamic server produced.

The connection part is complete and immutable once the connection ends; analysis plugins only
add downloads, download tries and notes, through the methods below (thread-safe: plugins run in
a worker pool off the connection path). A *virtual* attack is derived from another by decoding
its payload (b64Decode, deUnicode); what is found in it is attached to the root attack too.

`to_json` is the one canonical serialisation (T-Pot's attackers.json shape, see README.md, Outputs),
used by logJSON, hpfeeds and the spools, so every output agrees.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from honeytrap import entropy
from honeytrap.filetype import file_type
from honeytrap.jsontext import dict_text, escape, iso, list_text, str_text, text


class Mode(enum.Enum):
    """Operation modes. The values are the original's PORTCONF_* numbers, which T-Pot's
    attackers.json carries in `operation_mode`; keeping them keeps existing ELK mappings valid."""

    NONE = 0
    NORMAL = 1
    IGNORE = 2
    MIRROR = 4
    PROXY = 8

    @property
    def label(self) -> str:
        # Not self.name.lower(): Enum's name is a slow descriptor, and every output line
        # names its attack's mode (logAttacker, logJSON).
        return _MODE_LABELS[self._value_]


_MODE_LABELS = {mode.value: mode.name.lower() for mode in Mode}
# The hashes of no bytes, made once (hashlib's set-up cost 1.4 us for MD5, 2.9 for SHA-512, of
# nothing).
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# Payloads whose MD5 and SHA-512 (the two the line logs print for every attack) are remembered,
# by their bytes: attackers send the same bytes again and again (a scanner's probe, a worm's
# exploit, no bytes at all), and the two digests of 200 bytes cost ~18,000 instructions (3-4 us)
# where looking them up costs ~1,000. Only payloads up to DIGESTS_MAX_BYTES, so that what is
# kept is bounded (256 KiB of payloads at most, and their digests' text); a larger payload's
# digests are made when asked for, each on its own, as before.
DIGESTS_REMEMBERED = 256
DIGESTS_MAX_BYTES = 1024


@functools.lru_cache(maxsize=DIGESTS_REMEMBERED)
def _small_digests(data: bytes) -> tuple[str, str]:
    """MD5 and SHA-512 of a small payload, in hex."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest(), hashlib.sha512(data).hexdigest()


class Payload:
    """Bytes with their size and hashes (computed once, on first use)."""

    __slots__ = ("data", "__dict__")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytes(data)

    @property
    def size(self) -> int:
        return len(self.data)

    # Hashes computed once, on first use, kept in the instance dict (functools.cached_property
    # takes a lock shared by every instance on 3.11: threads hashing big payloads waited).
    # Each written out, not through a shared helper taking a constructor: two outputs read
    # both hashes of every attack, and the helper's calls cost as much as hashing 200 bytes.
    @property
    def md5(self) -> str:
        value: str | None = self.__dict__.get("md5")
        if value is None:
            data = self.data
            if len(data) <= DIGESTS_MAX_BYTES and type(data) is bytes:  # (and b"")
                value, self.__dict__["sha512"] = _small_digests(data)
            else:
                value = hashlib.md5(data, usedforsecurity=False).hexdigest()
            self.__dict__["md5"] = value
        return value

    @property
    def sha256(self) -> str:
        value: str | None = self.__dict__.get("sha256")
        if value is None:
            data = self.data
            value = self.__dict__["sha256"] = (hashlib.sha256(data).hexdigest() if data
                                               else _EMPTY_SHA256)
        return value

    @property
    def sha512(self) -> str:
        value: str | None = self.__dict__.get("sha512")
        if value is None:
            data = self.data
            if len(data) <= DIGESTS_MAX_BYTES and type(data) is bytes:
                self.__dict__["md5"], value = _small_digests(data)
            else:
                value = hashlib.sha512(data).hexdigest()
            self.__dict__["sha512"] = value
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Payload) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"Payload({self.size} bytes, md5={self.md5})"

    def to_json(self) -> dict[str, Any]:
        return {
            "md5_hash": self.md5,
            "sha512_hash": self.sha512,
            "length": self.size,
            "data_hex": self.data.hex(),
        }


@dataclass(frozen=True, slots=True)  # one per open connection: no instance dict
class Connection:
    """One side of an attack: the attacker's connection, or our mirror/proxy connection."""

    protocol: str  # "tcp" or "udp"
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    payload: Payload = field(default_factory=Payload)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "local_ip": self.local_addr,
            "local_port": self.local_port,
            "remote_ip": self.remote_addr,
            "remote_port": self.remote_port,
            "payload": self.payload.to_json(),
        }


@dataclass(frozen=True)
class DialogueRecord:
    """How normal mode answered: the dialogue (protocol) that did, the exchange in order, and
    the dialogue's own fields (dialogue/base.py's record(): fixed key names, JSON values).

    `turns` is the exchange in order as byte counts: +n bytes from the attacker, -n bytes from
    us (the attacker's bytes themselves are attack_connection's payload, byte-exact; ours are
    `sent`). One array of numbers, so Elasticsearch maps it as one long field."""

    protocol: str  # "ftp", "http", "raw" (a raw template), "none" (nothing said), ...
    turns: tuple[int, ...] = ()
    sent: Payload = field(default_factory=Payload)
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "turns": list(self.turns),
            "sent": {"length": self.sent.size, "data_hex": self.sent.data.hex()},
            "fields": self.fields,
        }


def new_id() -> str:
    """An attack's id: uuid.uuid4().hex (a random version 4 UUID, RFC 4122 4.4), made without
    the UUID object (a third of the cost; one per attack)."""
    raw = bytearray(entropy.bytes16())
    raw[6] = raw[6] & 0x0F | 0x40  # the version, 4
    raw[8] = raw[8] & 0x3F | 0x80  # the variant, RFC 4122
    return raw.hex()


_SCALARS = frozenset((str, int, float, bool, type(None)))


def jsonable(value: Any) -> Any:
    """A dialogue's record() value as JSON: bytes as hex text, tuples as lists, keys as text."""
    if type(value) in _SCALARS:  # the common case first (exact types: a subclass goes below)
        return value
    if type(value) is dict:  # every normal-mode attack's fields: {text: scalar} mostly
        # A scalar item or text key taken as it is, not through a call (half the cost of a
        # dialogue's usual two or three fields, timeit: ~0.9 -> 0.45 us per attack).
        return {key if type(key) is str else str(key):
                item if type(item) in _SCALARS else jsonable(item)
                for key, item in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [item if type(item) in _SCALARS else jsonable(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


_NO_DIALOGUE = DialogueRecord("")


# T-Pot's attackers.json always carries proxy_connection; the C code filled an unused one with
# zeros. We keep the key (ELK mappings expect it) with the same zero values.
_NO_CONNECTION = Connection("ip", "0.0.0.0", 0, "0.0.0.0", 0)


@dataclass(frozen=True)
class Download:
    """A file fetched on the attacker's behalf (or the payload itself, type "raw")."""

    type: str  # "ftp", "tftp", "http", "raw", "vnc", ...
    remote_addr: str
    remote_port: int
    filename: str
    uri: str
    payload: Payload
    user: str = ""
    password: str = ""
    protocol: str = "tcp"
    local_addr: str = ""
    local_port: int = 0

    def to_json(self, inline: bool = False) -> dict[str, Any]:
        """The download, its sample named (hashes, size, type, the file name SaveFile keeps it
        under: downloads_dir/<md5>) rather than carried: a sample is up to 32 MiB, twice that
        as hex, on one Elastic line. `inline` adds the bytes as `data_hex` (the PostgreSQL
        store keeps the samples; logJSON's and hpfeeds' `inline_samples` option)."""
        sample = self.payload
        payload: dict[str, Any] = {
            "md5_hash": sample.md5,
            "sha256_hash": sample.sha256,
            "sha512_hash": sample.sha512,
            "length": sample.size,
            "file_type": file_type(sample.data),
            "stored_as": sample.md5,
        }
        if inline:
            payload["data_hex"] = sample.data.hex()
        return {
            "type": self.type,
            "protocol": self.protocol,
            "remote_ip": self.remote_addr,
            "remote_port": self.remote_port,
            "local_ip": self.local_addr,
            "local_port": self.local_port,
            "username": self.user,
            "password": self.password,
            "uri": self.uri,
            "filename": self.filename,
            "payload": payload,
        }


@dataclass(frozen=True)
class DownloadTry:
    """One attempt to download, whatever its outcome ("ok", "refused", "failed")."""

    type: str
    uri: str
    host: str
    port: int
    outcome: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "uri": self.uri,
            "host": self.host,
            "port": self.port,
            "outcome": self.outcome,
            "reason": self.reason,
        }


@dataclass(eq=False)
class Attack:
    """One attack. Build it with `Attack.begin(...)`, finish it with `finish(...)`."""

    attack_connection: Connection
    mode: Mode = Mode.NORMAL
    start_time: float = field(default_factory=time.time)
    end_time: float = 0.0
    proxy_connection: Connection | None = None
    dialogue: DialogueRecord | None = None  # normal mode: how the sensor answered
    is_virtual: bool = False
    parent: Attack | None = None
    id: str = field(default_factory=lambda: new_id())
    downloads: list[Download] = field(default_factory=list)
    download_tries: list[DownloadTry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Free-form per-plugin results (e.g. {"ClamAV": {...}}); written under "analysis" in JSON.
    analysis: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def root(self) -> Attack:
        attack = self
        while attack.parent is not None:
            attack = attack.parent
        return attack

    @property
    def payload(self) -> bytes:
        """The attack string: what the attacker sent."""
        return self.attack_connection.payload.data

    def derive(self, data: bytes, note: str) -> Attack:
        """A virtual attack: the same connection with a decoded payload."""
        conn = self.attack_connection
        virtual = Attack(
            attack_connection=Connection(
                conn.protocol,
                conn.local_addr,
                conn.local_port,
                conn.remote_addr,
                conn.remote_port,
                Payload(data),
            ),
            mode=self.mode,
            start_time=self.start_time,
            end_time=self.end_time,
            proxy_connection=self.proxy_connection,
            is_virtual=True,
            parent=self,
        )
        virtual.notes.append(note)
        return virtual

    def _each_up(self) -> list[Attack]:
        chain: list[Attack] = []
        attack: Attack | None = self
        while attack is not None:
            chain.append(attack)
            attack = attack.parent
        return chain

    def add_download(self, download: Download) -> None:
        """Record a download here and on every attack this one was derived from."""
        for attack in self._each_up():
            with attack._lock:
                attack.downloads.append(download)

    def add_download_try(self, attempt: DownloadTry) -> None:
        for attack in self._each_up():
            with attack._lock:
                attack.download_tries.append(attempt)

    def add_note(self, note: str) -> None:
        with self._lock:
            self.notes.append(note)

    def set_analysis(self, plugin: str, result: Any) -> None:
        with self._lock:
            self.analysis[plugin] = result

    def to_json(self, *, inline_samples: bool = False) -> dict[str, Any]:
        """T-Pot's attackers.json shape; downloads as a list (the fork flattened them), their
        samples named, not carried, unless `inline_samples` (Download.to_json)."""
        start = iso(self.start_time)
        with self._lock:
            downloads = [d.to_json(inline_samples) for d in self.downloads]
            tries = [t.to_json() for t in self.download_tries]
            notes = list(self.notes)
            analysis = dict(self.analysis)
        return {
            "@timestamp": start,
            "id": self.id,
            "start_time": start,
            "end_time": iso(self.end_time or self.start_time),
            "is_virtual": self.is_virtual,
            "operation_mode": self.mode.value,
            "operation_mode_name": self.mode.label,
            "attack_connection": self.attack_connection.to_json(),
            "proxy_connection": (self.proxy_connection or _NO_CONNECTION).to_json(),
            "dialogue": (self.dialogue or _NO_DIALOGUE).to_json(),
            "download_count": len(downloads),
            "download_tries": len(tries),
            "downloads": downloads,
            "download_attempts": tries,
            "notes": notes,
            "analysis": analysis,
        }

    def to_json_text(self, *, inline_samples: bool = False, extra: tuple[tuple[str, Any], ...]
                     = ()) -> str:
        """`json.dumps({**self.to_json(...), **dict(extra)}, separators=(",", ":"))`: the same
        text (the one line logJSON writes per attack), built directly: the dict and json's
        generic walk over it cost more than half of logJSON's time per attack. The fixed shape
        is one f-string; the values of free shape (notes, analysis, dialogue fields, downloads)
        go through jsontext. `extra` keys come after to_json's (they must not be among them).
        Guarded by tests/test_output_formats.py against json.dumps for any attack."""
        return self.json_text_open(inline_samples) + extra_text(extra) + "}"

    def json_text_open(self, inline_samples: bool = False) -> str:
        """to_json_text without its closing brace (nor extra keys): a writer that adds the same
        keys to every line appends their text, made once (extra_text), and the brace."""
        start = iso(self.start_time)
        end = iso(self.end_time) if self.end_time else start  # to_json's `end_time or start`
        # Encoded under the lock, not copied first; most attacks have no downloads, tries or
        # notes: one constant text for the three then.
        with self._lock:
            if self.downloads or self.download_tries or self.notes:
                lists = self._lists_text(inline_samples)
            else:
                lists = _NO_LISTS_TEXT
            analysis = self.analysis
            analysis_text = dict_text(analysis) if type(analysis) is dict else text(analysis)
        conn = self.attack_connection
        payload = conn.payload
        hashes = payload.__dict__  # made by logAttacker's line: read here without the property
        virtual = self.is_virtual
        proxy = self.proxy_connection
        # The usual kinds (exact str, int, bool) written here, the rest through jsontext's
        # text: a call less for each field (f"{x}" of an exact int is its repr, as json's).
        ident, protocol, local, remote = self.id, conn.protocol, conn.local_addr, conn.remote_addr
        local_port, remote_port = conn.local_port, conn.remote_port
        return (
            f'{{"@timestamp":"{start}","id":'
            f'{escape(ident) if type(ident) is str else text(ident)},"start_time":"{start}",'
            f'"end_time":"{end}","is_virtual":'
            f'{("true" if virtual else "false") if type(virtual) is bool else text(virtual)},'
            f'{_MODE_TEXT[self.mode._value_]},"attack_connection":{{"protocol":'
            f'{escape(protocol) if type(protocol) is str else text(protocol)},"local_ip":'
            f'{escape(local) if type(local) is str else text(local)},"local_port":'
            f'{local_port if type(local_port) is int else text(local_port)},"remote_ip":'
            f'{escape(remote) if type(remote) is str else text(remote)},"remote_port":'
            f'{remote_port if type(remote_port) is int else text(remote_port)},'
            f'"payload":{{"md5_hash":"{hashes.get("md5") or payload.md5}",'
            f'"sha512_hash":"{hashes.get("sha512") or payload.sha512}",'
            f'"length":{len(payload.data)},"data_hex":"{payload.data.hex()}"}}}},'
            f'"proxy_connection":'
            f'{_NO_CONNECTION_TEXT if proxy is None else _connection_text(proxy)},'
            f'"dialogue":{_dialogue_text(self.dialogue or _NO_DIALOGUE)},{lists},'
            f'"analysis":{analysis_text}'
        )

    def _lists_text(self, inline_samples: bool) -> str:
        """The downloads, tries and notes part of to_json_text (under the lock)."""
        downloads = (list_text([d.to_json(inline_samples) for d in self.downloads])
                     if self.downloads else "[]")
        tries = (list_text([t.to_json() for t in self.download_tries])
                 if self.download_tries else "[]")
        return (f'"download_count":{len(self.downloads)},'
                f'"download_tries":{len(self.download_tries)},"downloads":{downloads},'
                f'"download_attempts":{tries},"notes":{list_text(self.notes)}')

    def followup_json(
        self, when: float | None = None, *, inline_samples: bool = False
    ) -> dict[str, Any]:
        """The follow-up record of an attack recorded before its downloads ended: the same
        `id`, `"follow_up": true`, `@timestamp` the time of the follow-up, and every download,
        download try and analysis result known now (the lists are the whole lists, not only
        what is new: a reader keeps the last record per id)."""
        with self._lock:
            downloads = [d.to_json(inline_samples) for d in self.downloads]
            tries = [t.to_json() for t in self.download_tries]
            analysis = dict(self.analysis)
        return {
            "@timestamp": iso(time.time() if when is None else when),
            "id": self.id,
            "follow_up": True,
            "start_time": iso(self.start_time),
            "attack_connection": {
                key: value for key, value in self.attack_connection.to_json().items()
                if key != "payload"
            },
            "download_count": len(downloads),
            "download_tries": len(tries),
            "downloads": downloads,
            "download_attempts": tries,
            "analysis": analysis,
        }


# --- records made from decoded values (wire.py: the recorder decodes one of each per attack) ---
# What Payload(...), Connection(...), DialogueRecord(...) and Attack(...) make, without their
# __init__: a frozen dataclass's sets each field through object.__setattr__, Attack's calls a
# default factory per list, and all of them go through keyword handling. Made directly they
# cost a quarter to a half as much (timeit: Connection 1.0 -> 0.4 us, Attack 1.3 -> 0.5 us,
# DialogueRecord 0.6 -> 0.25 us; ~2.5 us of each attack the recorder decodes). For values
# already checked (types as annotated): nothing here converts or validates.
# tests/test_attack.py checks that each makes what its class makes, field for field.
_new = object.__new__
(_set_protocol, _set_local_addr, _set_local_port, _set_remote_addr, _set_remote_port,
 _set_payload) = (getattr(Connection, name).__set__ for name in (
    "protocol", "local_addr", "local_port", "remote_addr", "remote_port", "payload"))
_new_lock = threading.Lock


def made_payload(data: bytes) -> Payload:
    """Payload(data) for `data` already bytes."""
    payload: Payload = _new(Payload)
    payload.data = data
    return payload


def made_connection(protocol: str, local_addr: str, local_port: int, remote_addr: str,
                    remote_port: int, payload: Payload) -> Connection:
    """Connection(protocol, local_addr, local_port, remote_addr, remote_port, payload)."""
    conn: Connection = _new(Connection)
    _set_protocol(conn, protocol)
    _set_local_addr(conn, local_addr)
    _set_local_port(conn, local_port)
    _set_remote_addr(conn, remote_addr)
    _set_remote_port(conn, remote_port)
    _set_payload(conn, payload)
    return conn


def made_dialogue(protocol: str, turns: tuple[int, ...], sent: Payload,
                  fields: dict[str, Any]) -> DialogueRecord:
    """DialogueRecord(protocol, turns, sent, fields)."""
    record: DialogueRecord = _new(DialogueRecord)
    values = record.__dict__  # frozen: its own dict, not its __setattr__
    values["protocol"] = protocol
    values["turns"] = turns
    values["sent"] = sent
    values["fields"] = fields
    return record


def made_attack(attack_connection: Connection, mode: Mode, start_time: float, end_time: float,
                proxy_connection: Connection | None, dialogue: DialogueRecord | None,
                is_virtual: bool, ident: str, notes: list[str]) -> Attack:
    """Attack(attack_connection=..., mode=..., start_time=..., end_time=...,
    proxy_connection=..., dialogue=..., is_virtual=..., id=ident, notes=notes): no parent,
    downloads, download tries or analysis. Set in the fields' order, as __init__ does, so the
    instance dict shares its keys with every other attack's."""
    attack: Attack = _new(Attack)
    attack.attack_connection = attack_connection
    attack.mode = mode
    attack.start_time = start_time
    attack.end_time = end_time
    attack.proxy_connection = proxy_connection
    attack.dialogue = dialogue
    attack.is_virtual = is_virtual
    attack.parent = None
    attack.id = ident
    attack.downloads = []
    attack.download_tries = []
    attack.notes = notes
    attack.analysis = {}
    attack._lock = _new_lock()
    return attack


def extra_text(extra: tuple[tuple[str, Any], ...]) -> str:
    """The text of `extra` keys after the others in a JSON object: `,"key":value` each."""
    return "".join([f",{str_text(key)}:{text(value)}" for key, value in extra])


# The mode's two keys, for each mode (every line names its attack's mode).
_MODE_TEXT = {mode.value: f'"operation_mode":{mode.value},"operation_mode_name":"{mode.label}"'
              for mode in Mode}
_NO_LISTS_TEXT = ('"download_count":0,"download_tries":0,"downloads":[],"download_attempts":[],'
                  '"notes":[]')


def _connection_text(conn: Connection) -> str:
    """Connection.to_json() as json.dumps writes it."""
    payload = conn.payload
    return (
        f'{{"protocol":{str_text(conn.protocol)},"local_ip":{str_text(conn.local_addr)},'
        f'"local_port":{text(conn.local_port)},"remote_ip":{str_text(conn.remote_addr)},'
        f'"remote_port":{text(conn.remote_port)},"payload":{{"md5_hash":"{payload.md5}",'
        f'"sha512_hash":"{payload.sha512}","length":{payload.size},'
        f'"data_hex":"{payload.data.hex()}"}}}}'
    )


# The unused proxy connection's text (most attacks'): always the same.
_NO_CONNECTION_TEXT = _connection_text(_NO_CONNECTION)


def _dialogue_text(record: DialogueRecord) -> str:
    """DialogueRecord.to_json() as json.dumps writes it."""
    fields = record.fields
    sent = record.sent.data
    protocol = record.protocol
    return (
        f'{{"protocol":{escape(protocol) if type(protocol) is str else text(protocol)},'
        f'"turns":{list_text(record.turns)},"sent":{{"length":{len(sent)},'
        f'"data_hex":"{sent.hex()}"}},'
        f'"fields":{dict_text(fields) if type(fields) is dict else text(fields)}}}'
    )
