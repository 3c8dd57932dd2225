"""logAttacker: one line per attack in a log file (the original's logAttacker).

Option: `logfile`. At POSTPROC (after the download plugins, so the download count is final),
for every attack that is not virtual (as the original: a virtual attack is part of its root):

    [2024-05-01 12:00:00.123 GMT] normal tcp 198.51.100.7:40001 -> 192.0.2.1:80 \
        <md5> <sha512> (42 bytes) 0 downloads          (one line; broken here for width)

The original's fields (time, protocol, attacker -> sensor, MD5, SHA-512, size) plus the mode
and the download count. The time is the attack's start, not the time of logging. IPv6
addresses are bracketed. Nothing in the line comes from attacker bytes: addresses are
re-rendered from their parsed form, the payload appears only as its hashes and size.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import socket
from collections.abc import Sequence

from honeytrap import outfile
from honeytrap.attack import Attack, Mode
from honeytrap.plugin import PluginContext

# Addresses whose rendering is remembered: the sensor's own few, and attackers' recent ones
# (an attacker usually comes back many times in a row).
ADDRESSES_REMEMBERED = 256


class LogAttacker(outfile.LineLog):
    def line(self, attack: Attack) -> bytes:
        return format_line(attack).encode("ascii")

    def lines(self, attacks: Sequence[Attack]) -> list[bytes]:
        """A batch's lines (postproc_batch), made here rather than by a line() call each."""
        return [format_line(attack).encode("ascii") for attack in attacks
                if not attack.is_virtual]


def format_line(attack: Attack) -> str:
    conn = attack.attack_connection
    payload = conn.payload
    count = len(attack.downloads)
    protocol = conn.protocol
    when = attack.start_time
    remote, remote_port = _host_text(conn.remote_addr), conn.remote_port
    # _endpoint's text made here, not through its call (one line per attack); the hashes are
    # made here first (logJSON reads them after).
    return (
        f"[{_timestamp(when)} GMT] "
        f"{_MODE_WORDS[attack.mode._value_]} "
        f"{protocol if protocol in _PROTOCOLS else _word(protocol)} "
        f"{remote}:{remote_port if type(remote_port) is int else int(remote_port)} -> "
        f"{_local_endpoint(conn.local_addr, conn.local_port)} "
        f"{payload.md5} {payload.sha512} ({len(payload.data)} bytes) "
        f"{_DOWNLOADS[count] if count < _COUNTS_MADE else _downloads(count)}\n"
    )


# The text of each whole second (a float time's: math.floor(when), as time.gmtime rounds it).
_second = outfile.utc_second_formatter("%Y-%m-%d %H:%M:%S")
# Texts made once rather than per line: the mode's word, the usual protocols (_word's answer
# for them is themselves), the download counts most attacks have, a time's milliseconds.
_MODE_WORDS = {mode.value: mode.label for mode in Mode}
_PROTOCOLS = frozenset({"tcp", "udp"})
_COUNTS_MADE = 16


def _downloads(count: int) -> str:
    return f"{count} download{'' if count == 1 else 's'}"


_DOWNLOADS = tuple(_downloads(count) for count in range(_COUNTS_MADE))
_DOT_MILLIS = tuple(f".{millis:03d}" for millis in range(1000))
# By the number as an int or an integral float (which hashes and compares as its int).
_DOT_MILLIS_BY_VALUE = {float(millis): text for millis, text in enumerate(_DOT_MILLIS)}
# The second _timestamp wrote last, and its text (any second will do to start with).
_last_second: tuple[float, str] = (0.0, _second(0))


def _timestamp(when: float) -> str:
    """`time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))` and the milliseconds
    `int(when * 1000) % 1000`. A time in the second written last (nearly every one) takes
    float operators only, no call: its second's text is known, and for when * 1000 below
    2**53 (every second strftime writes) flooring and the remainder are exact (seconds >= 0:
    where int() truncates as floor does)."""
    second, second_text = _last_second
    if second <= when < second + 1.0:
        return second_text + _DOT_MILLIS_BY_VALUE[when * 1000.0 // 1.0 % 1000.0]
    return _any_timestamp(when)


def _any_timestamp(when: float) -> str:
    global _last_second
    whole = math.floor(when)  # as time.gmtime rounds a float: toward minus infinity
    second_text = _second(whole)
    if whole >= 0:  # (int() below truncates toward zero: the floor for these only)
        _last_second = (float(whole), second_text)  # one store: read whole by any thread
    return second_text + _DOT_MILLIS[int(when * 1000) % 1000]


def _endpoint(addr: str, port: int) -> str:
    return f"{_host_text(addr)}:{int(port)}"


# The sensor's side: its few addresses and ports, the same text line after line.
_local_endpoint = functools.lru_cache(maxsize=ADDRESSES_REMEMBERED)(_endpoint)


@functools.lru_cache(maxsize=ADDRESSES_REMEMBERED)
def _host_text(addr: str) -> str:
    """`addr` as the log writes it: bracketed if IPv6, "?" if not an address (never copied
    into the log)."""
    host = _host(addr)
    if host is None:
        return "?"
    return f"[{host}]" if ":" in host else host


def _host(addr: str) -> str | None:
    """`addr` without its %scope, rendered as ipaddress renders it; None if not an address."""
    text = addr.split("%", 1)[0]
    return _canonical(text) or _parsed(text)


def _canonical(text: str) -> str | None:
    """`text` if it already is an address in the form inet_ntop writes (the kernel's form, so
    nearly every address we see), without parsing it in Python. IPv6 forms with a dotted IPv4
    part are left to ipaddress, which writes them in hex (::ffff:102:304, not ::ffff:1.2.3.4)."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    if family == socket.AF_INET6 and "." in text:
        return None
    try:
        same = socket.inet_ntop(family, socket.inet_pton(family, text)) == text
    except (OSError, ValueError):  # ValueError: NUL or unencodable characters
        return None
    return text if same else None


def _parsed(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _word(text: str) -> str:
    return text if text.isascii() and text.isalnum() else "?"


def load(ctx: PluginContext) -> LogAttacker:
    return LogAttacker(ctx)
