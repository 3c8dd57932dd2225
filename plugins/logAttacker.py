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

import ipaddress
import time

from honeytrap import outfile
from honeytrap.attack import Attack
from honeytrap.plugin import PluginContext


class LogAttacker(outfile.LineLog):
    def line(self, attack: Attack) -> bytes:
        return format_line(attack).encode("ascii")


def format_line(attack: Attack) -> str:
    conn = attack.attack_connection
    payload = conn.payload
    count = len(attack.downloads)
    return (
        f"[{_timestamp(attack.start_time)} GMT] {attack.mode.label} {_word(conn.protocol)} "
        f"{_endpoint(conn.remote_addr, conn.remote_port)} -> "
        f"{_endpoint(conn.local_addr, conn.local_port)} "
        f"{payload.md5} {payload.sha512} ({payload.size} bytes) "
        f"{count} download{'' if count == 1 else 's'}\n"
    )


def _timestamp(when: float) -> str:
    millis = int(when * 1000) % 1000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) + f".{millis:03d}"


def _endpoint(addr: str, port: int) -> str:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return f"?:{int(port)}"  # not an address: never copy it into the log
    if ip.version == 6:
        return f"[{ip}]:{int(port)}"
    return f"{ip}:{int(port)}"


def _word(text: str) -> str:
    return text if text.isascii() and text.isalnum() else "?"


def load(ctx: PluginContext) -> LogAttacker:
    return LogAttacker(ctx)
