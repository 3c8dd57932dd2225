"""The control messages between the master and a server process: typed, with one encoder
(`encode`) and one decoder (`decode`, which raises only ControlError). Their text, one message
per line (control.py's Channel carries them):

process -> master: busy <port>... | idle <port>... (every port of the report that went busy, or
                   idle again, in one message: portstate.py) | expire <port> | released <port>
                   | load <descriptors> (its connections' descriptors, at each control.LOAD_STEP)
                   | stats {json object of counters}
master -> process: serve <port> <n> (with n descriptors: the bound socket, then the template
                   file if the port has one) | stop <port> (drain: let open connections finish)
                   | retire (no more ports: exit once the last connection is recorded)
                   | shutdown (record and close everything now)
                   | relink (with a descriptor: a new link to the recorder, recorder.py)
<port> is "<protocol> <number>". A server process reads attacker bytes: what it sends the master
is untrusted, and decoded as such (only ControlError escapes: tests/test_control_messages.py
fuzzes the decoder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

Key = tuple[str, int]


class ControlError(ValueError):
    """A control message that does not decode (a bug, or a compromised server process)."""


@dataclass(frozen=True)
class Serve:
    key: Key
    fds: int  # 1: the bound socket; 2: and the template file


@dataclass(frozen=True)
class Stop:
    key: Key


@dataclass(frozen=True)
class Retire:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class Relink:
    pass


@dataclass(frozen=True)
class Busy:
    """Ports that went busy (a first connection) since the process's last report."""

    keys: tuple[Key, ...]


@dataclass(frozen=True)
class Idle:
    """Ports idle again since the last report, in the order they first changed (the master's
    order of use)."""

    keys: tuple[Key, ...]


@dataclass(frozen=True)
class Expire:
    key: Key


@dataclass(frozen=True)
class Released:
    key: Key


@dataclass(frozen=True)
class Load:
    descriptors: int


@dataclass(frozen=True)
class Stats:
    values: dict[str, int] = field(default_factory=dict)


Message = (Serve | Stop | Retire | Shutdown | Relink | Busy | Idle | Expire | Released | Load
           | Stats)
_PORT_MESSAGES: dict[str, type[Stop | Expire | Released]] = {
    "stop": Stop, "expire": Expire, "released": Released,
}
# Messages naming several ports (a report: one message, not one per port, each a decode and a
# dispatch of the master's; a sweep's ports report several times each).
_PORTS_MESSAGES: dict[str, type[Busy | Idle]] = {"busy": Busy, "idle": Idle}
_WORDS: dict[str, type[Retire | Shutdown | Relink]] = {
    "retire": Retire, "shutdown": Shutdown, "relink": Relink,
}
_NAMES = {cls: name for name, cls in {**_PORT_MESSAGES, **_PORTS_MESSAGES, **_WORDS}.items()}


def port_key(protocol: str, port: int) -> str:
    """How a port is named in control messages ("tcp 8080")."""
    return f"{protocol} {port}"


def parse_key(text: str) -> Key:
    """("tcp", 8080) from "tcp 8080"; ("", 0) if malformed."""
    protocol, _, port = text.partition(" ")
    if protocol in ("tcp", "udp") and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
        return protocol, int(port)
    return "", 0


def encode(message: Message) -> bytes:
    if isinstance(message, Serve):
        return f"serve {port_key(*message.key)} {message.fds}".encode()
    if isinstance(message, Load):
        return f"load {message.descriptors}".encode()
    if isinstance(message, Stats):
        return b"stats " + json.dumps(message.values, separators=(",", ":")).encode()
    if isinstance(message, (Stop, Expire, Released)):
        return f"{_NAMES[type(message)]} {port_key(*message.key)}".encode()
    if isinstance(message, (Busy, Idle)):
        ports = " ".join(port_key(*key) for key in message.keys)
        return f"{_NAMES[type(message)]} {ports}".encode()
    return _NAMES[type(message)].encode()


def decode(data: bytes) -> Message:
    """One message; ControlError if it is not one."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ControlError("control message is not ASCII") from exc
    word, _, rest = text.partition(" ")
    if word in _WORDS and not rest:
        return _WORDS[word]()
    if word in _PORT_MESSAGES:
        return _PORT_MESSAGES[word](_key(rest))
    if word in _PORTS_MESSAGES:
        return _PORTS_MESSAGES[word](_keys(rest))
    if word == "serve":
        port, _, count = rest.rpartition(" ")
        if count not in ("1", "2"):
            raise ControlError(f"serve with {count!r} descriptors")
        return Serve(_key(port), int(count))
    if word == "load" and rest.isdigit() and len(rest) <= 12:
        return Load(int(rest))
    if word == "stats":
        stats = parse_stats(text)
        if stats is None:
            raise ControlError("stats message is not a JSON object")
        return Stats(stats)
    raise ControlError(f"unknown control message {word[:20]!r}")


def _key(text: str) -> Key:
    key = parse_key(text)
    if key == ("", 0):
        raise ControlError(f"bad port {text[:40]!r}")
    return key


_PROTOCOLS = frozenset(("tcp", "udp"))


def _keys(text: str) -> tuple[Key, ...]:
    """The ports of "tcp 80 udp 53" (at least one), each as parse_key takes it, checked all at
    once: a sweep's reports name every port two or three times, and a port at a time (parse_key
    on each pair) was ~2.2 us per port against ~1.1 (tests/test_control_messages.py compares the
    two on any words)."""
    words = text.split(" ")
    protocols, numbers = words[0::2], words[1::2]
    digits = "".join(numbers)
    if (len(words) % 2 or not _PROTOCOLS.issuperset(protocols) or "" in numbers
            or not (digits.isascii() and digits.isdigit())):
        raise ControlError(f"bad ports {text[:40]!r}")
    try:
        ports = list(map(int, numbers))
    except ValueError as exc:  # past int()'s digit limit: no port either
        raise ControlError(f"bad ports {text[:40]!r}") from exc
    if min(ports) < 1 or max(ports) > 65535:
        raise ControlError(f"bad ports {text[:40]!r}")
    return tuple(zip(protocols, ports, strict=True))


def parse_stats(message: str) -> dict[str, int] | None:
    if not message.startswith("stats "):
        return None
    try:
        data = json.loads(message[6:])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}
