"""The configuration file syntax of the original honeytrap, as a tree of nodes.

The original read its file with lcfg (src/parseconf.c); we accept the same language:

    key = "value"                 a string; the only scalar (numbers are quoted too)
    key = ["a", "b" "c"]          a list; commas are optional, items may be lists or blocks
    key = { inner = "v" ... }     a block of entries (no separators between entries)
    // to end of line,  /* ... */  comments
    include = "other.conf"        (top level) the other file's entries, in place

Keys start with an ASCII letter and go on with letters, digits, `-` and `_` (so
`plugin-SaveFile` is one key). Strings may span lines and know the escapes
`\\n \\t \\r \\0 \\xNN \\\\ \\"`. `#` is not a comment: the original rejected it, and so do we
(with a hint), so a file that loads here loads there. Values stay `str`; `\\xNN` gives the code
point U+00NN, so `value.encode("latin-1")` returns the bytes the original would have used.

`tokenize` and `parse` are pure (text in, nodes out); `load` reads files and splices includes
through a reader function that tests can replace. Every error is a `ConfigError` naming the file
and line.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from honeytrap.errors import ConfigError

# Blocks and lists nest at most this deep: the shipped syntax needs 4 (portconf.proxy.map.key);
# the bound keeps a malformed or hostile file from exhausting the parser's recursion.
MAX_NESTING = 32
# Includes nest at most this deep; a loop is reported as a loop before this is reached.
MAX_INCLUDE_DEPTH = 8
# A configuration file is a few kilobytes; this refuses `-C /dev/zero` or a log file given by
# mistake before it is read into memory.
MAX_FILE_BYTES = 4 * 1024 * 1024

INCLUDE_KEY = "include"


@dataclass(frozen=True)
class Token:
    kind: str  # "ident", "string", "=", "[", "]", "{", "}", ","
    text: str  # the identifier or the decoded string; the character for punctuation
    file: str
    line: int


@dataclass(frozen=True)
class Scalar:
    value: str
    file: str
    line: int


@dataclass(frozen=True)
class ListNode:
    items: tuple[Value, ...]
    file: str
    line: int


@dataclass(frozen=True)
class Block:
    entries: tuple[Entry, ...]
    file: str
    line: int


@dataclass(frozen=True)
class Entry:
    """`key = value`, with the file and line of the key."""

    key: str
    value: Value
    file: str
    line: int


Value: TypeAlias = Scalar | ListNode | Block

# Possessive quantifiers keep an unterminated string or comment linear in the file's length.
_TOKEN_RE = re.compile(
    r"""
      (?P<space>[ \t\r\n\f\v]++)
    | (?P<line_comment>//[^\n]*+)
    | (?P<block_comment>/\*.*?\*/)
    | (?P<ident>[A-Za-z][A-Za-z0-9_-]*+)
    | (?P<punct>[=\[\]{},])
    | (?P<string>"(?:[^"\\]++|\\.)*+")
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE_RE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"'}


def tokenize(text: str, file: str = "<string>") -> list[Token]:
    """Split configuration text into tokens; comments and white space are dropped."""
    tokens: list[Token] = []
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise _lex_error(text, pos, file, line)
        kind = match.lastgroup
        chunk = match.group()
        if kind == "ident":
            tokens.append(Token("ident", chunk, file, line))
        elif kind == "punct":
            tokens.append(Token(chunk, chunk, file, line))
        elif kind == "string":
            tokens.append(Token("string", _unescape(chunk[1:-1], file, line), file, line))
        line += chunk.count("\n")
        pos = match.end()
    return tokens


def _lex_error(text: str, pos: int, file: str, line: int) -> ConfigError:
    char = text[pos]
    if text.startswith("/*", pos):
        return ConfigError("comment opened with /* is never closed", file=file, line=line)
    if char == '"':
        return ConfigError("string is never closed (missing '\"')", file=file, line=line)
    if char == "#":
        return ConfigError(
            "'#' does not start a comment in this syntax; use // or /* */", file=file, line=line
        )
    if char.isdigit() or char in "-./_":
        return ConfigError(
            f"unquoted value starting with {char!r}: values are strings, write \"...\"",
            file=file,
            line=line,
        )
    return ConfigError(f"unexpected character {char!r}", file=file, line=line)


def _unescape(body: str, file: str, line: int) -> str:
    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x" and len(code) == 3:
            return chr(int(code[1:], 16))
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code]
        where = line + body.count("\n", 0, match.start())
        shown = "\\x" if code == "x" else "\\" + code
        raise ConfigError(
            f"invalid escape {shown!r} in string (known: \\n \\t \\r \\0 \\xNN \\\\ \\\")",
            file=file,
            line=where,
        )

    if "\\" not in body:
        return body
    return _ESCAPE_RE.sub(replace, body)


class _Parser:
    """Recursive descent over the token list; `depth` bounds the nesting."""

    def __init__(self, tokens: list[Token], file: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.file = file

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str) -> Token:
        token = self.peek()
        if token is None:
            last = self.tokens[-1].line if self.tokens else 1
            raise ConfigError(f"file ends where {expected} was expected", file=self.file, line=last)
        self.pos += 1
        return token

    def entries(self, depth: int, closing: str | None) -> tuple[Entry, ...]:
        entries: list[Entry] = []
        while True:
            token = self.peek()
            if token is None and closing is None:
                return tuple(entries)
            wanted = "a key" if closing is None else "a key or '}'"
            token = self.take(wanted)
            if closing is not None and token.kind == closing:
                return tuple(entries)
            if token.kind != "ident":
                raise _unexpected(token, wanted)
            equals = self.take("'='")
            if equals.kind != "=":
                raise _unexpected(equals, f"'=' after {token.text!r}")
            value = self.value(depth, token.text)
            entries.append(Entry(token.text, value, token.file, token.line))

    def value(self, depth: int, key: str) -> Value:
        token = self.take(f"a value for {key!r}")
        if token.kind == "string":
            return Scalar(token.text, token.file, token.line)
        if token.kind not in ("[", "{"):
            raise _unexpected(token, "a value: \"string\", [list] or { block }", key)
        if depth >= MAX_NESTING:
            raise ConfigError(
                f"nested deeper than {MAX_NESTING} levels", file=token.file, line=token.line,
                key=key,
            )
        if token.kind == "{":
            return Block(self.entries(depth + 1, "}"), token.file, token.line)
        return ListNode(self.items(depth + 1, key), token.file, token.line)

    def items(self, depth: int, key: str) -> tuple[Value, ...]:
        items: list[Value] = []
        while True:
            token = self.peek()
            if token is not None and token.kind == "]":
                self.pos += 1
                return tuple(items)
            if token is not None and token.kind == ",":
                # The original ignores commas in lists altogether; so do we.
                self.pos += 1
                continue
            if token is None:
                self.take("']'")
            items.append(self.value(depth, key))


def _unexpected(token: Token, wanted: str, key: str | None = None) -> ConfigError:
    shown = repr(token.text) if token.kind in ("ident", "string") else f"'{token.text}'"
    return ConfigError(f"expected {wanted}, found {shown}", file=token.file, line=token.line,
                       key=key)


def parse(text: str, file: str = "<string>") -> Block:
    """Parse one file's text into its top-level block. `include` entries are left in place."""
    parser = _Parser(tokenize(text, file), file)
    return Block(parser.entries(0, None), file, 1)


def read_text(path: str) -> str:
    """Read a configuration file from disk: bounded in size, UTF-8, errors as ConfigError."""
    try:
        # Non-blocking: opening a FIFO for reading waits for a writer, forever (the start would
        # hang with no message); on a regular file the flag changes nothing. What is not a
        # regular file is refused before a byte is read (templates.open_template does the same).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=path) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("not a regular file (a FIFO, device or directory?)", file=path)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=path) from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"larger than {MAX_FILE_BYTES} bytes; not a configuration file?",
                          file=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("not valid UTF-8 (use \\xNN escapes for raw bytes)", file=path,
                          line=line) from exc


Reader: TypeAlias = Callable[[str], str]


def load(path: str, read: Reader = read_text) -> Block:
    """Parse the file at `path` and splice its top-level includes in place, recursively.

    An include's relative path is taken from the including file's directory (the original took
    it from the working directory, which made a file's meaning depend on where honeytrap was
    started). `include` may name one file or a list of files.
    """
    return _load(path, read, ((os.path.realpath(path), path),))


# The files being included, outermost first: (real path to spot loops, path as named).
_Chain: TypeAlias = tuple[tuple[str, str], ...]


def _load(path: str, read: Reader, chain: _Chain) -> Block:
    top = parse(read(path), path)
    entries: list[Entry] = []
    for entry in top.entries:
        if entry.key != INCLUDE_KEY:
            _reject_nested_include(entry.value)
            entries.append(entry)
            continue
        for target, where in _include_targets(entry):
            entries.extend(_include(target, where, read, chain))
    return Block(tuple(entries), top.file, top.line)


def _include_targets(entry: Entry) -> list[tuple[str, Scalar]]:
    values = entry.value.items if isinstance(entry.value, ListNode) else (entry.value,)
    targets: list[tuple[str, Scalar]] = []
    for value in values:
        if not isinstance(value, Scalar) or not value.value:
            raise ConfigError("include needs a file name (a non-empty string)", file=value.file,
                              line=value.line, key=INCLUDE_KEY)
        target = os.path.join(os.path.dirname(entry.file), value.value)
        targets.append((target, value))
    return targets


def _include(target: str, where: Scalar, read: Reader, chain: _Chain) -> tuple[Entry, ...]:
    real = os.path.realpath(target)
    reals = [link[0] for link in chain]
    if real in reals:
        loop = " -> ".join([link[1] for link in chain[reals.index(real):]] + [target])
        raise ConfigError(f"include loop: {loop}", file=where.file, line=where.line,
                          key=INCLUDE_KEY)
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"includes nested deeper than {MAX_INCLUDE_DEPTH} files",
                          file=where.file, line=where.line, key=INCLUDE_KEY)
    try:
        return _load(target, read, (*chain, (real, target))).entries
    except ConfigError as exc:
        if exc.file == target and exc.line is None:
            # The included file could not be read: say which line asked for it.
            raise ConfigError(f"cannot include {target}: {exc.message}", file=where.file,
                              line=where.line, key=INCLUDE_KEY) from exc
        raise


def _reject_nested_include(value: Value) -> None:
    """`include` works at the top level only, as in the original; say so anywhere else."""
    if isinstance(value, Block):
        for entry in value.entries:
            if entry.key == INCLUDE_KEY:
                raise ConfigError("include is only allowed at the top level of a file",
                                  file=entry.file, line=entry.line, key=INCLUDE_KEY)
            _reject_nested_include(entry.value)
    elif isinstance(value, ListNode):
        for item in value.items:
            _reject_nested_include(item)
