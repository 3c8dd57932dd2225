"""Records sized for Elastic: a download in attackers.json and in hpfeeds events names its sample
(hashes, size, file type, the name SaveFile stores it under) instead of carrying it as hex;
`inline_samples` brings the bytes back; the attack payload's data_hex stays (T-Pot reads it)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from test_output_plugins import load, make_attack, run_hook

from honeytrap.attack import Attack, Download, Payload
from honeytrap.filetype import TYPES, file_type
from honeytrap.outputs.hpfeeds import event_payload

SAMPLE = b"MZ\x90\x00" + os.urandom(1024 * 1024)  # a 1 MiB "PE" sample
SAMPLE_KEYS = {"md5_hash", "sha256_hash", "sha512_hash", "length", "file_type", "stored_as"}
LINE_BUDGET = 8192  # bytes: a line with a 1 MiB sample named, not carried


def attack_with_sample() -> Attack:
    attack = make_attack(b"GET /x.exe HTTP/1.0\r\n\r\n")
    attack.add_download(Download("http", "203.0.113.9", 80, "x.exe", "http://203.0.113.9/x.exe",
                                 Payload(SAMPLE)))
    return attack


def test_logjson_names_the_sample_savefile_keeps(tmp_path: Path) -> None:
    registry = load(
        ("SaveFile", {"attacks_dir": str(tmp_path / "attacks"),
                      "downloads_dir": str(tmp_path / "downloads")}),
        ("logJSON", {"logfile": str(tmp_path / "attackers.json")}),
    )
    attack = attack_with_sample()
    for hook in ("savedata", "postproc"):
        run_hook(registry, hook, attack)
    registry.close()
    line = (tmp_path / "attackers.json").read_bytes()
    assert len(line) < LINE_BUDGET
    record = json.loads(line)
    sample = record["downloads"][0]["payload"]
    assert set(sample) == SAMPLE_KEYS
    assert sample["md5_hash"] == hashlib.md5(SAMPLE).hexdigest()  # noqa: S324 - the record's
    assert sample["sha256_hash"] == hashlib.sha256(SAMPLE).hexdigest()
    assert sample["length"] == len(SAMPLE) and sample["file_type"] == "pe"
    assert (tmp_path / "downloads" / sample["stored_as"]).read_bytes() == SAMPLE
    assert bytes.fromhex(record["attack_connection"]["payload"]["data_hex"]).startswith(b"GET ")


def test_logjson_inline_samples_restores_the_bytes(tmp_path: Path) -> None:
    registry = load(("logJSON", {"logfile": str(tmp_path / "attackers.json"),
                                 "inline_samples": "yes"}))
    run_hook(registry, "postproc", attack_with_sample())
    registry.close()
    sample = json.loads((tmp_path / "attackers.json").read_bytes())["downloads"][0]["payload"]
    assert set(sample) == SAMPLE_KEYS | {"data_hex"}
    assert bytes.fromhex(sample["data_hex"]) == SAMPLE


def test_hpfeeds_event_names_the_sample_and_keeps_the_payload() -> None:
    data = event_payload(attack_with_sample(), 1_000_000, "s1")
    assert data is not None and len(data) < LINE_BUDGET
    doc = json.loads(data)
    assert set(doc["downloads"][0]["payload"]) == SAMPLE_KEYS
    assert "truncated" not in doc["attack_connection"]["payload"]
    inline = event_payload(attack_with_sample(), 4_000_000, "s1",
                           inline_samples=True)
    assert inline is not None
    assert bytes.fromhex(json.loads(inline)["downloads"][0]["payload"]["data_hex"]) == SAMPLE


def test_record_keys_are_fixed_whatever_the_sample() -> None:
    """No dynamic keys (Elastic's field limit): the same key set for any two samples."""
    keys = set()
    for data in (b"", b"#!/bin/sh\n", b"\x7fELF" + bytes(60), os.urandom(64)):
        attack = make_attack()
        attack.add_download(Download("tftp", "203.0.113.9", 69, "f", "tftp://x/f", Payload(data)))
        keys.add(frozenset(attack.to_json()["downloads"][0]["payload"]))
    assert keys == {frozenset(SAMPLE_KEYS)}


@given(st.binary(max_size=600))
def test_file_type_is_one_of_a_fixed_vocabulary(data: bytes) -> None:
    assert file_type(data) in TYPES


def test_file_types_of_common_samples() -> None:
    cases = {b"MZ\x90\x00": "pe", b"\x7fELF\x02": "elf", b"#!/bin/sh\nwget x": "script",
             b"PK\x03\x04": "zip", b"<!DOCTYPE html><html>": "html", b"echo hi\n": "text",
             b"\x00\x01\x02": "data", b"": "empty"}
    assert {data: file_type(data) for data in cases} == cases
