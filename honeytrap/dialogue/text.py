"""The engine of `.dialogue` files: a Script (script.py) played against one connection, sans-IO.

Client bytes go through the script's framer (framing.py) into requests; each request is answered
by the first rule of the current state whose match clauses hold (then the rules common to every
state), its reply expanded (placeholders) and its `goto`/`close` applied. Requests are answered in
order, one Reply per chunk received, delayed by the script's jitter.
"""

from __future__ import annotations

import time
from typing import Any

from honeytrap.dialogue.base import Context, DataChannel, Reply
from honeytrap.dialogue.framing import BAD, Framer, Request, framer_for
from honeytrap.dialogue.script import Rule, Script, Template, uses_id

# Client text put into a reply ({arg}, {tag}, regex groups) is cut to this many bytes, and
# keeps only printable ASCII: a reply never carries control bytes the client chose.
MAX_ECHO = 64
# Command words kept in the record, per connection (the rest are counted only).
MAX_RECORDED_COMMANDS = 64
_PRINTABLE = bytes(range(0x20, 0x7F))
# FTP passive data ports are drawn from this range (a typical PassivePorts setting, above the
# ephemeral ports Linux picks for outbound connections).
DATA_PORTS = (61000, 64999)
# Dates in replies are English whatever the locale (strftime's %a and %b follow LC_TIME).
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
           b"Dec")


def rfc_date(when: float, zone: bytes) -> bytes:
    """`when` in UTC as RFC 5322 (3.3) writes a date, "Tue, 01 Dec 2026 23:14:23 <zone>": HTTP's
    IMF-fixdate with zone GMT (RFC 9110 5.6.7), a mail header's with -0000 (UTC, no local
    offset said). email.utils.formatdate writes the same, but importing it brought most of the
    email package into every process (~340 KiB of the master's heap, shared by all)."""
    t = time.gmtime(when)
    return b"%s, %02d %s %04d %02d:%02d:%02d %s" % (
        _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min,
        t.tm_sec, zone,
    )


def clean(data: bytes) -> bytes:
    """Client bytes safe to echo in a reply."""
    return bytes(b for b in data[:MAX_ECHO] if b in _PRINTABLE)


class ScriptDialogue:
    """One connection's dialogue played from a Script."""

    # One per open connection, most of them idle: no instance dict (bench/idle.py).
    # Of its Context, what the placeholders use (each shared by every connection of a port, or
    # the sensor's): the Context itself is not kept (~100 bytes per open connection).
    __slots__ = ("script", "rng", "hostname", "port", "local_addr", "name", "state", "banner",
                 "framer", "requests", "commands", "closed", "channel", "data_port",
                 "start_delay", "_id")

    def __init__(self, script: Script, ctx: Context) -> None:
        self.script = script
        self.rng = ctx.rng
        self.hostname = ctx.hostname
        self.port = ctx.port
        self.local_addr = ctx.local_addr
        self.name = script.name
        self.state = script.initial
        banner = self.expand(script.banner, Request(), ())
        self.banner = banner
        # Made with the first bytes the client sends (most idle connections never send any):
        # ~50 bytes per open connection (bench/idle.py).
        self.framer: Framer | None = None
        self.requests = 0
        self.commands: list[str] | None = None  # made on the first request
        self.closed = False
        self.channel: DataChannel | None = None  # asked of the adapter in this receive()
        self.data_port = 0
        self.start_delay = self._delay() if banner else 0.0
        # Drawn now (the sensor's random sequence as before), written out only for an {id},
        # kept only by a script that has one (a 40-bit int is 32 bytes per open connection).
        conn_id = ctx.rng.getrandbits(40)
        self._id = conn_id if uses_id(script) else 0

    def start(self) -> bytes:
        # The adapter has read the banner's delay (base.py): its float not kept by every idle
        # connection (24 bytes each).
        self.start_delay = 0.0
        return self.banner

    def idle(self) -> Reply:
        return Reply()

    def receive(self, data: bytes) -> Reply:
        if self.closed:
            return Reply()
        framer = self.framer
        if framer is None:
            framer = self.framer = framer_for(self.script.parser, self.banner)
        requests, immediate = framer.feed(data)
        out = bytearray(immediate)
        self.channel = None
        for request in requests:
            self.requests += 1
            if self.commands is None:
                self.commands = []
            if len(self.commands) < MAX_RECORDED_COMMANDS:
                self.commands.append(request.cmd.decode("ascii", "replace")[:32])
            out += self.answer(request)
            if self.closed:
                break
        if not out and not self.closed:
            return Reply()
        return Reply(send=bytes(out), close=self.closed, delay=self._delay() if out else 0.0,
                     data=self.channel)

    def answer(self, request: Request) -> bytes:
        rule = self.match(request)
        if rule is None:
            return b""
        groups: tuple[bytes, ...] = ()
        if rule.regex is not None:
            found = rule.regex.search(request.text)
            groups = tuple(g or b"" for g in found.groups()) if found else ()
        if self.script.parser == "http":
            out = self._http(rule, request, groups)
        else:
            out = b"".join(
                _bulk(self.expand(part, request, groups)) if bulk
                else self.expand(part, request, groups)
                for part, bulk in zip(rule.reply, rule.bulk, strict=True)
            )
        after = self.expand(rule.after, request, groups)
        if (rule.data is not None or rule.receive) and self.data_port:
            channel = self.channel = self.channel or DataChannel()
            if rule.data is not None:
                channel.send = self.expand(rule.data, request, groups)
            channel.receive = rule.receive
            channel.then = after
        else:
            out += after
        if rule.goto:
            self.state = rule.goto
        if rule.close:
            self.closed = True
        return out

    def match(self, request: Request) -> Rule | None:
        for rule in [*self.script.states.get(self.state, []), *self.script.common]:
            if _matches(rule, request):
                return rule
        return None

    def _http(self, rule: Rule, request: Request, groups: tuple[bytes, ...]) -> bytes:
        """RFC 9112 response framing: the status line in the client's version, the rule's
        headers (a Date among them where the server sends one, RFC 9110 6.6.1), Content-Length,
        Connection where the version's default does not say it (RFC 9112 9.3); no body for
        HEAD (RFC 9110 9.3.2)."""
        code, text = rule.status or (200, ())
        body = self.expand(rule.body, request, groups)
        version = request.version if request.version in (b"HTTP/1.0", b"HTTP/1.1") else b"HTTP/1.1"
        keep = request.keep_alive and not rule.close and request.cmd != BAD
        lines = [version + b" %d " % code + self.expand(text, request, groups)]
        lines += [self.expand(header, request, groups) for header in rule.headers]
        lines.append(b"Content-Length: %d" % len(body))
        if version == b"HTTP/1.1" or keep:
            lines.append(b"Connection: " + (b"keep-alive" if keep else b"close"))
        if not keep:
            self.closed = True
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        return head if request.cmd == b"HEAD" else head + body

    def expand(self, template: Template, request: Request, groups: tuple[bytes, ...]) -> bytes:
        if len(template) == 1 and not template[0].name:
            return template[0].text  # a literal (most banners): the script's bytes, not a copy
        out = bytearray()
        for segment in template:
            out += segment.text if not segment.name else self._value(segment.name, request, groups)
        return bytes(out)

    def _value(self, name: str, request: Request, groups: tuple[bytes, ...]) -> bytes:
        if name.isdigit():
            index = int(name) - 1
            return clean(groups[index]) if index < len(groups) else b""
        if name == "hostname":
            return self.hostname.encode("ascii", "replace")
        if name == "date":
            return rfc_date(time.time(), b"GMT")
        if name == "maildate":
            return rfc_date(time.time(), b"-0000")
        if name == "id":
            return b"%010X" % self._id
        if name == "num":
            return b"%d" % self.rng.randrange(1000, 65000)
        if name == "port":
            return b"%d" % self.port
        if name == "local":
            return self.local_addr.encode("ascii", "replace")
        if name in ("pasv", "dataport"):
            return self._passive(name)
        if name == "rest":
            parts = request.arg.split(None, 1)
            return clean(parts[1] if len(parts) > 1 else b"")
        value = {"arg": request.arg, "tag": request.tag, "cmd": request.cmd,
                 "path": request.path}.get(name, b"")
        return clean(value)

    def _passive(self, name: str) -> bytes:
        """A fresh data port to listen on (asked of the adapter), as RFC 959 4.1.2's
        h1,h2,h3,h4,p1,p2 or RFC 2428's bare port number."""
        self.data_port = self.rng.randint(*DATA_PORTS)
        self.channel = self.channel or DataChannel()
        self.channel.listen = self.data_port
        if name == "dataport":
            return b"%d" % self.data_port
        host = self.local_addr if self.local_addr.count(".") == 3 else "0.0.0.0"  # noqa: S104
        numbers = [*host.split("."), str(self.data_port >> 8), str(self.data_port & 255)]
        return ",".join(numbers).encode()

    def _delay(self) -> float:
        low, high = self.script.delay
        return self.rng.uniform(low, high) if high else 0.0

    def record(self) -> dict[str, Any]:
        return {"state": self.state, "requests": self.requests,
                "commands": self.commands if self.commands is not None else []}


def _matches(rule: Rule, request: Request) -> bool:
    if rule.cmd and rule.cmd != request.cmd:
        return False
    if rule.sub and rule.sub != request.sub:
        return False
    if rule.path is not None and rule.path != request.path:
        return False
    if rule.prefix is not None and not request.text.startswith(rule.prefix):
        return False
    return rule.regex is None or rule.regex.search(request.text) is not None


def _bulk(data: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)
