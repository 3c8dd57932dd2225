"""hpfeeds output: the messages we publish, and the sink the batching writer drives.

hpfeeds has no acknowledgement. To lose nothing we make one: the sink subscribes to the channels
it publishes on, and the broker, which routes a publish to every subscriber of the channel, sends
ours back; a record counts as delivered when its copy returns (`confirm`, the default). An ident
allowed to publish but not to subscribe makes the broker refuse the subscription; the sink then
says so in the log and falls back to counting a record delivered once the broker's TCP stack has
acknowledged every byte of it (SIOCOUTQ empty): a broker that dies holding unread data loses it.

Records (the spool's and the queue's) are `<channel>\\n<payload>`: one publish each.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import select
import socket
import struct
import termios
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from honeytrap.attack import Attack
from honeytrap.errors import ProtocolError
from honeytrap.outputs import hpfeeds_wire as wire
from honeytrap.outputs.writer import Record, SinkDown

EVENTS_CHANNEL = "honeytrap.events"
# dionaea's convention for binaries: the raw file on a per-sensor-unique channel.
SAMPLES_CHANNEL = "mwbinary.honeytrap.sensorunique"
SAMPLE_PREFIX = "mwbinary."
# Connecting, the broker's greeting, and the return of published copies: past these the broker
# is treated as away (the batch is spooled and retried).
CONNECT_TIMEOUT = 10.0
CONFIRM_TIMEOUT = 15.0
_READ = 65536
# Unconfirmed mode: how often the send queue is looked at while waiting for TCP to drain it.
_ACK_POLL = 0.01
# A sample is published once per process per hash ("sensorunique"); remember this many hashes.
MAX_SEEN_SAMPLES = 10_000


def record_data(channel: str, payload: bytes) -> bytes:
    return channel.encode() + b"\n" + payload


def split_record(data: bytes) -> tuple[str, bytes]:
    channel, sep, payload = data.partition(b"\n")
    if not sep:
        raise ValueError("record without channel")
    return channel.decode("utf-8"), payload


def event_payload(
    attack: Attack, limit: int, sensor_id: str = "", *, inline_samples: bool = False
) -> bytes | None:
    """attack.to_json() with `sensor_id`, as JSON within `limit` bytes: over it, payload hex is
    cut (marked "truncated"; hashes and length stay whole). None if even that does not fit.
    The samples are named, not carried (they go on their own channel), unless inline_samples."""
    doc = attack.to_json(inline_samples=inline_samples)
    doc["sensor_id"] = sensor_id
    data = json.dumps(doc).encode()
    if len(data) <= limit:
        return data
    for download in doc["downloads"]:
        if "data_hex" in download["payload"]:
            _cut(download["payload"], 0)
    data = json.dumps(doc).encode()
    for key in ("proxy_connection", "attack_connection"):
        if len(data) <= limit:
            break
        payload = doc[key]["payload"]
        keep = max(0, len(payload["data_hex"]) - (len(data) - limit) - 64)
        _cut(payload, keep - keep % 2)
        data = json.dumps(doc).encode()
    return data if len(data) <= limit else None


def followup_payload(
    attack: Attack, limit: int, sensor_id: str, *, inline_samples: bool = False
) -> bytes | None:
    """attack.followup_json() with `sensor_id`, within `limit` bytes: over it, inline samples'
    hex is left out (marked "truncated"; they go on their own channel). None if even that does
    not fit."""
    doc = attack.followup_json(inline_samples=inline_samples)
    doc["sensor_id"] = sensor_id
    data = json.dumps(doc).encode()
    if len(data) <= limit:
        return data
    for download in doc["downloads"]:
        if "data_hex" in download["payload"]:
            download["payload"]["data_hex"] = ""
            download["payload"]["truncated"] = True
    data = json.dumps(doc).encode()
    return data if len(data) <= limit else None


def _cut(payload: dict[str, Any], keep: int) -> None:
    if len(payload["data_hex"]) > keep:
        payload["data_hex"] = payload["data_hex"][:keep]
        payload["truncated"] = True


def _digest(channel: str, payload: bytes) -> bytes:
    return hashlib.sha256(channel.encode() + b"\0" + payload).digest()


class HpfeedsSink:
    name = "hpfeeds"

    def __init__(self, host: str, port: int, ident: str, secret: str, *, confirm: bool,
                 log: logging.Logger) -> None:
        self.host, self.port, self.ident, self.secret = host, port, ident, secret
        self.confirm = confirm
        self.log = log
        self.channels: set[str] = set()  # the channels we publish on (subscribed if confirm)
        self._sock: socket.socket | None = None
        self._decoder = wire.Decoder()
        self._pending: Counter[bytes] = Counter()
        self._verified = False  # a copy came back on this connection: subscription works

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise SinkDown(f"{self.host}:{self.port}: {exc}") from exc
        self._sock, self._decoder, self._verified = sock, wire.Decoder(), False
        try:
            info = self._await_info(time.monotonic() + CONNECT_TIMEOUT)
            out = [wire.auth(info.nonce, self.ident, self.secret)]
            if self.confirm:
                out += [wire.subscribe(self.ident, channel) for channel in sorted(self.channels)]
            sock.sendall(b"".join(out))
        except (OSError, ProtocolError) as exc:
            self.disconnect()
            raise SinkDown(f"{self.host}:{self.port}: {exc}") from exc
        except SinkDown:
            self.disconnect()
            raise
        self.log.info("connected to hpfeeds broker %s (%s:%d) as %s%s", info.name, self.host,
                      self.port, self.ident, "" if self.confirm else " (unconfirmed delivery)")

    def _await_info(self, deadline: float) -> wire.Info:
        while True:
            if time.monotonic() >= deadline:
                raise SinkDown("no greeting from the broker")
            for message in self._receive(deadline - time.monotonic()):
                if message.opcode == wire.OP_INFO:
                    return wire.read_info(message.body)
                self._on_message(message)

    def disconnect(self) -> None:
        sock, self._sock = self._sock, None
        self._pending.clear()
        if sock is not None:
            sock.close()

    # -- delivery --------------------------------------------------------------------------

    def send(self, records: Sequence[Record]) -> list[tuple[Record, str]]:
        sock = self._sock
        if sock is None:
            raise SinkDown("not connected")
        refused: list[tuple[Record, str]] = []
        items: list[tuple[bytes, bytes]] = []  # (frame, digest of channel and payload)
        for record in records:
            try:
                channel, payload = split_record(record.data)
                frame = wire.publish(self.ident, channel, payload)
            except (ValueError, UnicodeError) as exc:
                refused.append((record, str(exc)))
                continue
            if channel not in self.channels:
                refused.append((record, f"channel {channel!r} is not configured"))
                continue
            items.append((frame, _digest(channel, payload)))
        if self.confirm and not self._verified and items:
            # The broker answers a refused subscription with an error, but it may still route
            # publishes that were already in its buffer: send one record alone first, so at
            # most that one can arrive twice (once per process, with an ident that may not
            # subscribe; the warning says so).
            self._transmit(sock, items[:1])
            self._verified = True
            items = items[1:]
        if items:
            self._transmit(sock, items)
        return refused

    def _transmit(self, sock: socket.socket, items: list[tuple[bytes, bytes]]) -> None:
        """Send, then wait for every copy to come back (confirm) or for TCP to take it all."""
        if self.confirm:
            self._pending.update(digest for _, digest in items)
        try:
            sock.sendall(b"".join(frame for frame, _ in items))
        except OSError as exc:
            raise SinkDown(f"send: {exc}") from exc
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        if self.confirm:
            while +self._pending:
                if time.monotonic() >= deadline:
                    raise SinkDown("published copies did not come back in time")
                for message in self._receive(deadline - time.monotonic()):
                    self._on_message(message)
        else:
            self._await_acked(sock, deadline)

    def idle(self) -> None:
        """Read (and drop) what other publishers sent on our channels, so the broker's send
        buffer to us never fills; notice a broker that went away."""
        sock = self._sock
        if sock is None:
            return
        while select.select([sock], [], [], 0)[0]:
            for message in self._receive(0):
                self._on_message(message)

    def _receive(self, timeout: float) -> list[wire.Message]:
        """The messages that arrive within `timeout` (none: an empty list)."""
        sock = self._sock
        if sock is None:
            raise SinkDown("not connected")
        if not select.select([sock], [], [], max(0.0, timeout))[0]:
            return []
        try:
            data = sock.recv(_READ)
        except OSError as exc:
            raise SinkDown(f"receive: {exc}") from exc
        if not data:
            raise SinkDown("broker closed the connection")
        try:
            return self._decoder.feed(data)
        except ProtocolError as exc:
            raise SinkDown(str(exc)) from exc

    def _on_message(self, message: wire.Message) -> None:
        if message.opcode == wire.OP_PUBLISH:
            try:
                copy = wire.read_publish(message.body)
            except ProtocolError as exc:
                raise SinkDown(str(exc)) from exc
            digest = _digest(copy.channel, copy.payload)
            if self._pending[digest] > 0:
                self._pending[digest] -= 1
        elif message.opcode == wire.OP_ERROR:
            text = wire.read_error(message.body)
            if self.confirm and "sub" in text.lower() and "allowed" in text.lower():
                self.confirm = False
                self.log.warning("hpfeeds broker refuses our subscription (%s): delivery is "
                                 "now confirmed by TCP only (the record in flight may arrive "
                                 "twice); allow ident %s to subscribe to its channels for "
                                 "confirmed delivery, or set confirm = \"no\"", text,
                                 self.ident)
            raise SinkDown(f"broker error: {text}")

    def _await_acked(self, sock: socket.socket, deadline: float) -> None:
        """Unconfirmed mode: wait until the broker's TCP stack acknowledged every byte."""
        while _unacked(sock):
            if time.monotonic() >= deadline:
                raise SinkDown("broker did not take the data in time")
            for message in self._receive(_ACK_POLL):
                self._on_message(message)


def _unacked(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])
