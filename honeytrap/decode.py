"""Pure decoders for the analysis plugins: bytes in, decoded bytes out, no I/O.

Each function takes an attacker's payload and returns what could be recovered from it: a list
of `Decoded` (possibly empty). None of them raises on any input; every size, count and key
length they work with is bounded by a named constant below, because the input is hostile.

- `find_base64`     base64 in the carriers attackers use (b64Decode)
- `narrow_utf16`    UTF-16LE runs narrowed to single bytes (deUnicode)
- `executable_kind` is this a PE or ELF executable? (magicPE)
- `xor_search`      XOR keys recovered against known plaintext patterns (xmatch)
- `vnc_keystrokes`  the text typed into an RFB (VNC) session (vncDownload)
- `parse_xpatterns` the pattern file of the original's xmatch (configuration: ConfigError)
"""

from __future__ import annotations

import binascii
import logging
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from honeytrap.attack import Attack
from honeytrap.errors import ConfigError


@dataclass(frozen=True)
class Decoded:
    """Bytes recovered from a payload, and a note saying how (for the record and the log)."""

    data: bytes
    note: str


def derive_all(
    attack: Attack, found: Iterable[Decoded], plugin: str, log: logging.Logger
) -> list[Attack]:
    """The decoder plugins' common step: each decoded result becomes a virtual attack (run
    through every hook by the pipeline), noted on the attack it came from and logged."""
    virtuals = []
    for decoded in found:
        note = f"{plugin}: {decoded.note}"
        log.info("attack %s: %s, %d bytes", attack.id, note, len(decoded.data))
        attack.add_note(note)
        virtuals.append(attack.derive(decoded.data, note))
    return virtuals


# --------------------------------------------------------------------------------------------
# base64 (b64Decode)

# Shorter base64 tokens decode to a few bytes: nothing an analyzer could use, only noise.
MIN_BASE64_CHARS = 8
# One token is decoded up to this many characters (3 MiB of data), the rest is cut off: the
# payload itself is capped by read_limit (20 MiB), this caps the copy each token makes.
MAX_BASE64_CHARS = 4 * 1024 * 1024
# Decoded results from one payload at most: each becomes a virtual attack running every hook.
MAX_BASE64_RESULTS = 8
# Matches examined per carrier (duplicates and empty decodes included): repeated carriers
# must not make the search quadratic in effect.
MAX_BASE64_MATCHES = 64

_B64 = rb"[A-Za-z0-9+/]{%d,}+=*" % MIN_BASE64_CHARS
# PowerShell accepts any unambiguous prefix of a parameter name: -e, -en, -enc ... and -ec.
_ENC_FLAGS = b"|".join([b"ec"] + [b"encodedcommand"[:n] for n in range(14, 0, -1)])

# Only this much of a payload is searched for carriers (the regex engine holds the GIL, which
# the dynamic server's connection loop shares: a 20 MiB read_limit payload would stall it for
# seconds). A token that starts in this window is still read to its end (MAX_BASE64_CHARS).
MAX_BASE64_SCAN = 2 * 1024 * 1024
_B64_TOKEN = re.compile(rb"[A-Za-z0-9+/]*=*")

# (carrier, a lowercase word it cannot do without, regex with the token's start in group 1,
# is the decoded text UTF-16LE?). The word lets us skip a carrier's regex with one find().
_CARRIERS: tuple[tuple[str, bytes, re.Pattern[bytes], bool], ...] = (
    # HTTP/SMB/RPC auth (SPNEGO); the original's only carrier.
    ("Negotiate", b"negotiate ", re.compile(rb"Negotiate (" + _B64 + rb")"), False),
    ("NTLM", b"ntlm ", re.compile(rb"NTLM (" + _B64 + rb")"), False),
    # powershell -EncodedCommand <base64 of UTF-16LE>
    (
        "powershell -EncodedCommand",
        b"powershell",
        re.compile(rb"(?i)(?<![\w-])[-/](?:" + _ENC_FLAGS + rb")\s+[\"']?(" + _B64 + rb")"),
        True,
    ),
    # echo <base64> | base64 -d (also printf, --decode, -D of BSD)
    (
        "echo | base64 -d",
        b"base64",
        re.compile(
            rb"(?:echo|printf)\s+(?:-[a-zA-Z]+\s+)*[\"']?("
            + _B64
            + rb")[\"']?\s*\|\s*base64\s+(?:-d|--decode|-D)"
        ),
        False,
    ),
    # base64 -d <<< <base64>
    (
        "base64 -d <<<",
        b"<<<",
        re.compile(rb"base64\s+(?:-d|--decode)\s*<<<\s*[\"']?(" + _B64 + rb")"),
        False,
    ),
    # RFC 2397 data: URIs
    (
        "data: URI",
        b";base64,",
        re.compile(rb"(?i)data:[\w.+/-]*(?:;[\w.+-]+=[\w.+-]+)*;base64,(" + _B64 + rb")"),
        False,
    ),
    # [Convert]::FromBase64String('...'), JavaScript's atob('...'), Python's b64decode('...')
    (
        "FromBase64String",
        b"(",
        re.compile(rb"(?i)(?:FromBase64String|atob|b64decode)\(\s*[\"'](" + _B64 + rb")[\"']"),
        False,
    ),
)


def _b64decode(token: bytes) -> bytes:
    """Decode tolerantly: missing padding, a dangling last character and junk are forgiven."""
    token = token.rstrip(b"=")[:MAX_BASE64_CHARS]
    if len(token) % 4 == 1:  # a lone sextet carries no whole byte
        token = token[:-1]
    token += b"=" * (-len(token) % 4)
    try:
        return binascii.a2b_base64(token)
    except binascii.Error:
        return b""


def utf16le_to_utf8(data: bytes) -> bytes:
    """UTF-16LE text as UTF-8; undecodable units become U+FFFD rather than an error."""
    return data.decode("utf-16-le", errors="replace").encode("utf-8", errors="replace")


def find_base64(payload: bytes) -> list[Decoded]:
    """Base64 tokens in known carriers, decoded; distinct results in order of the carriers."""
    results: list[Decoded] = []
    seen: set[bytes] = set()
    window = payload[:MAX_BASE64_SCAN]
    lowered = window.lower()
    for carrier, word, pattern, wide in _CARRIERS:
        if word not in lowered:
            continue
        for count, match in enumerate(pattern.finditer(window)):
            if count >= MAX_BASE64_MATCHES:
                break
            start = match.start(1)
            token = _B64_TOKEN.match(payload, start, start + MAX_BASE64_CHARS + 2)
            data = _b64decode(token.group(0) if token else b"")
            if wide:
                data = utf16le_to_utf8(data)
            if not data or data in seen:
                continue
            seen.add(data)
            results.append(Decoded(data, f"base64 in {carrier} at offset {start}"))
            if len(results) >= MAX_BASE64_RESULTS:
                return results
    return results


# --------------------------------------------------------------------------------------------
# UTF-16 (deUnicode)

# A run of at least this many "byte, NUL" pairs is taken as UTF-16LE text: short runs occur
# by chance in binary data (little-endian integers), 8 characters rarely do ("http://x").
MIN_UTF16_CHARS = 8
_UTF16_RUN = re.compile(rb"(?:[^\x00]\x00){%d,}" % MIN_UTF16_CHARS)
# Runs are looked for in this much of a payload (one regex pass, holding the GIL; see
# MAX_BASE64_SCAN); the rest is kept as it is.
MAX_UTF16_SCAN = 2 * 1024 * 1024


def narrow_utf16(payload: bytes) -> list[Decoded]:
    """The payload with every long UTF-16LE run narrowed to one byte a character (ASCII and
    Latin-1 text survive; the rest of the payload is kept as is). Empty if there is no run.

    The original narrowed the whole payload when a third of it was NUL bytes; narrowing only
    the runs also decodes mixed payloads (an SMB packet carrying a UTF-16 path)."""
    runs = 0

    def narrow(match: re.Match[bytes]) -> bytes:
        nonlocal runs
        runs += 1
        return match.group(0)[::2]

    if b"\0" not in payload:
        return []
    narrowed = _UTF16_RUN.sub(narrow, payload[:MAX_UTF16_SCAN]) + payload[MAX_UTF16_SCAN:]
    if not runs:
        return []
    return [Decoded(narrowed, f"UTF-16LE: {runs} run(s) narrowed")]


# --------------------------------------------------------------------------------------------
# executables (magicPE)

# PE/COFF: the DOS header's e_lfanew (offset 0x3c) points at "PE\0\0". A header further in than
# this is not a real executable (linkers place it within the first few hundred bytes).
MAX_PE_HEADER_OFFSET = 64 * 1024
_PE_MACHINES = {0x14C: "i386", 0x8664: "x86-64", 0x1C0: "ARM", 0xAA64: "ARM64", 0x200: "IA-64"}
_ELF_MACHINES = {3: "i386", 62: "x86-64", 40: "ARM", 183: "AArch64", 8: "MIPS", 20: "PowerPC"}


def executable_kind(data: bytes) -> str | None:
    """"PE32 (i386)", "ELF64 (x86-64)" ... if `data` starts with a PE or ELF executable."""
    if data[:2] == b"MZ" and len(data) >= 0x40:
        (offset,) = struct.unpack_from("<I", data, 0x3C)
        if offset > MAX_PE_HEADER_OFFSET or len(data) < offset + 26:
            return None
        if data[offset : offset + 4] != b"PE\0\0":
            return None
        (machine,) = struct.unpack_from("<H", data, offset + 4)
        (magic,) = struct.unpack_from("<H", data, offset + 24)
        bits = {0x10B: "PE32", 0x20B: "PE32+"}.get(magic, "PE")
        return f"{bits} ({_PE_MACHINES.get(machine, hex(machine))})"
    if data[:4] == b"\x7fELF" and len(data) >= 20:
        elf_bits = {1: "ELF32", 2: "ELF64"}.get(data[4])
        order = {1: "<", 2: ">"}.get(data[5])
        if elf_bits is None or order is None or data[6] != 1:  # EI_VERSION must be EV_CURRENT
            return None
        (machine,) = struct.unpack_from(order + "H", data, 18)
        return f"{elf_bits} ({_ELF_MACHINES.get(machine, str(machine))})"
    return None


# --------------------------------------------------------------------------------------------
# XOR keys against known plaintext (xmatch)

# Keys up to this long are searched: shellcode decoders use 1- to 4-byte keys, rarely longer,
# and each length costs one pass over the payload.
MAX_XOR_KEY_LEN = 16
# Only this much of a payload is searched (one pass per key length over it).
MAX_XOR_SCAN = 1024 * 1024
# A pattern shorter than this matches noise; longer ones gain nothing and cost memory.
MIN_XOR_PATTERN = 6
MAX_XOR_PATTERN = 256
# Patterns in a pattern file at most (each is searched at every key length).
MAX_XOR_PATTERNS = 256
# Occurrences of one pattern's XOR difference examined per key length: plain-text copies
# (key zero) come first in many payloads and are skipped.
MAX_XOR_OCCURRENCES = 64
# Distinct keys reported per payload: each becomes a virtual attack.
MAX_XOR_RESULTS = 4


@dataclass(frozen=True)
class XorMatch:
    key: bytes  # aligned to offset 0: data[i] ^ key[i % len(key)]
    pattern: bytes
    offset: int  # where the pattern was found
    data: bytes  # the decoded payload (the scanned part)


def _xor_shift(data: bytes, k: int) -> bytes:
    """d[i] = data[i] ^ data[i + k]: invariant under a repeating key of length k."""
    n = len(data) - k
    if n <= 0:
        return b""
    left = int.from_bytes(data[:n], "big")
    right = int.from_bytes(data[k:], "big")
    return (left ^ right).to_bytes(n, "big")


def xor_with(data: bytes, key: bytes) -> bytes:
    """data XOR the key repeated (key[0] applies to data[0])."""
    if not data or not key:
        return data
    stream = (key * (len(data) // len(key) + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _key_at(data: bytes, pattern: bytes, offset: int, k: int) -> bytes:
    key = bytearray(k)
    for m in range(k):
        key[(offset + m) % k] = data[offset + m] ^ pattern[m]
    return bytes(key)


def _shortest_period(key: bytes) -> bytes:
    """"abab" -> "ab": the same key stream, said once (the original also cut to the period)."""
    for p in range(1, len(key)):
        if len(key) % p == 0 and key[:p] * (len(key) // p) == key:
            return key[:p]
    return key


def xor_search(payload: bytes, patterns: Sequence[bytes]) -> list[XorMatch]:
    """Repeating XOR keys (1..MAX_XOR_KEY_LEN bytes) under which a pattern occurs in the payload.

    For a key of length k, x[i] ^ x[i+k] is the same for cipher and plain text, so the pattern's
    own differences are searched in the payload's: no key is guessed. Shorter keys are tried
    first; a key of zeros (the pattern in clear) is not a finding."""
    data = payload[:MAX_XOR_SCAN]
    usable = [p for p in patterns if MIN_XOR_PATTERN <= len(p) <= MAX_XOR_PATTERN]
    results: list[XorMatch] = []
    keys: set[bytes] = set()
    for k in range(1, MAX_XOR_KEY_LEN + 1):
        shifted: bytes | None = None
        for pattern in usable:
            if k > len(pattern) // 2:
                continue
            wanted = _xor_shift(pattern, k)
            if not any(wanted):  # a pattern periodic in k matches any k-periodic noise
                continue
            if shifted is None:
                shifted = _xor_shift(data, k)
            match = _find_key(data, shifted, wanted, pattern, k)
            if match is None or match.key in keys:
                continue
            keys.add(match.key)
            results.append(match)
            if len(results) >= MAX_XOR_RESULTS:
                return results
    return results


def _find_key(
    data: bytes, shifted: bytes, wanted: bytes, pattern: bytes, k: int
) -> XorMatch | None:
    start = 0
    for _ in range(MAX_XOR_OCCURRENCES):
        offset = shifted.find(wanted, start)
        if offset < 0:
            return None
        key = _shortest_period(_key_at(data, pattern, offset, k))
        if any(key):
            return XorMatch(key, pattern, offset, xor_with(data, key))
        start = offset + 1
    return None


_XBYTE = re.compile(rb"\\x([0-9A-Fa-f]{2})")


def parse_xpatterns(text: bytes, file: str = "") -> list[bytes]:
    """The original xmatch's pattern file: one pattern a line as `\\xNN` escapes, `#` comments.
    A malformed line is a ConfigError naming the file and line."""
    patterns: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if _XBYTE.sub(b"", line).strip():
            raise ConfigError("not a pattern of \\xNN escapes", file=file, line=number)
        pattern = bytes(int(h, 16) for h in _XBYTE.findall(line))
        if not MIN_XOR_PATTERN <= len(pattern) <= MAX_XOR_PATTERN:
            raise ConfigError(
                f"a pattern has {MIN_XOR_PATTERN} to {MAX_XOR_PATTERN} bytes, not {len(pattern)}",
                file=file,
                line=number,
            )
        patterns.append(pattern)
        if len(patterns) > MAX_XOR_PATTERNS:
            raise ConfigError(f"more than {MAX_XOR_PATTERNS} patterns", file=file, line=number)
    return patterns


# --------------------------------------------------------------------------------------------
# VNC keystrokes (vncDownload)

# The typed text is kept up to this size: a command line or a script, not a novel.
MAX_VNC_TEXT = 64 * 1024
# Client bytes walked at most (131072 key events; the walk is a Python loop per message, and
# per byte while resynchronising, so this bounds its time on a 20 MiB read_limit payload).
MAX_VNC_SCAN = 1024 * 1024
# Bytes skipped while looking for the next message: a real session needs only the handshake
# skipped (a few dozen bytes); junk after an RFB line is given up on after this many.
MAX_VNC_RESYNC = 4096
# Client messages of RFC 6143 section 7.5 we walk: type -> fixed size (SetEncodings and
# ClientCutText have a variable tail, handled below).
_VNC_FIXED = {0: 20, 3: 10, 4: 8, 5: 6}
_VNC_VERSION = re.compile(rb"RFB \d{3}\.\d{3}\n")
_VNC_AUTH_RESPONSE = 16  # VNC authentication: the DES response (RFC 6143 7.2.2)
# Encodings a client may list in SetEncodings: real clients send a dozen or two.
MAX_VNC_ENCODINGS = 256
# Keysyms (X11 keysymdef.h) that type something, and the modifiers that turn keys into
# shortcuts (Win+R opens the Run dialog: the "r" is not part of the typed command).
_KEY_TEXT = {0xFF0D: "\n", 0xFF8D: "\n", 0xFF09: "\t"}
_KEY_BACKSPACE = 0xFF08
_KEY_MODIFIERS = frozenset({0xFFE3, 0xFFE4, 0xFFE7, 0xFFE8, 0xFFE9, 0xFFEA, 0xFFEB, 0xFFEC})


def vnc_keystrokes(payload: bytes) -> list[Decoded]:
    """What a VNC client typed (KeyEvent) and pasted (ClientCutText) in its session.

    The original scraped printable bytes after `RFB 003.008` and undid doubled letters (each key
    is sent pressed and released), which also ate real double letters ("www"); this walks the
    client's messages instead. Empty unless the payload starts with an RFB version line."""
    if not _VNC_VERSION.match(payload):
        return []
    text: list[str] = []
    for data in _vnc_message_streams(payload):
        text = _vnc_text(data)
        if text:
            break
    typed = "".join(text)[:MAX_VNC_TEXT]
    if not typed.strip():
        return []
    return [Decoded(typed.encode("latin-1"), f"VNC session: {len(typed)} characters typed")]


def _vnc_message_streams(payload: bytes) -> Iterable[bytes]:
    """Where the client's messages may start, after the handshake: RFB 3.7/3.8 send the
    chosen security type (and a DES response for type 2), 3.3 a DES response or nothing;
    then ClientInit (one byte)."""
    rest = payload[12:MAX_VNC_SCAN]
    if payload[:12] in (b"RFB 003.007\n", b"RFB 003.008\n") and rest:
        auth = _VNC_AUTH_RESPONSE if rest[0] == 2 else 0
        yield rest[1 + auth + 1 :]
    yield rest[_VNC_AUTH_RESPONSE + 1 :]
    yield rest[1:]


def _vnc_text(data: bytes) -> list[str]:
    text: list[str] = []
    held: set[int] = set()
    size = skipped = 0
    pos = 0
    while pos < len(data) and size < MAX_VNC_TEXT and skipped < MAX_VNC_RESYNC:
        kind = data[pos]
        length = _vnc_length(data, pos)
        if length is None:
            pos += 1  # not a message here: resynchronise byte by byte
            skipped += 1
            continue
        if kind == 4:
            down, keysym = data[pos + 1], struct.unpack_from(">I", data, pos + 4)[0]
            size += _vnc_key(text, held, bool(down), keysym)
        elif kind == 6:
            pasted = data[pos + 8 : pos + length].decode("latin-1")
            text.append(pasted)
            size += len(pasted)
        pos += length
    return text


def _vnc_length(data: bytes, pos: int) -> int | None:
    """The length of a plausible client message at pos, or None."""
    kind = data[pos]
    if kind in _VNC_FIXED:
        length = _VNC_FIXED[kind]
        if pos + length > len(data):
            return None
        if kind == 4 and (data[pos + 1] > 1 or data[pos + 2 : pos + 4] != b"\0\0"):
            return None
        if kind == 3 and data[pos + 1] > 1:
            return None
        return length
    if kind == 2 and pos + 4 <= len(data) and data[pos + 1] == 0:
        count: int = struct.unpack_from(">H", data, pos + 2)[0]
        if count <= MAX_VNC_ENCODINGS and pos + 4 + 4 * count <= len(data):
            return 4 + 4 * count
        return None
    if kind == 6 and pos + 8 <= len(data) and data[pos + 1 : pos + 4] == b"\0\0\0":
        size: int = struct.unpack_from(">I", data, pos + 4)[0]
        if pos + 8 + size <= len(data):
            return 8 + size
    return None


def _vnc_key(text: list[str], held: set[int], down: bool, keysym: int) -> int:
    """Apply one KeyEvent; returns the characters added."""
    if keysym in _KEY_MODIFIERS:
        (held.add if down else held.discard)(keysym)
        return 0
    if not down or held - {0xFFE1, 0xFFE2}:
        return 0
    if keysym == _KEY_BACKSPACE:
        if text:
            text[-1] = text[-1][:-1]
        return 0
    if 0x20 <= keysym <= 0x7E or 0xA0 <= keysym <= 0xFF:
        text.append(chr(keysym))
        return 1
    char = _KEY_TEXT.get(keysym)
    if char is not None:
        text.append(char)
        return 1
    return 0
