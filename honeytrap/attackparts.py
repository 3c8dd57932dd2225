"""The parts of an attack record (attack.py's Attack holds them): the port's operation mode,
the connections, how normal mode answered (the dialogue record), downloads and download tries.

Split from attack.py (by concept). Each part has its to_json (attackers.json's shape); the
made_* here build a part without its __init__, for the recorder's decoder (wire.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from honeytrap.filetype import file_type
from honeytrap.payload import Payload


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


NO_DIALOGUE = DialogueRecord("")


# T-Pot's attackers.json always carries proxy_connection; the C code filled an unused one with
# zeros. We keep the key (ELK mappings expect it) with the same zero values.
NO_CONNECTION = Connection("ip", "0.0.0.0", 0, "0.0.0.0", 0)



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



# --- parts made from decoded values (attack.py's made_attack says why) ---
_new = object.__new__
(_set_protocol, _set_local_addr, _set_local_port, _set_remote_addr, _set_remote_port,
 _set_payload) = (getattr(Connection, name).__set__ for name in (
    "protocol", "local_addr", "local_port", "remote_addr", "remote_port", "payload"))
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

