"""Network interfaces and their addresses, for the pcap monitor's `-i` and `-a` defaults.

Linux only, standard library only: interface names and flags from if_nameindex() and the
SIOCGIFFLAGS ioctl, IPv4 addresses from SIOCGIFCONF (every address, secondary ones included,
each under its label, e.g. `eth0` or `eth0:1`), IPv6 addresses from /proc/net/if_inet6. All of
them answer for the network namespace of the calling process.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct

from honeytrap.errors import ConfigError

SIOCGIFCONF = 0x8912  # <linux/sockios.h>
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1  # <net/if.h>
IFF_LOOPBACK = 0x8
IFNAMSIZ = 16
# struct ifreq: the name, then a union whose largest member is struct ifmap (two unsigned longs,
# a short and three chars, padded to a long): 40 bytes on 64-bit systems, 32 on 32-bit ones.
IFREQ_SIZE = IFNAMSIZ + max(16, struct.calcsize("LLHBBB0L"))
SOCKADDR_IN_ADDR_AT = 4  # sin_family (2), sin_port (2), then sin_addr
# Room for this many IPv4 addresses per SIOCGIFCONF call; doubled until everything fits, up to
# MAX_IFCONF_ENTRIES (a sensor with more addresses than that is not one we can filter for anyway).
IFCONF_ENTRIES = 64
MAX_IFCONF_ENTRIES = 65536
IF_INET6 = "/proc/net/if_inet6"
ANY = "any"  # pcap's pseudo-device for every interface


def _flags(sock: socket.socket, name: str) -> int:
    request = struct.pack(f"{IFNAMSIZ}s{IFREQ_SIZE - IFNAMSIZ}x", name.encode())
    reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    (flags,) = struct.unpack_from("H", reply, IFNAMSIZ)
    return int(flags)


def interface_names() -> list[str]:
    """Every interface, in index order."""
    return [name for _, name in sorted(socket.if_nameindex())]


def default_interface() -> str:
    """The first interface (by index) that is up and not loopback: `-i`'s default."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in interface_names():
            try:
                flags = _flags(sock, name)
            except OSError:
                continue  # removed since we listed it
            if flags & IFF_UP and not flags & IFF_LOOPBACK:
                return name
    raise ConfigError("no interface is up (besides loopback); name one with -i", key="interface")


def check_interface(name: str) -> None:
    """ConfigError unless `name` is an interface here (or pcap's `any`)."""
    if name == ANY:
        return
    try:
        socket.if_nametoindex(name)
    except OSError as exc:
        raise ConfigError(f"no such interface: {name!r}", key="interface") from exc


def _ipv4_addresses() -> list[tuple[str, str]]:
    """(interface, address) for every IPv4 address; aliases under their base interface."""
    entries = IFCONF_ENTRIES
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while True:
            size = entries * IFREQ_SIZE
            buf = array.array("B", bytes(size))
            address, _ = buf.buffer_info()
            ifconf = struct.pack("iP", size, address)
            used, _ = struct.unpack("iP", fcntl.ioctl(sock.fileno(), SIOCGIFCONF, ifconf))
            if used < size or entries >= MAX_IFCONF_ENTRIES:
                break
            entries *= 2
    data = buf.tobytes()[:used]
    found = []
    for at in range(0, used - IFREQ_SIZE + 1, IFREQ_SIZE):
        label = data[at : at + IFNAMSIZ].split(b"\0", 1)[0].decode(errors="replace")
        raw = data[at + IFNAMSIZ + SOCKADDR_IN_ADDR_AT : at + IFNAMSIZ + SOCKADDR_IN_ADDR_AT + 4]
        found.append((label.split(":", 1)[0], socket.inet_ntop(socket.AF_INET, raw)))
    return found


def _ipv6_addresses() -> list[tuple[str, str]]:
    """(interface, address) for every IPv6 address, from /proc/net/if_inet6."""
    try:
        with open(IF_INET6, encoding="ascii") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []  # IPv6 disabled
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        raw = bytes.fromhex(fields[0])
        found.append((fields[5], socket.inet_ntop(socket.AF_INET6, raw)))
    return found


def interface_addresses(name: str) -> list[str]:
    """The IPv4 then IPv6 addresses of interface `name` (`any`: of every interface).

    Link-local IPv6 addresses are included: an attacker on the link can use them too.
    """
    check_interface(name)
    return [
        address
        for interface, address in _ipv4_addresses() + _ipv6_addresses()
        if name == ANY or interface == name
    ]
