"""JA3, Salesforce's TLS client fingerprint (github.com/salesforce/ja3, BSD 3-Clause):

    SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats

decimal values, "-" within a field, GREASE (RFC 8701) left out, in the client's order; the JA3
hash is the MD5 of that string. SSLVersion is the ClientHello's legacy_version.
"""

from __future__ import annotations

import hashlib

from honeytrap.fingerprint.clienthello import ClientHello, is_grease


def _field(values: list[int]) -> str:
    return "-".join(str(v) for v in values if not is_grease(v))


def ja3(hello: ClientHello) -> str:
    return ",".join([
        str(hello.legacy_version),
        _field(hello.ciphers),
        _field(hello.extensions),
        _field(hello.groups),
        "-".join(str(p) for p in hello.point_formats),
    ])


def ja3_hash(text: str) -> str:
    # MD5 is what JA3 is defined as: a fingerprint, not a security use
    return hashlib.md5(text.encode("ascii"), usedforsecurity=False).hexdigest()
