"""attack.made_*: the recorder's direct constructors make what the classes' __init__ make.

wire.py decodes every attack through them (they skip the frozen dataclasses' __setattr__ and
Attack's default factories), so any field they forgot or set differently would reach every
plugin and output; each is compared with its class field for field, on arbitrary values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from honeytrap import payload as payload_module
from honeytrap.attack import (
    DIGESTS_MAX_BYTES,
    DIGESTS_REMEMBERED,
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

texts = st.text(max_size=20)
ports = st.integers(min_value=0, max_value=65535)
payloads = st.binary(max_size=64)
times = st.floats(min_value=0, max_value=2**32, allow_nan=False)


@st.composite
def connections(draw: st.DrawFn) -> tuple[tuple[object, ...], bytes]:
    values = (draw(st.sampled_from(["tcp", "udp"])), draw(texts), draw(ports), draw(texts),
              draw(ports))
    return values, draw(payloads)


def fields_of(record: object) -> dict[str, object]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)  # type: ignore[arg-type]
            if f.name != "_lock"}


@given(payloads)
def test_made_payload_is_a_payload_of_the_same_bytes(data: bytes) -> None:
    made = made_payload(data)
    assert type(made) is Payload
    assert made == Payload(data)
    built = Payload(data)
    assert (made.md5, made.sha512, made.size) == (built.md5, built.sha512, len(data))


# Around the size up to which a payload's MD5 and SHA-512 are remembered (payload.py), with the
# same bytes coming back (a remembered payload) or not.
BOUND_SIZES = st.integers(DIGESTS_MAX_BYTES - 2, DIGESTS_MAX_BYTES + 2)
SMALL_OR_BOUND = st.binary(max_size=8) | BOUND_SIZES.flatmap(
    lambda size: st.binary(min_size=size, max_size=size))


@settings(max_examples=300)
@given(st.lists(st.tuples(SMALL_OR_BOUND, st.permutations(["md5", "sha256", "sha512"])),
                max_size=8), st.integers(0, 3))
def test_remembered_digests_are_hashlibs_in_any_order_again_and_again(
    reads: list[tuple[bytes, list[str]]], again: int,
) -> None:
    """Each payload's hashes read in any order, its bytes again (remembered then) or new, in
    a Payload or a bytearray's copy of them: always hashlib's of the bytes."""
    for data, order in reads * (again + 1):
        for payload in (Payload(data), made_payload(data), Payload(bytearray(data))):
            expected = {"md5": hashlib.md5(data).hexdigest(),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "sha512": hashlib.sha512(data).hexdigest()}
            assert {name: getattr(payload, name) for name in order} == expected


def test_remembering_digests_is_bounded() -> None:
    """More distinct small payloads than are remembered: each still gets its own digests."""
    datas = [n.to_bytes(4, "big") for n in range(DIGESTS_REMEMBERED * 3)]
    for data in datas + datas[:5]:
        payload = made_payload(data)
        assert (payload.sha512, payload.md5) == (hashlib.sha512(data).hexdigest(),
                                                 hashlib.md5(data).hexdigest())
    assert payload_module._small_digests.cache_info().currsize == DIGESTS_REMEMBERED
    big = made_payload(bytes(DIGESTS_MAX_BYTES + 1))
    assert big.md5 == hashlib.md5(big.data).hexdigest()
    assert payload_module._small_digests.cache_info().currsize == DIGESTS_REMEMBERED
    assert "sha512" not in big.__dict__  # a large payload's digests are made when asked for


@given(st.one_of(st.just(b""), payloads))
def test_payload_hashes_are_hashlibs(data: bytes) -> None:
    """The empty payload's hashes are made once (payload.py), any other's by hashlib."""
    for payload in (Payload(data), made_payload(data)):
        assert (payload.md5, payload.sha256, payload.sha512) == (
            hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest(),
            hashlib.sha512(data).hexdigest())


@given(connections())
def test_made_connection_is_the_connection_init_makes(
        values: tuple[tuple[object, ...], bytes]) -> None:
    fixed, data = values
    made = made_connection(*fixed, made_payload(data))  # type: ignore[arg-type]
    built = Connection(*fixed, Payload(data))  # type: ignore[arg-type]
    assert type(made) is Connection
    assert made == built
    assert fields_of(made) == fields_of(built)
    assert made.to_json() == built.to_json()


@given(texts, st.lists(st.integers(min_value=-10**6, max_value=10**6), max_size=6), payloads,
       st.dictionaries(texts, st.one_of(st.integers(), texts, st.none()), max_size=4))
def test_made_dialogue_is_the_record_init_makes(protocol: str, turns: list[int], sent: bytes,
                                               values: dict[str, object]) -> None:
    made = made_dialogue(protocol, tuple(turns), made_payload(sent), values)
    built = DialogueRecord(protocol, tuple(turns), Payload(sent), values)
    assert type(made) is DialogueRecord
    assert made == built
    assert vars(made) == vars(built)


@given(connections(), st.sampled_from(list(Mode)), times, times, st.booleans(), st.booleans(),
       st.booleans(), texts, st.lists(texts, max_size=3))
def test_made_attack_is_the_attack_init_makes(
        values: tuple[tuple[object, ...], bytes], mode: Mode, start: float, end: float,
        proxied: bool, answered: bool, virtual: bool, ident: str, notes: list[str]) -> None:
    fixed, data = values
    conn = Connection(*fixed, Payload(data))  # type: ignore[arg-type]
    proxy = Connection("tcp", "198.18.0.1", 1, "198.18.0.2", 2, Payload(b"x")) if proxied else None
    dialogue = DialogueRecord("ftp", (3, -4), Payload(b"220 "), {"user": "a"}) if answered else None
    made = made_attack(conn, mode, start, end, proxy, dialogue, virtual, ident, list(notes))
    built = Attack(attack_connection=conn, mode=mode, start_time=start, end_time=end,
                   proxy_connection=proxy, dialogue=dialogue, is_virtual=virtual, id=ident,
                   notes=list(notes))
    assert type(made) is Attack
    assert fields_of(made) == fields_of(built)
    # Set in the fields' order, as __init__ does: the instance dicts share one key table.
    assert list(vars(made)) == list(vars(built))
    assert type(made._lock) is type(threading.Lock())
    assert made._lock is not built._lock
    assert made.to_json() == built.to_json()
    # Lists of its own, not shared with another attack's.
    other = made_attack(conn, mode, start, end, proxy, dialogue, virtual, ident, [])
    assert made.downloads is not other.downloads and made.analysis is not other.analysis
