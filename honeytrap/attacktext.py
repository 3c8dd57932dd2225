"""An attack as the one line of JSON logJSON writes for it (attack.py's to_json_text): the
text json.dumps makes of Attack.to_json(), built directly.

Split from attack.py (by concept). The dict and json's generic walk over it cost more than half
of logJSON's time per attack; here the fixed shape is one f-string and the values of free shape
(notes, analysis, dialogue fields, downloads) go through jsontext. Guarded by
tests/test_output_formats.py against json.dumps for any attack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from honeytrap.attackparts import NO_CONNECTION, NO_DIALOGUE, Connection, DialogueRecord, Mode
from honeytrap.jsontext import dict_text, escape, iso, list_text, str_text, text

if TYPE_CHECKING:
    from honeytrap.attack import Attack


def json_text_open(attack: Attack, inline_samples: bool = False, close: str = "") -> str:
    """to_json_text without its closing brace (nor extra keys), then `close`: a writer that
    adds the same keys to every line gives their text, made once (extra_text), the brace and
    what follows (logJSON: its newline) as `close`, written in the same text (a line's ~1.5 KB
    not copied once more to add them)."""
    start = iso(attack.start_time)
    end = iso(attack.end_time) if attack.end_time else start  # to_json's `end_time or start`
    # Encoded under the lock, not copied first; most attacks have no downloads, tries or
    # notes: one constant text for the three then.
    with attack._lock:
        if attack.downloads or attack.download_tries or attack.notes:
            lists = _lists_text(attack, inline_samples)
        else:
            lists = _NO_LISTS_TEXT
        analysis = attack.analysis
        analysis_text = dict_text(analysis) if type(analysis) is dict else text(analysis)
    conn = attack.attack_connection
    payload = conn.payload
    hashes = payload.__dict__  # made by logAttacker's line: read here without the property
    virtual = attack.is_virtual
    proxy = attack.proxy_connection
    # The usual kinds (exact str, int, bool) written here, the rest through jsontext's
    # text: a call less for each field (f"{x}" of an exact int is its repr, as json's).
    ident, protocol, local, remote = attack.id, conn.protocol, conn.local_addr, conn.remote_addr
    local_port, remote_port = conn.local_port, conn.remote_port
    return (
        f'{{"@timestamp":"{start}","id":'
        f'{escape(ident) if type(ident) is str else text(ident)},"start_time":"{start}",'
        f'"end_time":"{end}","is_virtual":'
        f'{("true" if virtual else "false") if type(virtual) is bool else text(virtual)},'
        f'{_MODE_TEXT[attack.mode._value_]},"attack_connection":{{"protocol":'
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
        f'"dialogue":{_dialogue_text(attack.dialogue or NO_DIALOGUE)},{lists},'
        f'"analysis":{analysis_text}{close}'
    )

def _lists_text(attack: Attack, inline_samples: bool) -> str:
    """The downloads, tries and notes part of to_json_text (under the lock)."""
    downloads = (list_text([d.to_json(inline_samples) for d in attack.downloads])
                 if attack.downloads else "[]")
    tries = (list_text([t.to_json() for t in attack.download_tries])
             if attack.download_tries else "[]")
    return (f'"download_count":{len(attack.downloads)},'
            f'"download_tries":{len(attack.download_tries)},"downloads":{downloads},'
            f'"download_attempts":{tries},"notes":{list_text(attack.notes)}')


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
_NO_CONNECTION_TEXT = _connection_text(NO_CONNECTION)


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
