"""Imports done before dynamic servers drop privileges.

After `setuid` a dynamic server may no longer read the interpreter's own files (a Python under
/root, as pyenv installs it, or a virtualenv in a private directory), so anything imported
lazily later fails: `"x".encode("utf-16-le")` needs `encodings.utf_16_le`, resolving a host
name may need `encodings.idna`. The master (root) imports these once, before any fork; the
children share them copy-on-write. Plugins import what they need at module level, in `load`.
"""

from __future__ import annotations

import codecs
import importlib
import logging

log = logging.getLogger("honeytrap.preload")

# Codecs attack strings, protocols and decoders use (codecs.lookup imports their modules).
CODECS = (
    "ascii", "utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be",
    "latin-1", "cp1252", "cp437", "idna", "punycode", "unicode-escape", "raw-unicode-escape",
    "base64", "hex", "zlib",
)
# Standard modules imported lazily inside the standard library. Only those: each module here is
# memory every process holds (the master's, shared copy-on-write, and the pages a child copies
# when it touches them), and one nobody imports is pure cost (urllib.request, http.client and
# email's parsers, ftplib, gzip, logging.handlers were here and none of ours imports them; at
# 5,000 idle connections they cost 1.5 MiB of PSS in all, bench/idle.py). A plugin's client
# (httpDownload's http.client) comes with the plugin, imported at module level in `load`.
MODULES = (
    "encodings.aliases", "unicodedata", "stringprep", "ssl", "urllib.parse", "ipaddress",
    "json", "json.decoder", "json.encoder", "hashlib", "hmac", "zlib", "secrets",
    "tempfile", "shutil", "concurrent.futures.thread", "asyncio", "asyncio.selector_events",
    "asyncio.unix_events",
)


def preload() -> None:
    for name in CODECS:
        try:
            codecs.lookup(name)
        except LookupError:
            log.debug("codec %s not available", name)
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            log.debug("module %s not available", module)
