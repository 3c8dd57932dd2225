"""HASSH, Salesforce's SSH client fingerprint (github.com/salesforce/hassh, BSD 3-Clause): the
MD5 of the client KEXINIT's name-lists

    kex_algorithms;encryption_algorithms_client_to_server;
    mac_algorithms_client_to_server;compression_algorithms_client_to_server

each as sent (comma-separated, in the client's order)."""

from __future__ import annotations

import hashlib


def hassh_algorithms(kex: str, ciphers: str, macs: str, compression: str) -> str:
    return ";".join((kex, ciphers, macs, compression))


def hassh(algorithms: str) -> str:
    # MD5 is what HASSH is defined as: a fingerprint, not a security use
    return hashlib.md5(algorithms.encode("ascii", "replace"), usedforsecurity=False).hexdigest()
