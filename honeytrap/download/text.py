"""Shared pieces of the command parsers: attacker bytes as text, split into shell statements.

Attack strings are decoded as Latin-1 (every byte maps to one character, nothing fails) and
only ever matched, never executed or interpolated.
"""

from __future__ import annotations

import re

# Parsers look at no more than this much of a payload: commands sit near the start of an
# exploit, and regular expressions over the whole 20 MiB read_limit would stall a worker.
MAX_SCAN = 256 * 1024
# At most this many statements are interpreted and this many requests returned per payload:
# an attacker's list of thousands of URLs yields a bounded amount of work.
MAX_STATEMENTS = 4096
MAX_REQUESTS = 64

# Shell statement separators of cmd.exe and sh: newlines, & && | || ; (a ';' is only a
# separator for sh, but a file or host never contains one in the forms we parse).
_SEPARATORS = re.compile(r"[\r\n\x00]+|&&?|\|\|?|;")
# A leading `cmd /c`, `cmd.exe /k`, `@`, `start` and the like before the command proper.
_PREFIX = re.compile(
    r"^(?:@|(?:[a-z]:\\[^ ]*\\)?cmd(?:\.exe)?\s+/[ckr]\s*|start\s+(?:/b\s+)?|\"|\(|\s)+",
    re.IGNORECASE,
)
_QUOTES = "\"'`"


def as_text(payload: bytes) -> str:
    return payload[:MAX_SCAN].decode("latin-1")


def statements(text: str) -> list[str]:
    """The statements of a command line or script, prefixes like `cmd /c` removed."""
    found: list[str] = []
    for part in _SEPARATORS.split(text):
        part = _PREFIX.sub("", part).strip().rstrip(")")
        if part:
            found.append(part)
            if len(found) >= MAX_STATEMENTS:
                break
    return found


def words(statement: str) -> list[str]:
    """Whitespace-separated words with surrounding quotes removed."""
    return [w.strip(_QUOTES) for w in statement.split() if w.strip(_QUOTES)]


def parse_port(text: str, default: int) -> int | None:
    """A TCP/UDP port number, `default` for an empty string, None if invalid."""
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def split_host_port(text: str) -> tuple[str, str]:
    """`host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 literal (no port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


_HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")


def valid_host(host: str) -> bool:
    """A plausible host name or address literal (anything else is not a request)."""
    return bool(_HOST.fullmatch(host)) and not host.startswith(("-", ".")) and ".." not in host
