"""The fast text of the output plugins and Attack.to_json is exactly the plain formatting it
replaced: each reference below is the earlier code, kept as the oracle."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import socket
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_output_plugins import PLUGIN_DIR, START, load, make_attack, run_hook

from honeytrap import jsontext, outfile
from honeytrap.attack import (
    Attack,
    Connection,
    DialogueRecord,
    Download,
    DownloadTry,
    Mode,
    Payload,
)
from honeytrap.jsontext import iso
from honeytrap.plugin import load_module

LOGATTACKER = load_module(PLUGIN_DIR, "logAttacker")
SAVEFILE = load_module(PLUGIN_DIR, "SaveFile")

# Every float: negative, zero, huge, NaN and infinities included (the plain code raised for
# some; the fast code must raise for the same ones).
ANY_TIME = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
# Times a few seconds apart, as attacks arrive: the remembered seconds are used again.
NEARBY_TIMES = st.lists(st.floats(min_value=START - 5, max_value=START + 5), max_size=50)
# Hard cases for rounding to the millisecond or microsecond, and the ends of the years we can
# write (datetime stops at 9999-12-31, its year 1 starts at -62135596800).
EDGES = [0.0, -0.0, 0.9999995, 0.99999949, -0.0000005, -0.5, -1.0, 1e-7, 5e-7, 1.5e-6,
         START + 0.9995, START + 0.9999995, START + 0.99999949, 253402300799.9999995,
         253402300799.999, -62135596800.0, -62135596800.0000005, 1e300, -1e300]


def outcome(function: Callable[[float], str], when: float) -> str | None:
    """The text, or None for a time it cannot write. Both codes must agree on which times
    those are; not on the error (OverflowError or OSError for a year no gmtime can hold)."""
    try:
        return function(when)
    except (ValueError, OverflowError, OSError):
        return None


# --- Attack.to_json's time (datetime.fromtimestamp's rounding) -------------------------------


def plain_iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@settings(max_examples=2000, deadline=None)
@given(ANY_TIME)
def test_iso_is_the_datetime_text_for_any_time(when: float) -> None:
    for edge in EDGES:
        assert outcome(iso, edge) == outcome(plain_iso, edge), edge
    assert outcome(iso, when) == outcome(plain_iso, when)


@settings(deadline=None)
@given(NEARBY_TIMES)
def test_iso_is_the_datetime_text_for_times_in_a_row(times: list[float]) -> None:
    assert [iso(t) for t in times] == [plain_iso(t) for t in times]


# Fractions of a second where the rounding to the microsecond carries (or nearly) into the
# next millisecond or second: iso's quick way (a time in the second written last) must agree.
CARRY_FRACTIONS = [0.0, 0.0004995, 0.0009995, 0.00099949, 0.0009994999, 0.0015, 0.1235, 0.4995,
                   0.5, 0.9989995, 0.9994999, 0.9995, 0.99949999, 0.9999995, 0.99999949,
                   0.9999999999]


@settings(max_examples=1000, deadline=None)
@given(st.integers(1, 253402300798), st.floats(0, 1, exclude_max=True)
       | st.sampled_from(CARRY_FRACTIONS), st.integers(0, 999).map(lambda n: n / 1000))
def test_iso_of_a_time_in_the_second_written_last_is_the_datetime_text(
    second: int, fraction: float, other: float,
) -> None:
    """iso's quick way for a time in the second it wrote last: after any time of that
    second, then after the whole second itself (an int too)."""
    for primer in (second + other, second, float(second)):
        assert iso(primer) == plain_iso(primer)
        for when in (second + fraction, float(second), second):
            assert iso(when) == plain_iso(when), (primer, when)


def test_iso_rounds_to_the_microsecond_before_it_cuts_to_the_millisecond() -> None:
    """As datetime: .9999995 is the next second, not .999 of this one."""
    assert iso(0.9999995) == "1970-01-01T00:00:01.000Z"
    assert iso(-0.0000005) == "1970-01-01T00:00:00.000Z"


# --- logAttacker's and SaveFile's times (time.gmtime: toward minus infinity) -----------------


def plain_stamp(layout: str, when: float) -> str:
    return time.strftime(layout, time.gmtime(when))


def plain_timestamp(when: float) -> str:
    millis = int(when * 1000) % 1000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) + f".{millis:03d}"


@settings(max_examples=2000, deadline=None)
@given(ANY_TIME)
@example(-0.5)
@example(START + 0.9995)
def test_logattacker_time_is_the_strftime_text_for_any_time(when: float) -> None:
    assert outcome(LOGATTACKER._timestamp, when) == outcome(plain_timestamp, when)


@settings(deadline=None)
@given(NEARBY_TIMES)
def test_logattacker_time_is_the_strftime_text_for_times_in_a_row(times: list[float]) -> None:
    assert [LOGATTACKER._timestamp(t) for t in times] == [plain_timestamp(t) for t in times]


@settings(max_examples=1000, deadline=None)
@given(st.integers(-2, 253402300798), st.floats(0, 1, exclude_max=True)
       | st.sampled_from(CARRY_FRACTIONS + [0.001, 0.0009999999, 0.999, 0.9989999999]),
       st.integers(0, 999).map(lambda n: n / 1000))
def test_logattacker_time_in_the_second_written_last_is_the_strftime_text(
    second: int, fraction: float, other: float,
) -> None:
    """_timestamp's quick way for a time in the second it wrote last (negative ones: never)."""
    for primer in (second + other, second, float(second)):
        assert LOGATTACKER._timestamp(primer) == plain_timestamp(primer)
        for when in (second + fraction, float(second), second, second - fraction):
            assert LOGATTACKER._timestamp(when) == plain_timestamp(when), (primer, when)


@settings(max_examples=1000, deadline=None)
@given(ANY_TIME, st.sampled_from(["%Y-%m-%dT%H%M%S", "%Y-%m-%d %H:%M:%S", "%s|%j|%a"]))
def test_utc_formatter_is_strftime_of_gmtime(when: float, layout: str) -> None:
    fast = outfile.utc_formatter(layout)
    for edge in EDGES:
        assert outcome(fast, edge) == outcome(lambda t: plain_stamp(layout, t), edge), edge
    assert outcome(fast, when) == outcome(lambda t: plain_stamp(layout, t), when)


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=-62135596800, max_value=253402300799))
def test_savefile_name_has_the_strftime_time(when: float) -> None:
    attack = make_attack(start=when)
    stamp = plain_stamp("%Y-%m-%dT%H%M%S", when)
    assert SAVEFILE.attack_file_name(attack) == f"from_port_80-tcp_{stamp}_{attack.id}"


def plain_ident(ident: str) -> str:
    """SaveFile's id part as it was: the id if it is 1 to 64 ASCII letters and digits."""
    if re.fullmatch(r"[A-Za-z0-9]{1,64}", ident):
        return ident
    return hashlib.sha256(ident.encode()).hexdigest()


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits, max_size=70)
       | st.text(max_size=70))
@example("")
@example("a" * 64)
@example("a" * 65)
@example("\u00e9t\u00e9")
@example("\u0661\u0662")  # Arabic-Indic digits: isalnum, not ASCII
def test_savefile_name_takes_the_id_as_its_regex_did(ident: str) -> None:
    attack = make_attack()
    attack.id = ident
    stamp = plain_stamp("%Y-%m-%dT%H%M%S", START)
    expected = f"from_port_80-tcp_{stamp}_{plain_ident(ident)}"
    assert SAVEFILE.attack_file_name(attack) == expected


# --- logAttacker's addresses ------------------------------------------------------------------


def plain_endpoint(addr: str, port: int) -> str:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return f"?:{int(port)}"
    if ip.version == 6:
        return f"[{ip}]:{int(port)}"
    return f"{ip}:{int(port)}"


def spellings(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """Ways an address may be written: inet_ntop's (the kernel's), ipaddress's, in full, in
    upper case, with a scope."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    kernel = socket.inet_ntop(family, ip.packed)
    return [kernel, str(ip), ip.exploded, kernel.upper(), f"{kernel}%eth0"]


@settings(max_examples=1000)
@given(st.ip_addresses())
@example(ipaddress.ip_address("::ffff:1.2.3.4"))
@example(ipaddress.ip_address("::1.2.3.4"))
@example(ipaddress.ip_address("64:ff9b::1.2.3.4"))
def test_logattacker_writes_every_address_as_ipaddress_does(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    for text in spellings(ip):
        assert LOGATTACKER._endpoint(text, 80) == plain_endpoint(text, 80), text


@settings(max_examples=1000)
@given(st.text(alphabet="0123456789abcdefABCDEF:.%x \n\x00\u0661", max_size=45) | st.text())
@example("1.2.3.04")
@example("01.2.3.4")
@example("1.2.3")
@example("::ffff:0:1.2.3.4")
@example("\ud800")
def test_logattacker_writes_any_other_text_as_ipaddress_judges_it(text: str) -> None:
    assert LOGATTACKER._endpoint(text, 80) == plain_endpoint(text, 80)


@given(st.ip_addresses())
def test_the_fast_path_takes_the_kernels_forms_and_agrees_with_ipaddress(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """inet_ntop's text skips ipaddress (but for IPv6 with a dotted IPv4 part, which ipaddress
    writes in hex): what it accepts is exactly what ipaddress writes."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    kernel = socket.inet_ntop(family, ip.packed)
    fast = LOGATTACKER._canonical(kernel)
    if ip.version == 6 and "." in kernel:
        assert fast is None
    else:
        assert fast == kernel == str(ip)


@given(st.text())
def test_the_fast_path_accepts_only_what_ipaddress_writes(text: str) -> None:
    fast = LOGATTACKER._canonical(text)
    if fast is not None:
        assert fast == text == str(ipaddress.ip_address(text))


def test_logattacker_writes_ipv4_mapped_ipv6_as_ipaddress_does() -> None:
    """The log has always had ipaddress's text, ::ffff:102:304 on this Python (3.13 writes
    ::ffff:1.2.3.4): the kernel's ::ffff:1.2.3.4 is not copied as it is."""
    expected = f"[{ipaddress.ip_address('::ffff:1.2.3.4')}]:80"
    assert LOGATTACKER._endpoint("::ffff:1.2.3.4", 80) == expected


def plain_line(attack: Attack) -> str:
    """logAttacker's line as it was written before its texts were made once."""
    conn = attack.attack_connection
    payload = conn.payload
    count = len(attack.downloads)
    word = conn.protocol if conn.protocol.isascii() and conn.protocol.isalnum() else "?"
    return (
        f"[{plain_timestamp(attack.start_time)} GMT] {attack.mode.name.lower()} {word} "
        f"{plain_endpoint(conn.remote_addr, conn.remote_port)} -> "
        f"{plain_endpoint(conn.local_addr, conn.local_port)} "
        f"{payload.md5} {payload.sha512} ({payload.size} bytes) "
        f"{count} download{'' if count == 1 else 's'}\n"
    )


ADDRESS_TEXTS = st.ip_addresses().map(str) | st.sampled_from(["192.0.2.1", "::1", "fe80::1%eth0",
                                                               "x", ""])


@settings(max_examples=500, deadline=None)
@given(ADDRESS_TEXTS, st.integers(0, 65535), ADDRESS_TEXTS, st.integers(0, 65535),
       st.sampled_from(["tcp", "udp", "ip", "t c", "\u00e9", ""]), st.sampled_from(list(Mode)),
       st.floats(0, 253402300799.0), st.integers(0, 20), st.binary(max_size=64))
def test_logattacker_line_is_the_plain_formatting(
    local: str, local_port: int, remote: str, remote_port: int, protocol: str, mode: Mode,
    start: float, downloads: int, data: bytes,
) -> None:
    conn = Connection(protocol, local, local_port, remote, remote_port, Payload(data))
    attack = Attack(conn, mode=mode, start_time=start)
    for n in range(downloads):
        attack.downloads.append(Download("http", "203.0.113.9", 80, "x", f"http://x/{n}",
                                         Payload(b"MZ")))
    assert LOGATTACKER.format_line(attack) == plain_line(attack)


# --- SaveFile's other names, logJSON's bytes --------------------------------------------------


def test_savefile_saves_under_the_next_free_name_when_its_name_exists(tmp_path: Path) -> None:
    options = {"attacks_dir": str(tmp_path / "attacks"), "downloads_dir": str(tmp_path / "dl")}
    registry = load(("SaveFile", options))
    attack = make_attack(b"new")
    name = SAVEFILE.attack_file_name(attack)
    (tmp_path / "attacks" / name).write_bytes(b"left over")
    (tmp_path / "attacks" / f"{name}.1").write_bytes(b"left over too")
    run_hook(registry, "savedata", attack)
    registry.close()
    assert (tmp_path / "attacks" / name).read_bytes() == b"left over"
    assert (tmp_path / "attacks" / f"{name}.2").read_bytes() == b"new"
    assert attack.analysis["SaveFile"]["attack_file"] == f"{tmp_path}/attacks/{name}.2"


def test_logjson_line_is_json_dumps_of_to_json_byte_for_byte(tmp_path: Path) -> None:
    registry = load(("logJSON", {"logfile": str(tmp_path / "attackers.json")}))
    conn = Connection("tcp", "2001:db8::1", 80, "198.51.100.7", 40001, Payload(b"\x00\xff\xe9"))
    attack = Attack(conn, mode=Mode.PROXY, start_time=START, end_time=START + 0.9999995,
                    proxy_connection=Connection("udp", "192.0.2.1", 1, "192.0.2.2", 2))
    attack.add_download(Download("http", "203.0.113.9", 80, "\u00e9.exe", "http://x/\u2603",
                                 Payload(b"MZ")))
    attack.add_download_try(DownloadTry("ftp", "ftp://x/", "x", 21, "failed", "why\n\x00"))
    attack.add_note("note \u00e9 \"quoted\" \\")
    attack.set_analysis("Other", {"float": 0.1, "nan": math.nan, "list": [1, None, True]})
    run_hook(registry, "postproc", attack)
    registry.close()
    doc = {**attack.to_json(), "sensor_id": ""}  # the sensor's id: none in this Config
    expected = json.dumps(doc, separators=(",", ":")) + "\n"
    assert (tmp_path / "attackers.json").read_bytes() == expected.encode("ascii")


# --- Attack.to_json_text (logJSON's line) is json.dumps of to_json ---------------------------

TEXT = st.text()  # any code point, lone surrogates included: json escapes them all
LEAVES = (st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | TEXT)
# What plugins put in analysis and dialogues in fields: any JSON-able value, keys json turns
# into text (numbers, booleans, None) included.
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(TEXT | st.integers() | st.floats() | st.booleans() | st.none(), inner,
                      max_size=3),
    max_leaves=8,
)


class _Number(int):
    pass


@settings(max_examples=1000, deadline=None)
@given(VALUES)
@example({True: [None, (1, 2.5)], None: {}, 1.5: "x"})
@example([_Number(7), {"k": _Number(8)}, math.inf, -math.inf, math.nan, -0.0, 1e300])
@example({"a": {"b": {"c": ["\ud800", "\x00\"\\", "\u2603"]}}, "": []})
def test_jsontext_is_json_dumps_of_any_value(value: object) -> None:
    assert jsontext.text(value) == json.dumps(value, separators=(",", ":"))


PORTS = st.integers(0, 65535)
CONNECTIONS = st.builds(Connection, TEXT, TEXT, PORTS, TEXT, PORTS, st.builds(Payload, st.binary()))
DIALOGUES = st.builds(DialogueRecord, TEXT, st.lists(st.integers(-(2**63), 2**63 - 1)).map(tuple),
                      st.builds(Payload, st.binary()),
                      st.dictionaries(TEXT, VALUES, max_size=3) | VALUES)
DOWNLOADS = st.builds(Download, TEXT, TEXT, PORTS, TEXT, TEXT, st.builds(Payload, st.binary()),
                      TEXT, TEXT, TEXT, TEXT, PORTS)
TRIES = st.builds(DownloadTry, TEXT, TEXT, TEXT, PORTS, TEXT, TEXT)
TIMES = st.floats(0, 253402300799.0)


@settings(max_examples=500, deadline=None)
@given(CONNECTIONS, st.sampled_from(list(Mode)), TIMES, TIMES | st.just(0.0),
       st.none() | CONNECTIONS, st.none() | DIALOGUES, st.booleans(), TEXT,
       st.lists(DOWNLOADS, max_size=2), st.lists(TRIES, max_size=2), st.lists(TEXT, max_size=3),
       st.dictionaries(TEXT, VALUES, max_size=3), st.booleans(), VALUES)
def test_to_json_text_is_json_dumps_of_to_json(
    conn: Connection, mode: Mode, start: float, end: float, proxy: Connection | None,
    dialogue: DialogueRecord | None, virtual: bool, ident: str, downloads: list[Download],
    tries: list[DownloadTry], notes: list[str], analysis: dict[str, object], inline: bool,
    sensor: object,
) -> None:
    attack = Attack(conn, mode=mode, start_time=start, end_time=end, proxy_connection=proxy,
                    dialogue=dialogue, is_virtual=virtual, id=ident, downloads=downloads,
                    download_tries=tries, notes=notes, analysis=analysis)
    doc = {**attack.to_json(inline_samples=inline), "sensor_id": sensor}
    expected = json.dumps(doc, separators=(",", ":"))
    text = attack.to_json_text(inline_samples=inline, extra=(("sensor_id", sensor),))
    assert text == expected
