"""ONC RPC over UDP to the portmapper (RFC 5531, RFC 1833): a reply with the call's xid,
MSG_ACCEPTED with an AUTH_NONE verifier: NULL succeeds, GETPORT answers the port of a program
we claim (portmapper itself, NFS, mountd) or 0, DUMP lists the mappings that fit in the
reply's size bound; other programs get PROG_UNAVAIL, other portmapper versions PROG_MISMATCH
(versions 2-4, as rpcbind)."""

from __future__ import annotations

import struct

from honeytrap.dialogue.base import Context, Dialogue
from honeytrap.dialogue.datagram import DatagramDialogue

CALL, REPLY, MSG_ACCEPTED = 0, 1, 0
SUCCESS, PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL = 0, 1, 2, 3
PMAP_PROG = 100000
PMAP_VERSIONS = (2, 4)
PROC_NULL, PROC_GETPORT, PROC_DUMP = 0, 3, 4
IPPROTO_TCP, IPPROTO_UDP = 6, 17
# (program, version, protocol, port): what a Linux NFS server's rpcbind lists
MAPPINGS = (
    (100000, 4, IPPROTO_TCP, 111), (100000, 3, IPPROTO_TCP, 111), (100000, 2, IPPROTO_TCP, 111),
    (100000, 4, IPPROTO_UDP, 111), (100000, 3, IPPROTO_UDP, 111), (100000, 2, IPPROTO_UDP, 111),
    (100005, 3, IPPROTO_UDP, 20048), (100005, 3, IPPROTO_TCP, 20048),
    (100003, 3, IPPROTO_TCP, 2049), (100003, 4, IPPROTO_TCP, 2049),
)
MAX_AUTH = 400  # RFC 5531 8.2: opaque_auth bodies are at most 400 bytes


def _auth(data: bytes, pos: int) -> int:
    if len(data) < pos + 8:
        raise ValueError("truncated credentials")
    length = int.from_bytes(data[pos + 4 : pos + 8], "big")
    if length > MAX_AUTH:
        raise ValueError("credentials over 400 bytes")
    return pos + 8 + (length + 3) // 4 * 4


def reply(datagram: bytes, budget: int) -> bytes | None:
    """The reply to an RPC call, at most `budget` bytes; None if `datagram` is not a call."""
    if len(datagram) < 40:
        return None
    xid, kind, rpcvers, prog, vers, proc = struct.unpack_from("!6I", datagram)
    if kind != CALL or rpcvers != 2:
        return None
    try:
        args = _auth(datagram, _auth(datagram, 24))
    except ValueError:
        return None
    if args > len(datagram):
        return None
    head = struct.pack("!IIIII", xid, REPLY, MSG_ACCEPTED, 0, 0)  # verifier AUTH_NONE
    if prog != PMAP_PROG:
        return head + struct.pack("!I", PROG_UNAVAIL)
    if not PMAP_VERSIONS[0] <= vers <= PMAP_VERSIONS[1]:
        return head + struct.pack("!III", PROG_MISMATCH, *PMAP_VERSIONS)
    ok = head + struct.pack("!I", SUCCESS)
    if proc == PROC_NULL:
        return ok
    if proc == PROC_GETPORT and vers == 2 and len(datagram) >= args + 16:
        want, want_vers, want_proto = struct.unpack_from("!III", datagram, args)
        port = next((m[3] for m in MAPPINGS if m[:3] == (want, want_vers, want_proto)), 0)
        return ok + struct.pack("!I", port)
    if proc == PROC_DUMP and vers == 2:
        entries = b""
        for mapping in MAPPINGS:  # XDR optional-data list: 1, entry, ..., 0
            entry = struct.pack("!I4I", 1, *mapping)
            if len(ok) + len(entries) + len(entry) + 4 > budget:
                break
            entries += entry
        return ok + entries + struct.pack("!I", 0)
    return head + struct.pack("!I", PROC_UNAVAIL)


def answer(datagram: bytes, ctx: Context, budget: int) -> bytes | None:
    return reply(datagram, budget)


def factory(ctx: Context) -> Dialogue:
    return DatagramDialogue("rpc", answer, ctx)
