"""The configuration's value readers: one per kind of value a key may take.

Each takes a parsed node (confparse.py) and the key it was given for, and returns the typed value
or raises a ConfigError naming the file, the line and the key (config.py's tables say which
reader each key has; its named limits are the numbers' ranges). Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Any, TypeAlias

from honeytrap import eventloop
from honeytrap.attack import Mode
from honeytrap.confparse import Block, Entry, ListNode, Scalar, Value
from honeytrap.errors import ConfigError
from honeytrap.monitor import check_monitor_name
from honeytrap.state import check_sensor_id

PROTOCOLS = ("tcp", "udp")
DEFAULT_MODES = {"ignore": Mode.IGNORE, "normal": Mode.NORMAL, "mirror": Mode.MIRROR}
BOOLEANS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}

# A numeric key's (lowest, highest) accepted value; whole numbers if both bounds are ints.
Range: TypeAlias = tuple[float, float]
# A reader of a top-level key's one string value: (value, key) -> typed value.
Converter: TypeAlias = Callable[[Scalar, str], object]


def where(node: Entry | Scalar | ListNode | Block) -> dict[str, Any]:
    return {"file": node.file, "line": node.line}


def error(message: str, node: Entry | Value, key: str) -> ConfigError:
    return ConfigError(message, key=key, **where(node))


def scalar(entry: Entry, key: str) -> Scalar:
    if not isinstance(entry.value, Scalar):
        raise error('expects a "string" value', entry, key)
    return entry.value


def scalars(entry: Entry, key: str) -> list[Scalar]:
    """A string or a flat list of strings (`port = "22"` or `port = ["22", "80"]`)."""
    if isinstance(entry.value, Scalar):
        return [entry.value]
    if isinstance(entry.value, ListNode):
        items = list(entry.value.items)
        if all(isinstance(item, Scalar) for item in items):
            return [item for item in items if isinstance(item, Scalar)]
    raise error('expects a "string" or a list of strings', entry, key)


def block(entry: Entry, key: str) -> Block:
    if not isinstance(entry.value, Block):
        raise error("expects a { block }", entry, key)
    return entry.value


def single(values: list[Scalar], section: Entry, key: str) -> Scalar:
    if len(values) != 1:
        raise error("needs exactly one value", values[1] if values else section, key)
    return values[0]


# Converters of top-level values: (value, key) -> typed value, ConfigError naming the key.


def text(value: Scalar, key: str) -> str:
    return value.value


def path(value: Scalar, key: str) -> str:
    if not value.value:
        raise error("must not be empty", value, key)
    return value.value  # relative paths stay as given (the CLI decides what they are relative to)


def boolean(value: Scalar, key: str) -> bool:
    word = value.value.strip().lower()
    if word not in BOOLEANS:
        raise error(f'expects "yes"/"no" (or "on"/"off"), not {value.value!r}', value, key)
    return BOOLEANS[word]


def number_in(ranges: dict[str, Range]) -> Converter:
    """The reader of the numeric keys in `ranges`: a whole number or a number, in its range."""

    def number(value: Scalar, key: str) -> int | float:
        low, high = ranges[key]
        is_int = isinstance(low, int) and isinstance(high, int)
        try:
            number: int | float = int(value.value.strip(), 10) if is_int else float(value.value)
        except ValueError:
            kind = "a whole number" if is_int else "a number"
            raise error(f"expects {kind}, not {value.value!r}", value, key) from None
        check_range(key, number, ranges[key], value)
        return number

    return number


def check_range(key: str, number: float, bounds: Range, node: Scalar | None = None) -> None:
    low, high = bounds
    if math.isnan(number) or not low <= number <= high:
        at = where(node) if node is not None else {}
        raise ConfigError(f"must be between {low:g} and {high:g}, not {number!r}", key=key, **at)


def address(value: Scalar, key: str) -> str:
    if value.value:
        try:
            ipaddress.ip_address(value.value)
        except ValueError:
            raise error(f"not an IP address: {value.value!r}", value, key) from None
    return value.value


def default_mode(value: Scalar, key: str) -> Mode:
    if value.value == "proxy":
        # As in the original: a proxy needs a target, which a default cannot name.
        raise error("proxy mode cannot be the default (it needs a target); "
                    "use ignore, normal or mirror", value, key)
    if value.value not in DEFAULT_MODES:
        raise error(f"expects ignore, normal or mirror, not {value.value!r}", value, key)
    return DEFAULT_MODES[value.value]


def event_loop(value: Scalar, key: str) -> str:
    try:
        eventloop.check_name(value.value)
    except ConfigError as exc:
        raise error(exc.message, value, key) from exc
    return value.value


def monitor(value: Scalar, key: str) -> str:
    try:
        check_monitor_name(value.value)
    except ConfigError as exc:
        raise error(exc.message, value, key) from exc
    return value.value


def sensor_id(value: Scalar, key: str) -> str:
    try:
        return check_sensor_id(value.value)
    except ConfigError as exc:
        raise error(exc.message, value, key) from exc


# Values of portconf sections and lists.


def cidrs(entry: Entry, key: str) -> list[str]:
    networks = []
    for value in scalars(entry, key):
        try:
            networks.append(str(ipaddress.ip_network(value.value.strip(), strict=False)))
        except ValueError:
            raise error(f"not an address or network (CIDR): {value.value!r}", value,
                        key) from None
    return networks


def protocol(value: Scalar, key: str) -> str:
    name = value.value.strip().lower()
    if name not in PROTOCOLS:
        raise error(f'expects "tcp" or "udp", not {value.value!r}', value, key)
    return name


def port(value: Scalar, key: str) -> int:
    digits = value.value.strip()
    if not digits.isascii() or not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise error(f"expects a port number 1..65535, not {value.value!r}", value, key)
    return int(digits)
