"""Framers: a client's byte stream cut into requests, sans-IO, for the `parser` of a dialogue.

Each framer takes bytes in any chunking and returns the complete requests they finish (plus, for
telnet, the option negotiation answers due). A request a framer cannot make sense of is
returned as the command `!BAD`, for the dialogue file to answer (an HTTP 400, a RESP protocol
error): no framer raises on client bytes. Every buffer is bounded by a named limit.
"""

from __future__ import annotations

from dataclasses import dataclass

# A line longer than this (without its end) is cut and taken as it is: bounds the buffer of a
# client that never ends its line. RFC 5321 4.5.3.1.6 allows 1000 per text line; RFC 959 none.
MAX_LINE = 8192
# An HTTP request head (request line and header fields) larger than this is a bad request
# (nginx's default large_client_header_buffers is 4 x 8k: real clients stay far below).
MAX_HTTP_HEAD = 64 * 1024
# A RESP array with more elements than this is refused as a protocol error (real clients send
# a handful; redis itself caps multibulk length at 1024*1024).
MAX_RESP_ARGS = 1024
BAD = b"!BAD"

# RFC 854 command codes and RFC 857/858/1091/1073 options.
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240


@dataclass
class Request:
    text: bytes = b""  # the request as a line (HTTP: the request line; RESP: args joined)
    cmd: bytes = b""  # the command word, upper-cased (HTTP: the method); BAD if unparsable
    sub: bytes = b""  # the next word, upper-cased
    arg: bytes = b""  # what follows the command word
    tag: bytes = b""  # IMAP's tag
    path: bytes = b""  # HTTP: the target's path
    version: bytes = b""  # HTTP: "HTTP/1.1"
    keep_alive: bool = False  # HTTP: the connection stays open after the response


def words(request: Request, line: bytes, tagged: bool = False) -> Request:
    """Fill text, cmd, sub, arg (and tag) from a text line."""
    request.text = line
    parts = line.split(None, 1)
    if tagged and parts:
        request.tag = parts[0]
        parts = parts[1].split(None, 1) if len(parts) > 1 else []
    if parts:
        request.cmd = parts[0].upper()
        request.arg = parts[1].strip() if len(parts) > 1 else b""
        request.sub = request.arg.split(None, 1)[0].upper() if request.arg else b""
    return request


class LineFramer:
    """Lines ending in LF (a CR before it dropped): FTP, SMTP, POP3; `tagged` for IMAP."""

    # One per open connection, most of them idle: no instance dict, no buffer until data.
    __slots__ = ("buffer", "tagged")

    def __init__(self, tagged: bool = False) -> None:
        self.buffer: bytearray | None = None
        self.tagged = tagged

    def feed(self, data: bytes) -> tuple[list[Request], bytes]:
        buffer = self.buffer
        if buffer is None:
            buffer = self.buffer = bytearray()
        buffer += data
        out: list[Request] = []
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) <= MAX_LINE:
                    return out, b""
                end = MAX_LINE
                line = bytes(buffer[:end])
                del buffer[:end]
            else:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
            out.append(words(Request(), line.rstrip(b"\r"), self.tagged))


class TelnetFramer:
    """RFC 854 NVT input: IAC sequences stripped and answered, lines ending in CR LF, CR NUL,
    CR or LF. Options we offered (WILL) or asked for (DO) in the banner are accepted silently;
    any other request is refused once (RFC 854: WONT/DONT), so negotiation never loops
    (RFC 1143's concern)."""

    def __init__(self, banner: bytes) -> None:
        self.lines = LineFramer()
        self.offered = _options(banner, WILL)
        self.asked = _options(banner, DO)
        self.refused: set[tuple[int, int]] = set()
        self.state = 0  # 0 data, 1 after IAC, 2 after WILL/WONT/DO/DONT, 3 in SB, 4 SB+IAC
        self.verb = 0
        self.after_cr = False

    def feed(self, data: bytes) -> tuple[list[Request], bytes]:
        text = bytearray()
        answer = bytearray()
        for byte in data:
            if self.state == 0:
                if byte == IAC:
                    self.state = 1
                else:
                    self._data(byte, text)
            elif self.state == 1:
                self.state = {IAC: 0, SB: 3}.get(byte, 2 if byte in (WILL, WONT, DO, DONT) else 0)
                if byte == IAC:
                    self._data(IAC, text)
                self.verb = byte
            elif self.state == 2:
                self.state = 0
                answer += self._negotiate(self.verb, byte)
            elif self.state == 3:
                self.state = 4 if byte == IAC else 3
            else:  # IAC inside a subnegotiation: SE ends it, IAC IAC is data in it
                self.state = 0 if byte == SE else 3
        requests, _ = self.lines.feed(bytes(text))
        return requests, bytes(answer)

    def _data(self, byte: int, text: bytearray) -> None:
        if self.after_cr:
            self.after_cr = False
            if byte in (0, 10):  # CR NUL and CR LF are one end of line
                return
        if byte == 13:
            self.after_cr = True
            text += b"\n"
        else:
            text.append(byte)

    def _negotiate(self, verb: int, option: int) -> bytes:
        if verb == DO and option not in self.offered:
            reply = WONT
        elif verb == WILL and option not in self.asked:
            reply = DONT
        else:
            return b""
        if (reply, option) in self.refused:
            return b""
        self.refused.add((reply, option))
        return bytes((IAC, reply, option))


def _options(banner: bytes, verb: int) -> set[int]:
    return {banner[i + 2] for i in range(len(banner) - 2)
            if banner[i] == IAC and banner[i + 1] == verb}


class RespFramer:
    """Redis RESP requests: arrays of bulk strings, or inline commands (a text line)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> tuple[list[Request], bytes]:
        self.buffer += data
        out: list[Request] = []
        while self.buffer:
            if self.buffer[:1] != b"*":
                end = self.buffer.find(b"\n")
                if end < 0:
                    if len(self.buffer) <= MAX_LINE:
                        break
                    end = MAX_LINE
                line = bytes(self.buffer[:end]).rstrip(b"\r")
                del self.buffer[: end + 1]
                if line.strip():
                    out.append(words(Request(), line))
                continue
            parsed = self._array()
            if parsed is None:
                break
            out.append(parsed)
            if parsed.cmd == BAD:
                self.buffer.clear()
                break
        return out, b""

    def _array(self) -> Request | None:
        """One array from the buffer (consumed), None if incomplete."""
        buf = self.buffer
        count, pos = _number(buf, 1)
        if count is None:
            return None if pos < 0 else Request(cmd=BAD)
        if not 0 <= count <= MAX_RESP_ARGS:
            return Request(cmd=BAD)
        args: list[bytes] = []
        for _ in range(count):
            if pos >= len(buf):
                return None
            if buf[pos: pos + 1] != b"$":
                return Request(cmd=BAD)
            length, pos = _number(buf, pos + 1)
            if length is None:
                return None if pos < 0 else Request(cmd=BAD)
            if length < 0:
                return Request(cmd=BAD)
            if len(buf) < pos + length + 2:
                return None
            args.append(bytes(buf[pos: pos + length]))
            pos += length + 2
        del buf[:pos]
        return words(Request(), b" ".join(args)) if args else Request()


def _number(buf: bytearray, pos: int) -> tuple[int | None, int]:
    """The integer line at pos and where the next element starts; (None, -1) if incomplete,
    (None, 0) if not a number."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None, (-1 if len(buf) - pos <= 20 else 0)
    text = bytes(buf[pos:end])
    if not text.lstrip(b"-").isdigit() or len(text) > 20:
        return None, 0
    return int(text), end + 2


class HttpFramer:
    """HTTP/1.x requests (RFC 9112): the head, then a body of Content-Length bytes or chunked
    (skipped, not buffered: the adapter records every byte anyway)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skip = 0  # body bytes still to pass over
        self.chunked = False
        self.bad = False

    def feed(self, data: bytes) -> tuple[list[Request], bytes]:
        out: list[Request] = []
        if self.bad:
            return out, b""
        self.buffer += data
        while self.buffer and not self.bad:
            if self.skip or self.chunked:
                if not self._body():
                    break
                continue
            end = self.buffer.find(b"\r\n\r\n")
            size = 4
            if end < 0:
                end, size = self.buffer.find(b"\n\n"), 2
            if end < 0:
                if len(self.buffer) > MAX_HTTP_HEAD:
                    self.bad = True
                    out.append(Request(cmd=BAD))
                break
            head = bytes(self.buffer[:end])
            del self.buffer[: end + size]
            request = self._head(head.lstrip(b"\r\n"))
            out.append(request)
            self.bad = request.cmd == BAD
        return out, b""

    def _head(self, head: bytes) -> Request:
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0].isalpha():
            return Request(text=lines[0], cmd=BAD)
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return Request(text=lines[0], cmd=BAD)
            fields[name.strip().lower()] = value.strip()
        method, target, version = parts
        connection = fields.get(b"connection", b"").lower()
        keep = b"close" not in connection if version != b"HTTP/1.0" else b"keep-alive" in connection
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            self.chunked = True
        else:
            length = fields.get(b"content-length", b"0")
            if not length.isdigit():
                return Request(text=lines[0], cmd=BAD)
            self.skip = int(length)
        request = Request(text=lines[0], cmd=method.upper(), arg=target, version=version,
                          path=target.split(b"?", 1)[0], keep_alive=keep)
        request.sub = request.path.upper()
        return request

    def _body(self) -> bool:
        """Pass over body bytes; False when more are needed."""
        if self.skip:
            taken = min(self.skip, len(self.buffer))
            del self.buffer[:taken]
            self.skip -= taken
            return not self.skip
        end = self.buffer.find(b"\r\n")  # a chunk-size line (RFC 9112 7.1)
        if end < 0:
            if len(self.buffer) > MAX_LINE:
                self.bad = True
            return False
        size_text = bytes(self.buffer[:end]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            self.bad = True
            return False
        del self.buffer[: end + 2]
        if size == 0:
            self.chunked = False
            self.skip = 2 if self.buffer[:2] == b"\r\n" else 0  # no trailer fields
        else:
            self.skip = size + 2
        return True


Framer = LineFramer | TelnetFramer | RespFramer | HttpFramer


def framer_for(parser: str, banner: bytes) -> Framer:
    if parser == "telnet":
        return TelnetFramer(banner)
    if parser == "resp":
        return RespFramer()
    if parser == "http":
        return HttpFramer()
    return LineFramer(tagged=parser == "tagged")
