"""A sample's file type from its first bytes (sans-IO), for records that name a sample without
carrying it. A fixed vocabulary, so a record's `file_type` is one keyword field in Elastic."""

from __future__ import annotations

# (prefix, type), first match wins. Magic numbers from the formats' specifications: PE/MZ
# (Microsoft PE format), ELF (System V ABI), ZIP (PKWARE APPNOTE), gzip (RFC 1952), bzip2, xz,
# 7z, RAR, Mach-O, Java class, PDF, OLE2 compound files (MS-CFB), shell scripts ("#!").
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "pe"),
    (b"\x7fELF", "elf"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\xcf\xfa\xed\xfe", "macho"),
    (b"\xce\xfa\xed\xfe", "macho"),
    (b"\xca\xfe\xba\xbe", "java-class"),
    (b"%PDF-", "pdf"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole2"),
    (b"#!", "script"),
)
TYPES = frozenset(t for _, t in MAGIC) | {"html", "text", "empty", "data"}
# Bytes looked at to tell text from binary data.
TEXT_SAMPLE = 512


def file_type(data: bytes) -> str:
    """One of TYPES."""
    if not data:
        return "empty"
    for prefix, name in MAGIC:
        if data.startswith(prefix):
            return name
    head = data[:TEXT_SAMPLE]
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    if all(b in b"\t\n\r" or 0x20 <= b < 0x7F for b in head):
        return "text"
    return "data"
