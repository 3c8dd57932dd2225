"""xmatch (PREPROC): XOR-encoded payloads decoded against known plaintext, as virtual attacks.

Self-decrypting shellcode hides its URL under a repeating XOR key. For each key length up to
honeytrap.decode.MAX_XOR_KEY_LEN the known patterns are looked for in a way that does not
depend on the key (x[i] ^ x[i+k]); a hit gives the key, and the decoded payload runs through
every hook as a virtual attack, so the downloaders find the URL. The original ran in PREPROC too.

Options:
    xpattern_file = "/etc/honeytrap/xpatterns"   the original's file: one pattern a line as
                                                 \\xNN escapes, # comments
    pattern = ["http://", "GET /"]               patterns given inline (ours)
Without either, DEFAULT_PATTERNS below are used.
"""

from __future__ import annotations

from honeytrap.attack import Attack
from honeytrap.decode import (
    MAX_XOR_PATTERN,
    MAX_XOR_PATTERNS,
    MIN_XOR_PATTERN,
    parse_xpatterns,
    xor_search,
)
from honeytrap.errors import ConfigError, PluginError
from honeytrap.plugin import PluginContext

# What decoded shellcode and droppers typically contain in clear.
DEFAULT_PATTERNS = (
    b"http://",
    b"https://",
    b"ftp://",
    b"tftp -i ",
    b"cmd /c ",
    b"cmd.exe",
    b"This program cannot be run in DOS mode",
)
# A pattern file larger than this is not a pattern list.
MAX_PATTERN_FILE = 1024 * 1024


def _read_patterns(ctx: PluginContext) -> list[bytes]:
    patterns: list[bytes] = []
    path = ctx.options.get("xpattern_file")
    if path is not None:
        path = ctx.option("xpattern_file")
        try:
            with open(path, "rb") as handle:
                text = handle.read(MAX_PATTERN_FILE + 1)
        except OSError as exc:
            raise PluginError(f"plugin {ctx.name}: cannot read {path}: {exc}") from exc
        if len(text) > MAX_PATTERN_FILE:
            raise PluginError(f"plugin {ctx.name}: {path} is over {MAX_PATTERN_FILE} bytes")
        try:
            patterns.extend(parse_xpatterns(text, path))
        except ConfigError as exc:
            raise PluginError(f"plugin {ctx.name}: {exc}") from exc
    for text_pattern in ctx.option_list("pattern"):
        try:
            pattern = text_pattern.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise PluginError(f"plugin {ctx.name}: pattern {text_pattern!r} is not bytes") from exc
        if not MIN_XOR_PATTERN <= len(pattern) <= MAX_XOR_PATTERN:
            raise PluginError(
                f"plugin {ctx.name}: pattern {text_pattern!r} must have "
                f"{MIN_XOR_PATTERN} to {MAX_XOR_PATTERN} bytes"
            )
        patterns.append(pattern)
    if len(patterns) > MAX_XOR_PATTERNS:
        raise PluginError(f"plugin {ctx.name}: more than {MAX_XOR_PATTERNS} patterns")
    return patterns or list(DEFAULT_PATTERNS)


class XMatch:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log
        self.patterns = _read_patterns(ctx)

    def preproc(self, attack: Attack) -> list[Attack]:
        virtuals = []
        for match in xor_search(attack.payload, self.patterns):
            note = (
                f"xmatch: XOR key {match.key.hex()} ({len(match.key)} bytes) "
                f"from pattern {match.pattern.hex()} at offset {match.offset}"
            )
            self.log.info("attack %s: %s", attack.id, note)
            attack.add_note(note)
            virtuals.append(attack.derive(match.data, note))
        return virtuals


def load(ctx: PluginContext) -> XMatch:
    return XMatch(ctx)
