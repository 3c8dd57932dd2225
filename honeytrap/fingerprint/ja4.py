"""JA4, the TLS client fingerprint of FoxIO's JA4+ suite (only JA4 itself, which FoxIO publishes
under the BSD 3-Clause licence; github.com/FoxIO-LLC/ja4, technical_details/JA4.md).

    JA4 = a_b_c
    a: "t" (TLS over TCP), the TLS version (2 chars), "d" with SNI / "i" without, the number
       of ciphers and of extensions (2 digits each, at most 99), and the first and last
       character of the first ALPN value ("00" without ALPN)
    b: the first 12 hex digits of SHA-256 over the ciphers sorted, as 4-digit lower-case hex,
       comma-separated
    c: the same over the extensions sorted, SNI and ALPN left out, then "_" and the signature
       algorithms in the client's order (no "_" when there are none)
GREASE values (RFC 8701) are ignored everywhere.
"""

from __future__ import annotations

import hashlib

from honeytrap.fingerprint.clienthello import (
    EXT_ALPN,
    EXT_SERVER_NAME,
    ClientHello,
    is_grease,
)

# JA4.md "TLS Version"; anything else is "00".
VERSIONS = {
    0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
    0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3",
}
EMPTY_HASH = "000000000000"  # JA4.md: b or c of an empty list
MAX_COUNT = 99  # two digits


def _hex_list(values: list[int]) -> str:
    return ",".join(f"{v:04x}" for v in values)


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _alpn(hello: ClientHello) -> str:
    if not hello.alpn or not hello.alpn[0]:
        return "00"
    first = hello.alpn[0]
    a, z = chr(first[0]), chr(first[-1])
    if a.isascii() and a.isalnum() and z.isascii() and z.isalnum():
        return a + z
    # JA4.md: a non-alphanumeric first or last byte: the first and last hex digits instead
    digits = first.hex()
    return digits[0] + digits[-1]


def version(hello: ClientHello) -> str:
    offered = [v for v in hello.supported_versions if not is_grease(v)]
    return VERSIONS.get(max(offered) if offered else hello.legacy_version, "00")


def ja4_parts(hello: ClientHello) -> tuple[str, str, str]:
    """JA4's a, and the unhashed strings behind b and c (JA4_r, "raw", without its prefix)."""
    ciphers = [c for c in hello.ciphers if not is_grease(c)]
    exts = [e for e in hello.extensions if not is_grease(e)]
    sni = "d" if EXT_SERVER_NAME in exts else "i"
    a = (f"t{version(hello)}{sni}{min(len(ciphers), MAX_COUNT):02d}"
         f"{min(len(exts), MAX_COUNT):02d}{_alpn(hello)}")
    b = _hex_list(sorted(ciphers))
    c = _hex_list(sorted(e for e in exts if e not in (EXT_SERVER_NAME, EXT_ALPN)))
    sigs = [s for s in hello.signature_algorithms if not is_grease(s)]
    if sigs:
        c += "_" + _hex_list(sigs)
    return a, b, c


def ja4(hello: ClientHello) -> str:
    a, b, c = ja4_parts(hello)
    # JA4.md: an empty cipher list, or no extension left after removing SNI and ALPN, hashes
    # to twelve zeros
    b_hash = _hash12(b) if b else EMPTY_HASH
    c_hash = _hash12(c) if c else EMPTY_HASH
    return f"{a}_{b_hash}_{c_hash}"
