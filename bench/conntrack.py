"""The sensor namespace's connection tracking, as the bench needs it (issue 13's sweep stall).

The NFQUEUE rules (`-m conntrack --ctstate NEW`, tests/daemon.py nfq_rules) make the sensor's
kernel track every connection, and one table holds at most nf_conntrack_max entries (262,144
here: the host's value, read-only in a namespace). Past it the kernel drops new SYNs before the
listening socket or the master sees them ("nf_conntrack: table full in netns ..., dropping
packet" in dmesg). A closed connection stayed tracked the kernel's 120 s (TIME_WAIT), and the
bench made more than the table holds within that: a sweep rep makes 25,000 connections (five
bursts of 5,000 to fresh 4-tuples) in ~12 s, one_port's reps before it up to ~64,000 per port
(the ephemeral range) on each of its four. So a sweep rep of a full run found the table full: its
last 360 connections were never answered (timed out after 30 s, unrecorded) and it took 107 s,
until the oldest entries expired. Now every load starts with the table flushed (flush) and a
closed connection is tracked TIME_WAIT seconds; counters() and dropped() tell a load whether the
lab turned connections away; fill() makes the table full on purpose (the tests, and
bench/stallwatch.py --fill to see the stall again).

Talks ctnetlink (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h) from inside the namespace.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns import Host, inside  # noqa: E402

# How long the sensor tracks a closed TCP connection (seconds; the namespace's
# nf_conntrack_tcp_timeout_time_wait, the kernel's 120 by default): a long load does not pile
# them up. It is not enough alone: the kernel's garbage collector is the host's, for every
# namespace, and ran tens of seconds apart here, and an expired entry counts against the table
# until it is collected (seven 5,000-connection bursts at 5 s: 34,168 entries counted, 14,529
# of them live). Hence flush() before each load too.
TIME_WAIT = 5
# The most connections a second any target of the bench takes (the C epoll floor of issue 13,
# 14,960/s; the bench's own floors and honeytrap stay below it): TIME_WAIT of them fill under a
# third of the table.
PEAK_RATE = 15000

NETLINK_NETFILTER = 12
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id
NLATTR = struct.Struct("=HH")  # length, type
NFNETLINK_V0 = 0
CTNETLINK = 1 << 8  # NFNL_SUBSYS_CTNETLINK, the message type's high byte
CT_NEW, CT_DELETE = CTNETLINK | 0, CTNETLINK | 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLMSG_ERROR = 2  # an acknowledgement is an error message with error 0
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMEOUT = 1, 2, 3, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
# A created entry is confirmed (in the table) already: a status without it is refused (EBUSY).
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3
NETLINK_TIMEOUT = 10.0
# fill(): entries made per send (one netlink message each), and how long each stays.
FILL_BATCH = 512
FILL_SECONDS = 600
# fill()'s entries are UDP flows between these two documentation addresses (RFC 5737), never a
# tuple the lab's traffic uses; one per (source port, destination port).
FILL_SOURCE, FILL_DESTINATION = "192.0.2.1", "192.0.2.2"


def counters(host: Host) -> dict[str, int]:
    """The host's table: its entries now (expired ones not yet collected included) and their
    limit, and the packets it dropped so far for want of room ("drop") or evicted an entry for
    ("early_drop"), summed over the CPUs (/proc/net/stat/nf_conntrack, hexadecimal, per
    namespace). {} if the host has no connection tracking."""
    text = host.cmd("sh", "-c", "cat /proc/sys/net/netfilter/nf_conntrack_count "
                    "/proc/sys/net/netfilter/nf_conntrack_max /proc/net/stat/nf_conntrack",
                    check=False)
    lines = text.splitlines()
    if len(lines) < 3:
        return {}
    names = lines[2].split()
    out = {"entries": int(lines[0]), "max": int(lines[1]), "drop": 0, "early_drop": 0}
    for line in lines[3:]:
        values = dict(zip(names, line.split(), strict=False))
        for name in ("drop", "early_drop"):
            out[name] += int(values.get(name, "0"), 16)
    return out


def dropped(before: dict[str, int], after: dict[str, int]) -> int:
    """Packets the host's table dropped between two looks (counters): it was full."""
    return after.get("drop", 0) - before.get("drop", 0)


def flush(host: Host) -> None:
    """Forget every connection the host's kernel tracks (a delete without a tuple: as
    `conntrack -F`), so a load starts with the table as a fresh lab has it. Live connections
    lose nothing: their next packets match `-m socket` and are tracked again."""
    request = NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, 0)  # every family
    with _netlink(host) as sock:
        sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(request), CT_DELETE,
                                NLM_F_REQUEST | NLM_F_ACK, 1, 0) + request)
        error = _error(sock.recv(65536))
    if error:
        raise OSError(error, f"conntrack flush in {host.name}: {os.strerror(error)}")


def fill(host: Host, room: int) -> int:
    """Add entries to the host's table until `room` are left free: UDP flows between FILL_SOURCE
    and FILL_DESTINATION marked as answered and assured (the kernel never evicts an assured
    entry for a new one, as it does not a closed connection's in TIME_WAIT), each for
    FILL_SECONDS or until a flush. Returns how many were added."""
    tracked = counters(host)
    wanted = max(0, tracked["max"] - tracked["entries"] - room)
    source, destination = socket.inet_aton(FILL_SOURCE), socket.inet_aton(FILL_DESTINATION)
    added = 0
    with _netlink(host) as sock:
        while added < wanted:
            batch = [_new_flow(source, destination, added + i, seq=added + i + 1)
                     for i in range(min(FILL_BATCH, wanted - added))]
            batch[-1] = _new_flow(source, destination, added + len(batch) - 1,
                                  seq=added + len(batch), ack=True)
            sock.send(b"".join(batch))
            added += len(batch)
            # Errors come back for any message that failed, then the last one's acknowledgement.
            while True:
                reply = sock.recv(65536)
                offset = 0
                last = False
                while offset < len(reply):
                    length, _kind, _flags, seq, _pid = NLMSGHDR.unpack_from(reply, offset)
                    error = _error(reply[offset:offset + length])
                    if error:
                        raise OSError(error, f"conntrack fill in {host.name} (entry {seq}): "
                                             f"{os.strerror(error)}")
                    last = last or seq == added
                    offset += (length + 3) & ~3
                if last:
                    break
    return added


def _new_flow(source: bytes, destination: bytes, index: int, seq: int, ack: bool = False) -> bytes:
    sport, dport = 1024 + index % 60000, 1024 + index // 60000

    def tuple_of(src: bytes, dst: bytes, sp: int, dp: int) -> bytes:
        ip = _attr(CTA_IP_V4_SRC, src) + _attr(CTA_IP_V4_DST, dst)
        proto = (_attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP]))
                 + _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sp))
                 + _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dp)))
        return _nested(CTA_TUPLE_IP, ip) + _nested(CTA_TUPLE_PROTO, proto)

    body = (NFGENMSG.pack(socket.AF_INET, NFNETLINK_V0, 0)
            + _nested(CTA_TUPLE_ORIG, tuple_of(source, destination, sport, dport))
            + _nested(CTA_TUPLE_REPLY, tuple_of(destination, source, dport, sport))
            + _attr(CTA_STATUS, struct.pack("!I", IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED))
            + _attr(CTA_TIMEOUT, struct.pack("!I", FILL_SECONDS)))
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | (NLM_F_ACK if ack else 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), CT_NEW, flags, seq, 0) + body


def _attr(kind: int, value: bytes) -> bytes:
    data = NLATTR.pack(NLATTR.size + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def _nested(kind: int, value: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, value)


def _error(message: bytes) -> int:
    """The errno of a netlink error message (0: an acknowledgement, or not an error message)."""
    _length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(message)
    if kind != NLMSG_ERROR:
        return 0
    return -int(struct.unpack_from("=i", message, NLMSGHDR.size)[0])


def _netlink(host: Host) -> socket.socket:
    """A ctnetlink socket in the host's namespace."""
    with inside(host):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.settimeout(NETLINK_TIMEOUT)
    return sock
