"""The default outputs' batch hooks (SaveFile.savedata_batch, the line logs' postproc_batch:
one call per batch, hooks.SaveDataBatch) write exactly what their per-attack hooks write: the
same attack files under the same names, the same bytes in attacker.log and attackers.json, the
same analysis on each attack, for any mix of attacks (virtual ones, downloads, no payload, text
json escapes) and for a line that cannot be made (it costs that line only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_output_plugins import PLUGIN_DIR, START, load

from honeytrap import writebatch
from honeytrap.attack import Attack, Connection, DialogueRecord, Download, Mode, Payload
from honeytrap.plugin import Registry, load_module

LOGJSON = load_module(PLUGIN_DIR, "logJSON")

TEXT = st.text(max_size=8)
ATTACKS = st.lists(st.fixed_dictionaries({
    "payload": st.binary(max_size=40) | st.sampled_from([b"", b"BENCH" * 40]),
    "virtual": st.booleans(),
    "downloads": st.lists(st.binary(min_size=0, max_size=8), max_size=2),
    "start": st.floats(START - 2, START + 2),
    "remote": st.sampled_from(["198.51.100.7", "2001:db8::7", "fe80::1%eth0", "x"]),
    "protocol": st.sampled_from(["tcp", "udp", "ip"]),
    "note": st.none() | TEXT,
    "fields": st.dictionaries(TEXT, st.integers() | TEXT | st.booleans(), max_size=2),
}), max_size=12)


def attacks_of(specs: list[dict[str, Any]]) -> list[Attack]:
    """Fresh attacks for the specs (the same ids, times and bytes each time: made twice)."""
    made = []
    for n, spec in enumerate(specs):
        conn = Connection(spec["protocol"], "192.0.2.1", 80 + n, spec["remote"], 40000 + n,
                          Payload(spec["payload"]))
        attack = Attack(conn, mode=Mode.NORMAL, start_time=spec["start"],
                        end_time=spec["start"] + 0.01, is_virtual=spec["virtual"],
                        id=f"{n:032x}",
                        dialogue=DialogueRecord("raw", (len(spec["payload"]), -1), Payload(b"\n"),
                                                spec["fields"]))
        for k, data in enumerate(spec["downloads"]):
            attack.add_download(Download("http", "203.0.113.9", 80, f"f{k}", f"http://x/{k}",
                                         Payload(data)))
        if spec["note"] is not None:
            attack.add_note(spec["note"])
        made.append(attack)
    return made


def outputs(directory: Path) -> Registry:
    return load(
        ("SaveFile", {"attacks_dir": str(directory / "attacks"),
                      "downloads_dir": str(directory / "downloads")}),
        ("logAttacker", {"logfile": str(directory / "attacker.log")}),
        ("logJSON", {"logfile": str(directory / "attackers.json")}),
    )


def run(directory: Path, attacks: list[Attack], batched: bool) -> None:
    """The three outputs' hooks for the attacks in one write batch, as the pipeline runs them:
    per attack (each attack's SAVEDATA then POSTPROC hooks) or per batch."""
    registry = outputs(directory)
    batch = writebatch.WriteBatch()
    with writebatch.running(batch):
        if batched:
            for hook in ("savedata_batch", "postproc_batch"):
                for _name, call in registry.hooks[hook]:
                    call(attacks)
        else:
            for attack in attacks:
                for hook in ("savedata", "postproc"):
                    for _name, call in registry.hooks[hook]:
                        call(attack)
    for write, records in batch.take().items():
        write(records)
    registry.close()


def written(directory: Path) -> dict[str, bytes]:
    """Every file under the directory by its path, the directory's own name taken out."""
    found = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            found[str(path.relative_to(directory))] = path.read_bytes().replace(
                os.fsencode(directory), b"DIR")
    return found


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ATTACKS)
def test_batch_hooks_write_what_the_per_attack_hooks_write(
    tmp_path_factory: pytest.TempPathFactory, specs: list[dict[str, Any]],
) -> None:
    each, batch = tmp_path_factory.mktemp("each"), tmp_path_factory.mktemp("batch")
    one, other = attacks_of(specs), attacks_of(specs)
    run(each, one, batched=False)
    run(batch, other, batched=True)
    assert written(batch) == written(each)
    assert [str(a.analysis).replace(str(batch), "DIR") for a in other] == [
        str(a.analysis).replace(str(each), "DIR") for a in one]


def test_a_line_that_cannot_be_made_costs_that_line_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attack whose logJSON text raises (a plugin's analysis json refuses) loses its own line
    in the batch, not the others'; the error is raised for the pipeline to count."""
    attacks = attacks_of([{"payload": b"x", "virtual": False, "downloads": [], "start": START,
                           "remote": "198.51.100.7", "protocol": "tcp", "note": None,
                           "fields": {}}] * 3)
    attacks[1].set_analysis("Other", {"bad": object()})
    registry = load(("logJSON", {"logfile": str(tmp_path / "attackers.json")}))
    with pytest.raises(TypeError):
        registry.hooks["postproc_batch"][0][1](attacks)
    registry.close()
    lines = (tmp_path / "attackers.json").read_bytes().splitlines()
    assert len(lines) == 2
    assert [line.count(b'"id":"%s"' % a.id.encode()) for line, a in
            zip(lines, (attacks[0], attacks[2]), strict=True)] == [1, 1]
