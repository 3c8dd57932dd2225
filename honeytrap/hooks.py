"""The plugin contract: one typed Protocol per hook, and the check for misspelt hook names.

A plugin's `load(ctx)` returns an object; its methods named after hooks are registered
(plugin.py). Each hook's signature is a Protocol here, so a plugin class can say which hooks it
implements and have mypy check them:

    class Keyword(hooks.PreProc, hooks.Analyze):
        def preproc(self, attack: Attack) -> list[Attack]: ...
        def analyze(self, attack: Attack) -> None: ...

Subclassing is optional (the registry looks methods up by name, as the original looked up
`plugin_register_hooks`), but a method whose name is close to a hook's and is none
(`anaylze`, `postProc`, `save_data`) would silently never run: `misspelt_hooks` finds those,
and the loader warns about each.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from honeytrap.attack import Attack
from honeytrap.background import Task

ATTACK_HOOKS = ("preproc", "analyze", "savedata", "postproc")
# After an attack was recorded, what the downloads it started found later (pipeline.py).
FOLLOWUP_HOOK = "followup"
HOOKS = ("perread", *ATTACK_HOOKS, FOLLOWUP_HOOK)
# An output's hook for a whole batch of attacks at once, in place of its per-attack hook of
# that stage (pipeline.py, docs/plugins.md): one call per batch, not one per attack.
BATCH_HOOKS = {"savedata": "savedata_batch", "postproc": "postproc_batch"}
# Methods the registry calls besides the hooks.
LIFECYCLE = ("after_fork", "close", "stats")
KNOWN = (*HOOKS, *BATCH_HOOKS.values(), *LIFECYCLE)
# How alike a method's name and a hook's must be to look like a misspelling of it
# (difflib's ratio: "anaylze"/"analyze" 0.86, "postprocess"/"postproc" 0.84, "process" 0.67).
MISSPELLING_CUTOFF = 0.8


@dataclass(frozen=True)
class ReadEvent:
    """One read on a connection, for PERREAD hooks. `direction` is "in" for bytes from the
    attacker, "out" for bytes from the mirror/proxy peer. (Here, with its hook, so that the
    contract imports nothing of the registry's; plugin.ReadEvent names it too.)"""

    protocol: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    direction: str
    data: bytes


@runtime_checkable
class PerRead(Protocol):
    """Every read on a connection, on the connection path (the dynamic server's loop): quick,
    never blocking."""

    def perread(self, event: ReadEvent) -> None: ...


@runtime_checkable
class PreProc(Protocol):
    """A finished attack, first: decoders. May return virtual attacks (attack.derive)."""

    def preproc(self, attack: Attack) -> Iterable[Attack] | None: ...


@runtime_checkable
class Analyze(Protocol):
    """Then: downloaders and analyzers. May return virtual attacks, and slow work for the
    download pool (background.Task: run once the attack is recorded)."""

    def analyze(self, attack: Attack) -> Iterable[Attack | Task] | None: ...


@runtime_checkable
class SaveData(Protocol):
    """Then: savers (files, databases). May return virtual attacks."""

    def savedata(self, attack: Attack) -> Iterable[Attack] | None: ...


@runtime_checkable
class PostProc(Protocol):
    """Last: loggers. May return virtual attacks."""

    def postproc(self, attack: Attack) -> Iterable[Attack] | None: ...


@runtime_checkable
class SaveDataBatch(Protocol):
    """SAVEDATA for a batch of attacks at once (an output's choice, for its CPU: one call per
    batch instead of one per attack). When a plugin has it, the pipeline calls it instead of
    the plugin's `savedata`, which stays for direct callers (tests, tools).

    `attacks` are the batch's, in order (each root attack after the virtual attacks made from
    it, in the order they were made), every one acknowledged only once every hook of the batch
    ran and the batch's writes were made: hold the records in the current write batch
    (writebatch.current(), as outfile.LineLog and SaveFile do) and they are written at its end.
    A batch hook returns nothing (no virtual attacks, no tasks). Raising is logged and counted
    (plugin_failures) and costs this plugin's records of the batch (those it had not yet given
    to the write batch) and nothing else: the other plugins still see every attack. A call
    hanging past `plugin_timeout` is abandoned as a per-attack hook is; the batch goes on.

    It is called once the batch's attacks went through every hook before it, when every hook
    after it (the later batch hooks, of any stage) is a batch hook too: the attacks see the
    same hooks in the same order as they would one at a time. A batch hook followed by a
    per-attack hook is called once per attack instead (with a list of one), so the hooks'
    order holds for each attack: configure the batch outputs last to have them take batches."""

    def savedata_batch(self, attacks: Sequence[Attack]) -> None: ...


@runtime_checkable
class PostProcBatch(Protocol):
    """POSTPROC for a batch of attacks at once, as SaveDataBatch is for SAVEDATA (the same
    terms): the line logs' (logJSON, logAttacker) one call per batch."""

    def postproc_batch(self, attacks: Sequence[Attack]) -> None: ...


@runtime_checkable
class FollowUp(Protocol):
    """Later, once the download tasks the attack's hooks returned all ended and added downloads
    or download tries to it: record them (the root attack, with everything found on it)."""

    def followup(self, attack: Attack) -> None: ...


@runtime_checkable
class AfterFork(Protocol):
    """In the recorder, after the privilege drop: threads, connections."""

    def after_fork(self) -> None: ...


@runtime_checkable
class Close(Protocol):
    """On reload and exit."""

    def close(self) -> None: ...


@runtime_checkable
class Stats(Protocol):
    """The plugin's own statistics (name -> count): counters the hooks keep, no I/O."""

    def stats(self) -> Mapping[str, int]: ...


def _normal(name: str) -> str:
    return name.lower().replace("_", "")


def misspelt_hooks(instance: object) -> list[tuple[str, str]]:
    """(method, hook) for each public method of `instance` that is no hook and no life-cycle
    method, but looks like one: another case or underscores (`postProc`, `save_data`), or a
    name within MISSPELLING_CUTOFF of one (`anaylze`)."""
    found = []
    normal = {_normal(hook): hook for hook in KNOWN}
    for name in sorted(dir(instance)):
        if name.startswith("_") or name in KNOWN or not callable(getattr(instance, name, None)):
            continue
        hook = normal.get(_normal(name))
        if hook is None:
            close = difflib.get_close_matches(_normal(name), list(normal), 1, MISSPELLING_CUTOFF)
            hook = normal[close[0]] if close else None
        if hook is not None:
            found.append((name, hook))
    return found
