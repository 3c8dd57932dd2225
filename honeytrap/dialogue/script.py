"""The `.dialogue` file format: a protocol's replies as data, parsed and validated at load.

A dialogue file (`<port>_<protocol>.dialogue` in the response directory, templates/README and
honeytrap(8) describe it for users) is a list of statements, one per line:

    # a comment (a line whose first non-blank character is '#')
    dialogue ftp                    the protocol name recorded (first statement, required)
    parser line                     how client bytes become requests: line, tagged, telnet,
                                    resp or http (default line)
    delay 0.02 0.15                 each reply waits a time drawn from [min, max] seconds
    banner "220 ${hostname}\\r\\n"     sent on accept (server-speaks-first protocols)
    state NAME                      the `on` rules below belong to state NAME (the first
                                    state declared is the initial one)
    common                          the `on` rules below apply in every state, after its own
                                    (so do rules before any `state` line)
    on MATCH... ACTION...           a rule: the first whose MATCH clauses all hold answers

An indented line continues the rule above it with more clauses; an indented line that is only
a string continues the string of the clause above it ("a" "b" is "ab"). Strings are in double
quotes with the escapes \\r \\n \\t \\0 \\\\ \\" \\$ and \\xHH (any byte); other text is UTF-8;
`${name}` is a placeholder. A regex string is given to `re` as written (only \\" is unescaped).

MATCH clauses: `cmd WORD` (the request's command word, case-insensitive), `sub WORD` (the word
after it), `path STRING` (HTTP path, exact), `prefix STRING` (the request text starts with it),
`regex STRING` (a Python bytes regular expression searched in the request text; its groups
are ${1}..${9} in the reply), `any`. ACTION clauses: `reply STRING` (bytes to send), `bulk
STRING` (a RESP bulk string), `status CODE STRING`, `header STRING`, `body STRING` (an HTTP
response, framed by the http parser), `data STRING` (FTP: sent on the data connection),
`receive` (FTP: the data connection is read), `after STRING` (FTP: sent once that transfer is
over; at once when there is no data connection), `goto STATE`, `close`. A rule without a reply sends
nothing. Placeholders in strings: see PLACEHOLDERS.

Errors are ConfigError naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from honeytrap.errors import ConfigError

PARSERS = ("line", "tagged", "telnet", "resp", "http")
# Expanded per reply (text.py): sensor values, fresh per-connection values, the request's parts.
PLACEHOLDERS = frozenset(
    {"hostname", "date", "maildate", "id", "num", "arg", "tag", "cmd", "path", "port", "local",
     "pasv", "dataport", "rest"}
    | {str(n) for n in range(1, 10)}
)
MATCHES = ("cmd", "sub", "path", "prefix", "regex", "any")
ACTIONS = ("reply", "bulk", "status", "header", "body", "data", "receive", "after", "goto",
           "close")
# A dialogue file is small text; a larger one is a mistake in the response directory.
MAX_SCRIPT_SIZE = 256 * 1024
# No reply waits longer than this (a longer delay would hold the slot and look broken).
MAX_DELAY = 5.0

_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^\s"]\S*))')
_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\", '"': b'"', "$": b"$"}


@dataclass(frozen=True)
class Segment:
    """A literal run of reply bytes, or a placeholder to expand."""

    text: bytes = b""
    name: str = ""


Template = tuple[Segment, ...]


@dataclass
class Rule:
    line: int
    cmd: bytes = b""  # upper-cased
    sub: bytes = b""
    path: bytes | None = None
    prefix: bytes | None = None
    regex: re.Pattern[bytes] | None = None
    reply: list[Template] = field(default_factory=list)  # raw and bulk parts, in order
    bulk: list[bool] = field(default_factory=list)  # per reply part: frame as RESP bulk
    status: tuple[int, Template] | None = None
    headers: list[Template] = field(default_factory=list)
    body: Template = ()
    data: Template | None = None  # FTP: sent on the data connection
    receive: bool = False  # FTP: the data connection is read (STOR)
    after: Template = ()  # FTP: sent once the data transfer is over
    goto: str = ""
    close: bool = False


@dataclass
class Script:
    path: str
    name: str = ""
    parser: str = "line"
    delay: tuple[float, float] = (0.0, 0.0)
    banner: Template = ()
    initial: str = ""
    states: dict[str, list[Rule]] = field(default_factory=dict)
    common: list[Rule] = field(default_factory=list)  # rules of every state
    # Whether any of its strings has an ${id} (uses_id(), worked out once per script).
    has_id: bool | None = None


def uses_id(script: Script) -> bool:
    """Whether a reply of `script` may write the connection's ${id}."""
    if script.has_id is None:
        templates: list[Template] = [script.banner]
        for rules in [script.common, *script.states.values()]:
            for rule in rules:
                templates += [*rule.reply, *rule.headers, rule.body, rule.after]
                if rule.status is not None:
                    templates.append(rule.status[1])
                if rule.data is not None:
                    templates.append(rule.data)
        script.has_id = any(segment.name == "id" for template in templates
                            for segment in template)
    return script.has_id


def load_script(path: str) -> Script:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCRIPT_SIZE + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read dialogue: {exc.strerror}") from exc
    if len(data) > MAX_SCRIPT_SIZE:
        raise ConfigError(f"{path}: dialogue is over {MAX_SCRIPT_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: dialogue is not UTF-8 (byte {exc.start})") from exc
    return parse_script(text, path)


def parse_script(text: str, path: str = "<dialogue>") -> Script:
    """The script in `text`; ConfigError("<path>:<line>: ...") for anything wrong."""
    script = Script(path)
    parser = _Parser(script)
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parser.line(line)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from None
        parser.number = number + 1
    try:
        parser.finish()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return script


def tokens(line: str) -> list[tuple[bool, str]]:
    """(quoted, text) per token of a line."""
    out: list[tuple[bool, str]] = []
    pos = 0
    line = line.rstrip()
    while pos < len(line):
        match = _TOKEN.match(line, pos)
        if match is None or match.end() == pos:
            raise ConfigError(f"unterminated string at column {pos + 1}")
        pos = match.end()
        if match.group(1) is not None:
            out.append((True, match.group(1)))
        else:
            out.append((False, match.group(2)))
    return out


def unescape(text: str) -> bytes:
    """A string's bytes: escapes decoded, no placeholders (path, prefix)."""
    segments = compile_string(text, placeholders=False)
    return b"".join(segment.text for segment in segments)


def compile_string(text: str, placeholders: bool = True) -> Template:
    """A string's literal runs and ${placeholders}; unknown escapes or names are an error."""
    segments: list[Segment] = []
    literal = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and placeholders and text[i + 1: i + 2] == "{":
            end = text.find("}", i)
            name = text[i + 2: end] if end > 0 else text[i + 2:]
            if end < 0 or name not in PLACEHOLDERS:
                raise ConfigError(f"unknown placeholder ${{{name}}} (known: "
                                  f"{', '.join(sorted(PLACEHOLDERS))}; \\$ for a dollar)")
            if literal:
                segments.append(Segment(bytes(literal)))
                literal.clear()
            segments.append(Segment(name=name))
            i = end + 1
            continue
        if char != "\\":
            literal += char.encode("utf-8")
            i += 1
            continue
        nxt = text[i + 1: i + 2]
        if nxt in _ESCAPES:
            literal += _ESCAPES[nxt]
            i += 2
        elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2: i + 4]):
            literal.append(int(text[i + 2: i + 4], 16))
            i += 4
        else:
            raise ConfigError(f"unknown escape \\{nxt} in string")
    if literal:
        segments.append(Segment(bytes(literal)))
    return tuple(segments)


class _Parser:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.number = 1
        self.state: str | None = None
        self.rule: Rule | None = None
        self.clause: str = ""  # the last clause that took a string (for continuations)
        self.gotos: list[tuple[int, str]] = []

    def line(self, line: str) -> None:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            return
        toks = tokens(line)
        if line[0].isspace():
            if self.clause == "banner" and all(quoted for quoted, _ in toks):
                for _, text in toks:
                    self.script.banner += compile_string(text)
                return
            if self.rule is None:
                raise ConfigError("an indented line continues a rule, and no rule is open")
            if all(quoted for quoted, _ in toks):
                self._continue([text for _, text in toks])
            else:
                self._clauses(self.rule, toks)
            return
        quoted, word = toks[0]
        args = toks[1:]
        if quoted:
            raise ConfigError("a statement starts with a keyword, not a string")
        if not self.script.name and word != "dialogue":
            raise ConfigError("the first statement must be 'dialogue NAME'")
        self.rule = None
        self.clause = ""
        if word == "on":
            self.rule = Rule(self.number)
            self._clauses(self.rule, args)
            target = self.script.common if self.state is None else self.script.states[self.state]
            target.append(self.rule)
            return
        handler = getattr(self, f"_stmt_{word}", None)
        if handler is None:
            raise ConfigError(f"unknown statement {word!r}")
        handler(args)

    def _stmt_dialogue(self, args: list[tuple[bool, str]]) -> None:
        name = _word(args, "dialogue NAME")
        if self.script.name:
            raise ConfigError("'dialogue' given twice")
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
            raise ConfigError(f"dialogue name {name!r}: lower-case letters, digits, - and _")
        self.script.name = name

    def _stmt_parser(self, args: list[tuple[bool, str]]) -> None:
        name = _word(args, "parser KIND")
        if name not in PARSERS:
            raise ConfigError(f"unknown parser {name!r} (known: {', '.join(PARSERS)})")
        self.script.parser = name

    def _stmt_delay(self, args: list[tuple[bool, str]]) -> None:
        if len(args) != 2 or any(quoted for quoted, _ in args):
            raise ConfigError("delay MIN MAX (seconds)")
        low, high = (float(text) for _, text in args)
        if not 0.0 <= low <= high <= MAX_DELAY:
            raise ConfigError(f"delay needs 0 <= MIN <= MAX <= {MAX_DELAY}")
        self.script.delay = (low, high)

    def _stmt_banner(self, args: list[tuple[bool, str]]) -> None:
        if len(args) != 1 or not args[0][0]:
            raise ConfigError("banner STRING")
        self.script.banner = compile_string(args[0][1])
        self.clause = "banner"

    def _stmt_common(self, args: list[tuple[bool, str]]) -> None:
        if args:
            raise ConfigError("common takes no argument")
        self.state = None

    def _stmt_state(self, args: list[tuple[bool, str]]) -> None:
        name = _word(args, "state NAME")
        if name in self.script.states:
            raise ConfigError(f"state {name!r} declared twice")
        self.script.states[name] = []
        self.script.initial = self.script.initial or name
        self.state = name

    def _clauses(self, rule: Rule, toks: list[tuple[bool, str]]) -> None:
        i = 0
        while i < len(toks):
            quoted, word = toks[i]
            if quoted or word not in MATCHES + ACTIONS:
                raise ConfigError(f"expected a clause ({', '.join(MATCHES + ACTIONS)}), "
                                  f"not {word!r}")
            i += 1
            if word in ("any", "close", "receive"):
                rule.close = rule.close or word == "close"
                rule.receive = rule.receive or word == "receive"
                continue
            if word == "status":
                if i + 1 >= len(toks) or not toks[i][1].isdigit() or not toks[i + 1][0]:
                    raise ConfigError('status CODE "TEXT"')
                code = int(toks[i][1])
                if not 100 <= code <= 599:
                    raise ConfigError(f"status {code} is not 100..599")
                rule.status = (code, compile_string(toks[i + 1][1]))
                i += 2
                continue
            if i >= len(toks):
                raise ConfigError(f"{word} needs a value")
            quoted, value = toks[i]
            i += 1
            self._clause(rule, word, quoted, value)

    def _clause(self, rule: Rule, word: str, quoted: bool, value: str) -> None:
        self.clause = word
        if word in ("cmd", "sub", "goto"):
            if quoted:
                raise ConfigError(f"{word} takes a bare word")
            if word == "goto":
                rule.goto = value
                self.gotos.append((self.number, value))
            elif word == "cmd":
                rule.cmd = value.encode().upper()
            else:
                rule.sub = value.encode().upper()
            return
        if not quoted:
            raise ConfigError(f'{word} takes a "string"')
        if word == "regex":  # passed to re as written, \" aside (re has its own escapes)
            try:
                rule.regex = re.compile(value.replace('\\"', '"').encode("utf-8"))
            except re.error as exc:
                raise ConfigError(f"bad regular expression: {exc}") from None
            return
        if word in ("reply", "bulk", "header", "body", "data", "after"):
            self._template(rule, word, compile_string(value))
            return
        raw = unescape(value)
        if word == "path":
            rule.path = raw
        elif word == "prefix":
            rule.prefix = raw


    def _template(self, rule: Rule, word: str, template: Template) -> None:
        if word in ("reply", "bulk"):
            rule.reply.append(template)
            rule.bulk.append(word == "bulk")
        elif word == "header":
            rule.headers.append(template)
        elif word == "body":
            rule.body = template
        elif word == "after":
            rule.after = template
        else:
            rule.data = template

    def _continue(self, parts: list[str]) -> None:
        """More string for the last string clause."""
        extra: Template = ()
        for part in parts:
            extra += compile_string(part)
        rule = self.rule
        assert rule is not None
        if self.clause in ("reply", "bulk"):
            rule.reply[-1] += extra
        elif self.clause == "header":
            rule.headers[-1] += extra
        elif self.clause == "body":
            rule.body += extra
        elif self.clause == "data" and rule.data is not None:
            rule.data += extra
        elif self.clause == "after":
            rule.after += extra
        else:
            raise ConfigError("a string continues reply, bulk, header, body, data or after only")

    def finish(self) -> None:
        script = self.script
        if not script.name:
            raise ConfigError("no 'dialogue NAME' statement")
        if not script.states:
            script.states[""] = []
        for number, name in self.gotos:
            if name not in script.states:
                raise ConfigError(f"line {number}: goto {name!r}: no such state")
        http = script.parser == "http"
        for rules in [script.common, *script.states.values()]:
            for rule in rules:
                if (rule.status is not None or rule.headers or rule.body) and not http:
                    raise ConfigError(f"line {rule.line}: status/header/body need parser http")
                if http and rule.reply:
                    raise ConfigError(f"line {rule.line}: parser http answers with status")


def _word(args: list[tuple[bool, str]], usage: str) -> str:
    if len(args) != 1 or args[0][0]:
        raise ConfigError(usage)
    return args[0][1]


