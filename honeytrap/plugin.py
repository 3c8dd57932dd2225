"""Plugins: loading, the hook registry, and reloading (all in this one place).

A plugin is `<plugin_dir>/<Name>.py`, loaded by a `plugin-<Name>` line of the configuration in
file order. It exposes `load(ctx: PluginContext) -> object`; the object's methods named after
hooks are registered, in the order of the configuration file within each hook (each hook's
typed Protocol is in hooks.py; a method that looks like a misspelt hook is warned about):

    perread(self, event: ReadEvent) -> None          every read, on the connection path: be quick
    preproc(self, attack: Attack) -> Iterable[Attack] | None
    analyze(self, attack: Attack) -> Iterable[Attack | background.Task] | None
    savedata(self, attack: Attack) -> Iterable[Attack] | None
    postproc(self, attack: Attack) -> Iterable[Attack] | None
    savedata_batch(self, attacks: Sequence[Attack]) -> None
    postproc_batch(self, attacks: Sequence[Attack]) -> None
                                 an output's SAVEDATA or POSTPROC for a batch of attacks at once,
                                 called instead of its per-attack hook (hooks.SaveDataBatch says
                                 when, in what order, and what a failure costs)
    followup(self, attack: Attack) -> None
                                 the attack again, once the downloads its hooks started
                                 (background.Task) ended and added downloads or tries to it:
                                 record them (logJSON: a follow-up line; SaveFile: the samples)
    after_fork(self) -> None     in the recorder process (recorder.py), after the privilege drop
    close(self) -> None          on reload and exit
    stats(self) -> dict[str, int]   the plugin's own statistics (name -> count), read by the
                                 recorder every STATS_INTERVAL and at exit from its main thread:
                                 return counters the hooks already keep, no I/O, never block

Attack hooks run in the recorder, off the connection path (pipeline.py). An attack hook may
return *virtual* attacks (`attack.derive(...)`); they run through every hook before the attack
that produced them goes on. It may also return `background.Task`s: slow work (a download) run
in the download pool once the attack is recorded; what they find reaches the FOLLOWUP hooks.

`load` runs in the master, as root, before any fork: open files and check options there (an
error is a PluginError naming the plugin, fatal at start, logged on SIGHUP with the old plugins
kept). Anything per-process (threads, database connections) belongs in `after_fork`. Write
files with single `os.write` calls on O_APPEND descriptors: several dynamic servers share them.
SIGHUP builds a new Registry from scratch: new module objects, new hook lists.

`Registry.stats()` sums every plugin's `stats()` by name (two plugins reporting `spool_depth`
give one total); the recorder sends the sum to the master with its own statistics, so they
reach SIGUSR1's log line and the Prometheus exporter (metrics.py: names must match its `NAME`;
those in its GAUGES are gauges, every other one a counter that only goes up). A plugin whose
`stats()` raises, or a name or value that is not fit, is logged once and left out.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from honeytrap import hooks
from honeytrap.attack import Attack
from honeytrap.config import Config, OptionValue, PluginSpec
from honeytrap.errors import PluginError
from honeytrap.metrics import NAME as STAT_NAME

# The hooks and their typed Protocols live in hooks.py (the contract); kept here by name too.
ATTACK_HOOKS = hooks.ATTACK_HOOKS
FOLLOWUP_HOOK = hooks.FOLLOWUP_HOOK
HOOKS = hooks.HOOKS
BATCH_HOOKS = hooks.BATCH_HOOKS
ReadEvent = hooks.ReadEvent

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

AttackHook = Callable[[Attack], Iterable[Attack] | None]
StatsHook = Callable[[], object]

log = logging.getLogger("honeytrap.plugin")


@dataclass
class PluginContext:
    """What a plugin's `load` receives: its name, its options, the whole configuration."""

    name: str
    options: Mapping[str, OptionValue]
    config: Config
    log: logging.Logger

    def option(self, key: str, default: str | None = None) -> str:
        """A string option; PluginError if missing without default or not a string."""
        value = self.options.get(key, default)
        if value is None:
            raise PluginError(f"plugin {self.name}: option {key!r} is required")
        if not isinstance(value, str):
            raise PluginError(f"plugin {self.name}: option {key!r} must be a string")
        return value

    def option_list(self, key: str) -> list[str]:
        """A list of strings (a single string counts as a list of one)."""
        value = self.options.get(key, [])
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [str(v) for v in value]
        raise PluginError(f"plugin {self.name}: option {key!r} must be a list of strings")

    def option_int(self, key: str, default: int) -> int:
        raw = self.option(key, str(default))
        try:
            return int(raw, 0)
        except ValueError as exc:
            raise PluginError(f"plugin {self.name}: option {key!r}: not a number: {raw!r}") from exc

    def option_yes(self, key: str, default: bool) -> bool:
        """A yes/no option (the configuration's booleans: yes/no, on/off, true/false)."""
        raw = self.option(key, "yes" if default else "no").strip().lower()
        if raw in ("yes", "on", "true"):
            return True
        if raw in ("no", "off", "false"):
            return False
        raise PluginError(f"plugin {self.name}: option {key!r} must be yes or no, not {raw!r}")


# (hook, plugin, call): an attack hook as the pipeline runs it; a batch hook's call takes a list.
OrderedHook = tuple[str, str, Callable[[Attack], Iterable[Any] | None]]
OrderedBatchHook = tuple[str, str, Callable[[Sequence[Attack]], None]]


def _call_one(call: Callable[[Sequence[Attack]], None], attack: Attack) -> None:
    """A batch hook called for one attack (a per-attack hook follows it: attack_order)."""
    call([attack])


@dataclass
class LoadedPlugin:
    name: str
    module: ModuleType
    instance: object


@dataclass
class Registry:
    """The hook lists, in configuration-file order within each hook."""

    plugins: list[LoadedPlugin] = field(default_factory=list)
    hooks: dict[str, list[tuple[str, Callable[..., Any]]]] = field(
        default_factory=lambda: {hook: [] for hook in (*HOOKS, *BATCH_HOOKS.values())}
    )
    stats_hooks: list[tuple[str, StatsHook]] = field(default_factory=list)
    # What stats() already complained about (plugin and problem): logged once, not every time.
    # Bounded: four kinds of problem per plugin.
    _stats_warned: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def register(self, plugin: LoadedPlugin) -> None:
        self.plugins.append(plugin)
        for name, like in hooks.misspelt_hooks(plugin.instance):
            log.warning("plugin %s: method %s() is no hook and is never called: did you mean "
                        "%s()?", plugin.name, name, like)
        for hook in (*HOOKS, *BATCH_HOOKS.values()):
            method = getattr(plugin.instance, hook, None)
            if callable(method):
                self.hooks[hook].append((plugin.name, method))
        method = getattr(plugin.instance, "stats", None)
        if callable(method):
            self.stats_hooks.append((plugin.name, method))

    def attack_order(self) -> tuple[tuple[OrderedHook, ...], tuple[OrderedBatchHook, ...]]:
        """The attack hooks in the order they run ((hook, plugin, call) each), and the batch
        hooks called once at the end of a batch (hooks.SaveDataBatch): those that no per-attack
        hook follows. Within each stage, plugins in configuration order, a plugin's batch hook
        instead of its per-attack hook of that stage. A batch hook that a per-attack hook
        follows is called once per attack in its place (with a list of one), so each attack
        sees every hook in order."""
        order = {plugin.name: index for index, plugin in enumerate(self.plugins)}
        found: list[tuple[str, str, Callable[..., Any], bool]] = []
        for stage in ATTACK_HOOKS:
            batch_hook = BATCH_HOOKS.get(stage)
            batched = dict(self.hooks[batch_hook]) if batch_hook is not None else {}
            stage_hooks = [(stage, name, call, False) for name, call in self.hooks[stage]
                           if name not in batched]
            stage_hooks += [(str(batch_hook), name, call, True) for name, call in batched.items()]
            # Configuration order (hooks added by hand, of plugins not listed, after those).
            stage_hooks.sort(key=lambda item: order.get(item[1], len(order)))
            found += stage_hooks
        tail = len(found)
        while tail and found[tail - 1][3]:
            tail -= 1
        each = tuple((hook, name, functools.partial(_call_one, call) if batch else call)
                     for hook, name, call, batch in found[:tail])
        return each, tuple((hook, name, call) for hook, name, call, _batch in found[tail:])

    def stats(self) -> dict[str, int]:
        """Every plugin's statistics, summed by name. Never raises: a plugin whose stats()
        fails is left out this time, a bad name or value is left out; each logged once."""
        totals: dict[str, int] = {}
        for plugin, method in self.stats_hooks:
            try:
                values = method()
                # Copied inside the try: the dict may be the plugin's own, changing meanwhile.
                items = list(values.items()) if isinstance(values, dict) else None
            except Exception:
                if self._first_time(plugin, "raised"):
                    log.exception("plugin %s failed in stats (left out of the statistics)",
                                  plugin)
                continue
            if items is None:
                self._warn(plugin, "type", f"returned {type(values).__name__}, not a dict")
                continue
            for name, value in items:
                if self._fit(plugin, name, value):
                    totals[name] = totals.get(name, 0) + value
        return totals

    def _fit(self, plugin: str, name: object, value: object) -> bool:
        if not isinstance(name, str) or not STAT_NAME.fullmatch(name):
            self._warn(plugin, "name", f"statistic name {name!r} is not of the form "
                       f"{STAT_NAME.pattern}")
            return False
        if not isinstance(value, int) or isinstance(value, bool):
            self._warn(plugin, "value", f"statistic {name} is a "
                       f"{type(value).__name__}, not an int")
            return False
        return True

    def _warn(self, plugin: str, problem: str, message: str) -> None:
        if self._first_time(plugin, problem):
            log.error("plugin %s: %s (left out of the statistics)", plugin, message)

    def _first_time(self, plugin: str, problem: str) -> bool:
        key = (plugin, problem)
        if key in self._stats_warned:
            return False
        self._stats_warned.add(key)
        return True

    def perread(self, event: ReadEvent) -> None:
        """Run the PERREAD hooks; a failing one is logged and the others still run."""
        for name, hook in self.hooks["perread"]:
            try:
                hook(event)
            except Exception:
                log.exception("plugin %s failed in perread", name)

    def after_fork(self) -> None:
        for plugin in self.plugins:
            method = getattr(plugin.instance, "after_fork", None)
            if callable(method):
                try:
                    method()
                except Exception:
                    log.exception("plugin %s failed in after_fork", plugin.name)

    def close(self) -> None:
        for plugin in reversed(self.plugins):
            method = getattr(plugin.instance, "close", None)
            if callable(method):
                try:
                    method()
                except Exception:
                    log.exception("plugin %s failed to close", plugin.name)


def load_module(plugin_dir: str, name: str) -> ModuleType:
    """Import `<plugin_dir>/<name>.py` as a fresh module (never reusing sys.modules: a reload
    must see the file as it is now)."""
    if not _NAME.fullmatch(name):
        raise PluginError(f"plugin name {name!r} is not a valid module name")
    path = os.path.join(plugin_dir, f"{name}.py")
    if not os.path.isfile(path):
        raise PluginError(f"plugin {name}: no file {path}")
    module_name = f"honeytrap_plugins.{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None:
        raise PluginError(f"plugin {name}: cannot load {path}")
    try:
        with open(path, "rb") as source:
            # Compiled from the source every time, not through the import system's bytecode
            # cache: a .pyc is trusted when the source's mtime (in whole seconds) and size
            # match, so an edit within the same second would reload the old code; and
            # plugin_dir may be read-only.
            code = compile(source.read(), path, "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError) as exc:
        raise PluginError(f"plugin {name}: {path} failed to compile: {exc!r}") from exc
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        exec(code, module.__dict__)  # noqa: S102 - running the configured plugin is the point
    except Exception as exc:
        _restore_module(module_name, previous)
        raise PluginError(f"plugin {name}: {path} failed to import: {exc!r}") from exc
    return module


def _restore_module(module_name: str, previous: ModuleType | None) -> None:
    """Take a module that failed to import out of sys.modules again."""
    if previous is None:
        sys.modules.pop(module_name, None)
    else:
        sys.modules[module_name] = previous


def load_plugin(spec: PluginSpec, config: Config) -> LoadedPlugin:
    module = load_module(config.plugin_dir, spec.name)
    factory = getattr(module, "load", None)
    if not callable(factory):
        raise PluginError(f"plugin {spec.name}: module has no load(ctx) function")
    ctx = PluginContext(
        name=spec.name,
        options=spec.options,
        config=config,
        log=logging.getLogger(f"honeytrap.plugin.{spec.name}"),
    )
    try:
        instance = factory(ctx)
    except PluginError as exc:
        if str(exc).startswith(f"plugin {spec.name}:"):
            raise
        raise PluginError(f"plugin {spec.name}: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"plugin {spec.name}: load failed: {exc!r}") from exc
    return LoadedPlugin(spec.name, module, instance)


def load_plugins(config: Config) -> Registry:
    """Load every configured plugin in file order. On any failure, close what was loaded and
    raise PluginError: a half-loaded registry never goes live."""
    registry = Registry()
    try:
        for spec in config.plugins:
            registry.register(load_plugin(spec, config))
            log.info("plugin %s loaded", spec.name)
    except BaseException:
        registry.close()
        raise
    return registry
