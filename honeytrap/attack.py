"""The attack record: what one connection (or one UDP exchange) to a dynamic server produced.

The connection part is complete and immutable once the connection ends; analysis plugins only
add downloads, download tries and notes, through the methods below (thread-safe: plugins run in
a worker pool off the connection path). A *virtual* attack is derived from another by decoding
its payload (b64Decode, deUnicode); what is found in it is attached to the root attack too.

`to_json` is the one canonical serialisation (T-Pot's attackers.json shape, see README.md, Outputs),
used by logJSON, hpfeeds and the spools, so every output agrees; `to_json_text` its text
(attacktext.py). The parts an attack holds are in attackparts.py, its bytes in payload.py (both
named here too, where the code has always found them).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from honeytrap import attacktext, entropy
from honeytrap.attackparts import (
    NO_CONNECTION,
    NO_DIALOGUE,
    Connection,
    DialogueRecord,
    Download,
    DownloadTry,
    Mode,
    jsonable,
    made_connection,
    made_dialogue,
)
from honeytrap.attacktext import extra_text
from honeytrap.jsontext import iso
from honeytrap.payload import DIGESTS_MAX_BYTES, DIGESTS_REMEMBERED, Payload, made_payload

__all__ = [
    "DIGESTS_MAX_BYTES",
    "DIGESTS_REMEMBERED",
    "Attack",
    "Connection",
    "DialogueRecord",
    "Download",
    "DownloadTry",
    "Mode",
    "Payload",
    "extra_text",
    "jsonable",
    "made_attack",
    "made_connection",
    "made_dialogue",
    "made_payload",
    "new_id",
]


def new_id() -> str:
    """An attack's id: uuid.uuid4().hex (a random version 4 UUID, RFC 4122 4.4), made without
    the UUID object (a third of the cost; one per attack)."""
    raw = bytearray(entropy.bytes16())
    raw[6] = raw[6] & 0x0F | 0x40  # the version, 4
    raw[8] = raw[8] & 0x3F | 0x80  # the variant, RFC 4122
    return raw.hex()


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
            "proxy_connection": (self.proxy_connection or NO_CONNECTION).to_json(),
            "dialogue": (self.dialogue or NO_DIALOGUE).to_json(),
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
        return self.json_text_open(inline_samples, extra_text(extra) + "}")

    # to_json_text without its closing brace (nor extra keys), then what it is given to close
    # with (attacktext.py's): a writer that adds the same keys to every line gives their text,
    # made once (extra_text), and the brace.
    json_text_open = attacktext.json_text_open

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
_new_lock = threading.Lock


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

