"""JSON text as `json.dumps(value, separators=(",", ":"))` writes it, made faster for the values
an attack's record holds (attack.py's to_json_text: logJSON's line for every attack).

json.dumps builds a new C encoder per call, and even a shared one costs more than the work for
the small values an attack carries (a dialogue's few fields, SaveFile's path in `analysis`): a
call, a list of chunks, a join. `text` writes the common kinds (exact str, int, bool, None,
and dicts with str keys, lists and tuples of them) itself and hands anything else (floats,
subclasses, keys json converts, objects json refuses) to json's own encoder, whole, so what
json would write or raise is what comes out. Guarded by tests/test_output_formats.py against
json.dumps for any value.

A value that contains itself raises RecursionError (json.dumps: ValueError); either fails the
plugin that made it. `iso` is the record's time text (datetime's, remembered per second).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any

# Strings are escaped by json's own C function (ensure_ascii, as json.dumps by default).
escape: Callable[[str], str] = encode_basestring_ascii

# json.dumps(value, separators=(",", ":")) without json.dumps' set-up per call (it builds a new
# C encoder each time). Without the circular-reference markers, which a shared encoder could
# not reset after an error. (CPython has the C encoder; another interpreter may not: then the
# Python one, the same text.)
_ENCODER = json.JSONEncoder(separators=(",", ":"))
try:
    from _json import make_encoder as _make_encoder

    _C_ENCODER: Callable[[Any, int], tuple[str, ...]] | None = _make_encoder(
        None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, True)
except ImportError:
    _C_ENCODER = None


def json_text(value: Any) -> str:
    """json's own encoder: the text of any value, or its error."""
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def text(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return int.__repr__(value)  # what json writes for an int (a subclass: json's way)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is dict:
        return dict_text(value)
    if kind is list or kind is tuple:
        return list_text(value)
    return json_text(value)


def dict_text(value: dict[Any, Any]) -> str:
    if len(value) == 1:
        # One key (an attack's analysis, SaveFile's part of it, a raw dialogue's fields): its
        # text made at once, not through a list of parts and a join (~0.1 us each, timeit).
        for key, item in value.items():
            if type(key) is str:
                kind = type(item)
                item_text = (escape(item) if kind is str else f"{item}" if kind is int
                             else dict_text(item) if kind is dict else text(item))
                return f"{{{escape(key)}:{item_text}}}"
    if not value:
        return "{}"
    parts = []
    for key, item in value.items():
        if type(key) is not str:
            return json_text(value)  # keys json turns into text (numbers, None...), its way
        # The usual items' kinds written here, not through text(): a call less each (an
        # attack's analysis is {plugin: {key: text}}, a dialogue's fields text and numbers).
        kind = type(item)
        item_text = (escape(item) if kind is str else f"{item}" if kind is int
                     else dict_text(item) if kind is dict else text(item))
        parts.append(f"{escape(key)}:{item_text}")
    return "{" + ",".join(parts) + "}"


def list_text(values: list[Any] | tuple[Any, ...]) -> str:
    """A list's (or a tuple's: json writes both as an array) text."""
    if not values:
        return "[]"
    # Exact ints (a dialogue's turns) and strs (notes) written here, not through text().
    return "[" + ",".join([f"{item}" if type(item) is int else escape(item)
                           if type(item) is str else text(item) for item in values]) + "]"


def str_text(value: Any) -> str:
    """The text of what should be a str (anything else: its own text)."""
    return encode_basestring_ascii(value) if type(value) is str else text(value)


# Seconds iso remembers the text of: an attack's start and end, and those of the attacks logged
# just before it (attacks reach the outputs in about time order).
RECENT_SECONDS = 16
_MICROS = 1_000_000
# The end of each time's text by its milliseconds: "000Z" ... "999Z", made once.
_MILLIS_Z = tuple(f"{millis:03d}Z" for millis in range(1000))


def iso(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds, as Elasticsearch's date type reads it.

    The text of `datetime.fromtimestamp(timestamp, tz=UTC)`, built faster: the timestamp is
    split as fromtimestamp splits it (whole seconds and microseconds rounded half to even,
    CPython's _PyTime_DoubleToDenominator), and each second's text is remembered.

    A time in the second written last (nearly every one: an attack's start and end, the
    attacks before it) takes float operators only, no call: its fraction `timestamp - second`
    is modf's, exactly (Sterbenz: second >= 1); the microseconds' rounding (half to even) can
    only carry into the next millisecond when the rest past the millisecond is >= 999.5 us
    (the millisecond's micros are even), left to the general way; dividing by a power of ten
    below 2**53 is exact."""
    second, second_text = _last_second
    fraction = timestamp - second
    if 0.0 <= fraction < 1.0:
        micros = fraction * 1e6
        millis = micros // 1000.0
        if micros - millis * 1000.0 < 999.5:
            return second_text + _MILLIS_Z_BY_VALUE[millis]
    return _iso(timestamp)


def _iso(timestamp: float) -> str:
    global _last_second
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * _MICROS)
    second = int(whole)
    if micros >= _MICROS:
        second, micros = second + 1, micros - _MICROS
    elif micros < 0:
        second, micros = second - 1, micros + _MICROS
    second_text = _iso_second(second)
    if second >= 1:
        _last_second = (float(second), second_text)  # one store: read whole by any thread
    return second_text + _MILLIS_Z[micros // 1000]


@functools.lru_cache(maxsize=RECENT_SECONDS)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


# The millisecond's text by its number as an int or a float (an integral float hashes and
# compares as its int: iso's float operators need no int() call).
_MILLIS_Z_BY_VALUE = {float(millis): text for millis, text in enumerate(_MILLIS_Z)}
# The second iso wrote last, and its text (any second >= 1 will do to start with).
_last_second: tuple[float, str] = (86400.0, _iso_second(86400))
