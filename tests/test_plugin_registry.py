"""The plugin registry: loading in configuration order, load failures, closing, reloading."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from honeytrap.attack import Attack, Connection, Payload
from honeytrap.config import Config, OptionValue, PluginSpec
from honeytrap.errors import PluginError
from honeytrap.plugin import (
    HOOKS,
    PluginContext,
    ReadEvent,
    Registry,
    load_module,
    load_plugins,
)

FIXTURES = str(Path(__file__).resolve().parent / "plugins_fixture")


def config(*specs: tuple[str, dict[str, OptionValue]], plugin_dir: str = FIXTURES) -> Config:
    return Config(plugin_dir=plugin_dir, plugins=[PluginSpec(n, dict(o)) for n, o in specs])


def probe(registry: Registry, name: str) -> Any:
    return next(p.instance for p in registry.plugins if p.name == name)


def an_attack() -> Attack:
    return Attack(Connection("tcp", "192.0.2.1", 80, "198.51.100.7", 40001, Payload(b"x")))


def a_read() -> ReadEvent:
    return ReadEvent("tcp", "192.0.2.1", 80, "198.51.100.7", 40001, "in", b"data")


@pytest.mark.parametrize("order", [["Alpha", "Beta"], ["Beta", "Alpha"]])
def test_plugins_load_and_hook_in_configuration_order(order: list[str]) -> None:
    registry = load_plugins(config(*[(name, {}) for name in order]))
    assert [p.name for p in registry.plugins] == order
    for hook in HOOKS:
        assert [name for name, _ in registry.hooks[hook]] == order
    registry.close()


def test_only_methods_named_after_hooks_are_registered(tmp_path: Path) -> None:
    (tmp_path / "Partial.py").write_text(
        "class P:\n"
        "    def analyze(self, attack): pass\n"
        "    def helper(self): pass\n"
        "def load(ctx):\n"
        "    return P()\n"
    )
    registry = load_plugins(config(("Partial", {}), plugin_dir=str(tmp_path)))
    assert {hook for hook in HOOKS if registry.hooks[hook]} == {"analyze"}


def test_a_missing_plugin_file_is_a_plugin_error_naming_it() -> None:
    with pytest.raises(PluginError, match="plugin Nowhere: no file"):
        load_plugins(config(("Nowhere", {})))


@pytest.mark.parametrize("name", ["../Alpha", "Alpha.py", "", "1abc", "a-b"])
def test_a_plugin_name_that_is_not_a_module_name_is_refused(name: str) -> None:
    with pytest.raises(PluginError, match="not a valid module name"):
        load_plugins(config((name, {})))


def test_a_plugin_without_load_is_a_plugin_error_naming_it() -> None:
    with pytest.raises(PluginError, match=r"plugin NoLoad: module has no load\(ctx\)"):
        load_plugins(config(("NoLoad", {})))


def test_a_failing_load_is_a_plugin_error_naming_it() -> None:
    with pytest.raises(PluginError, match="plugin LoadRaises: load failed: .*cannot start"):
        load_plugins(config(("LoadRaises", {})))


def test_a_plugin_error_from_load_is_given_the_plugin_name() -> None:
    with pytest.raises(PluginError, match="^plugin LoadPluginError: option frobnicate"):
        load_plugins(config(("LoadPluginError", {})))


def test_a_failing_import_is_a_plugin_error_and_leaves_no_module_behind() -> None:
    with pytest.raises(PluginError, match="plugin ImportRaises: .* failed to import"):
        load_plugins(config(("ImportRaises", {})))
    assert "honeytrap_plugins.ImportRaises" not in sys.modules


def test_a_syntax_error_is_a_plugin_error_naming_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "Broken.py").write_text("def load(ctx)\n    return None\n")
    with pytest.raises(PluginError, match="plugin Broken: .* failed to compile"):
        load_plugins(config(("Broken", {}), plugin_dir=str(tmp_path)))


def test_a_half_loaded_registry_is_closed(tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    with pytest.raises(PluginError, match="plugin LoadRaises"):
        load_plugins(config(("Closer", {"marker": str(marker)}), ("LoadRaises", {})))
    assert marker.read_text() == "closed\n"


def test_close_runs_in_reverse_load_order_and_survives_a_failing_close() -> None:
    registry = load_plugins(config(("Alpha", {"fail": "close"}), ("Beta", {})))
    alpha, beta = probe(registry, "Alpha"), probe(registry, "Beta")
    registry.close()
    assert alpha.calls == ["close"] and beta.calls == ["close"]


def test_a_failing_perread_hook_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = load_plugins(config(("Alpha", {"fail": ["perread"]}), ("Beta", {})))
    with caplog.at_level(logging.ERROR, logger="honeytrap.plugin"):
        registry.perread(a_read())
    assert probe(registry, "Beta").calls == ["perread"]
    assert "plugin Alpha failed in perread" in caplog.text


def test_a_failing_after_fork_hook_does_not_stop_the_others() -> None:
    registry = load_plugins(config(("Alpha", {"fail": "after_fork"}), ("Beta", {})))
    registry.after_fork()
    assert probe(registry, "Beta").calls == ["after_fork"]


PLUGIN_TEMPLATE = (
    "VALUE = {value}\n"
    "class P:\n"
    "    def analyze(self, attack):\n"
    "        attack.add_note('value %d' % VALUE)\n"
    "def load(ctx):\n"
    "    return P()\n"
)


def test_reload_sees_the_plugin_file_as_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edited within the same second with the same size (where a .pyc cache would be taken
    for current), the new code still runs."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as in production, not as here
    path = tmp_path / "Edited.py"
    path.write_text(PLUGIN_TEMPLATE.format(value=1))
    old = load_plugins(config(("Edited", {}), plugin_dir=str(tmp_path)))
    path.write_text(PLUGIN_TEMPLATE.format(value=2))
    new = load_plugins(config(("Edited", {}), plugin_dir=str(tmp_path)))
    assert new.plugins[0].module is not old.plugins[0].module
    before, after = an_attack(), an_attack()
    for _, hook in old.hooks["analyze"]:
        hook(before)
    for _, hook in new.hooks["analyze"]:
        hook(after)
    assert before.notes == ["value 1"] and after.notes == ["value 2"]
    assert not (tmp_path / "__pycache__").exists()


def test_reload_builds_new_instances_and_hook_lists() -> None:
    first = load_plugins(config(("Alpha", {})))
    second = load_plugins(config(("Alpha", {})))
    assert probe(first, "Alpha") is not probe(second, "Alpha")
    assert first.hooks["preproc"][0][1] != second.hooks["preproc"][0][1]
    first.close()
    assert probe(second, "Alpha").calls == []


def context(options: dict[str, OptionValue]) -> PluginContext:
    return PluginContext("Ctx", options, Config(), logging.getLogger("test"))


def test_option_helpers_read_strings_lists_and_numbers() -> None:
    ctx = context({"s": "text", "l": ["a", "b"], "one": "a", "n": "0x10"})
    assert ctx.option("s") == "text" and ctx.option("missing", "dflt") == "dflt"
    assert ctx.option_list("l") == ["a", "b"] and ctx.option_list("one") == ["a"]
    assert ctx.option_list("missing") == [] and ctx.option_int("n", 0) == 16
    assert ctx.option_int("missing", 7) == 7


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.option("missing"), "option 'missing' is required"),
        (lambda c: c.option("l"), "option 'l' must be a string"),
        (lambda c: c.option_list("block"), "option 'block' must be a list of strings"),
        (lambda c: c.option_int("s", 0), "option 's': not a number"),
    ],
)
def test_bad_options_are_plugin_errors_naming_plugin_and_key(call: Any, message: str) -> None:
    ctx = context({"s": "text", "l": ["a"], "block": {"k": "v"}})
    with pytest.raises(PluginError, match=f"^plugin Ctx: {message}"):
        call(ctx)


def test_a_plugin_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    """`$` matches before a final newline: names are checked whole."""
    with pytest.raises(PluginError, match="not a valid module name"):
        load_module(str(tmp_path), "Alpha\n")


STATS_PLUGIN = (
    "class P:\n"
    "    def __init__(self, ctx):\n"
    "        self.ctx = ctx\n"
    "    def stats(self):\n"
    "        mode = self.ctx.options.get('mode')\n"
    "        if mode == 'raise':\n"
    "            raise RuntimeError('broken statistics')\n"
    "        if mode == 'bad':\n"
    "            return {'downloads': 1.5, 'Bad-Name': 3, 'flag': True, 'spool_depth': 2}\n"
    "        if mode == 'list':\n"
    "            return [('downloads', 1)]\n"
    "        return {'downloads': int(self.ctx.options['n']), 'spool_depth': 4}\n"
    "def load(ctx):\n"
    "    return P(ctx)\n"
)


def stats_registry(tmp_path: Path, *specs: tuple[str, dict[str, OptionValue]]) -> Registry:
    for name, _ in specs:
        (tmp_path / f"{name}.py").write_text(STATS_PLUGIN)
    return load_plugins(config(*specs, plugin_dir=str(tmp_path)))


def test_stats_of_every_plugin_are_summed_by_name(tmp_path: Path) -> None:
    registry = stats_registry(tmp_path, ("One", {"n": "3"}), ("Two", {"n": "5"}))
    assert registry.stats() == {"downloads": 8, "spool_depth": 8}
    assert [name for name, _ in registry.stats_hooks] == ["One", "Two"]


def test_plugins_without_stats_add_nothing() -> None:
    registry = load_plugins(config(("Alpha", {}), ("Beta", {})))
    assert registry.stats_hooks == [] and registry.stats() == {}


def test_a_raising_stats_is_logged_once_and_the_others_still_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = stats_registry(tmp_path, ("Broken", {"mode": "raise"}), ("Fine", {"n": "2"}))
    with caplog.at_level(logging.ERROR, logger="honeytrap.plugin"):
        first, second = registry.stats(), registry.stats()
    assert first == second == {"downloads": 2, "spool_depth": 4}
    failures = [r for r in caplog.records if "plugin Broken failed in stats" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_bad_names_and_values_are_left_out_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = stats_registry(
        tmp_path, ("Sloppy", {"mode": "bad"}), ("Listy", {"mode": "list"}), ("Fine", {"n": "1"})
    )
    with caplog.at_level(logging.ERROR, logger="honeytrap.plugin"):
        for _ in range(3):
            assert registry.stats() == {"downloads": 1, "spool_depth": 6}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("plugin Sloppy: statistic name 'Bad-Name'" in m for m in messages) == 1
    assert sum("plugin Sloppy: statistic downloads is a float" in m for m in messages) == 1
    assert sum("plugin Listy: returned list, not a dict" in m for m in messages) == 1
    # one message per kind of problem: `flag` (a bool) shares the value warning of `downloads`
    assert len(messages) == 3
