"""Running a plugin's hooks on a hand-made attack, for plugin authors' tests (docs/plugins.md).

    from honeytrap.testing import make_attack, run_plugins

    run = run_plugins([("b64Decode", {})], make_attack(b"Authorization: Negotiate ..."))
    assert run.virtuals[0].payload == ...

`run_plugins` loads the plugins with the real loader (from the installed package's plugins, or
a `plugin_dir` of yours), runs `after_fork` as the recorder would, pushes the attack through the
real pipeline (every hook in order, virtual attacks included), closes the plugins and returns
the root attack with what they added and every attack the pipeline ran. Nothing is mocked: a
plugin that talks to a store needs the real store (the tests here start PostgreSQL, clamd,
an hpfeeds broker of their own).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from honeytrap.attack import Attack, Connection, Mode, Payload
from honeytrap.config import Config, OptionValue, PluginSpec
from honeytrap.errors import HoneytrapError
from honeytrap.pipeline import DEFAULT_PLUGIN_TIMEOUT, Pipeline
from honeytrap.plugin import LoadedPlugin, load_plugins

# Addresses of a hand-made attack: the RFC 2544 benchmarking range the tests use.
ATTACKER = ("198.18.0.1", 40000)
SENSOR = ("198.18.0.2", 80)


def make_attack(
    payload: bytes = b"",
    *,
    protocol: str = "tcp",
    local: tuple[str, int] = SENSOR,
    remote: tuple[str, int] = ATTACKER,
    mode: Mode = Mode.NORMAL,
) -> Attack:
    """A finished attack of `payload` from `remote` to `local`, as a dynamic server makes it."""
    connection = Connection(protocol, local[0], local[1], remote[0], remote[1], Payload(payload))
    attack = Attack(connection, mode=mode)
    attack.end_time = attack.start_time
    return attack


@dataclass
class PluginRun:
    """What run_plugins saw: the root attack (with downloads, notes, analysis added) and every
    attack that went through the hooks, in the order the last hook saw them."""

    attack: Attack
    seen: list[Attack] = field(default_factory=list)

    @property
    def virtuals(self) -> list[Attack]:
        return [a for a in self.seen if a.is_virtual]


class _Seen:
    """The last plugin of every hook: records each attack once, at POSTPROC."""

    def __init__(self, run: PluginRun) -> None:
        self.run = run

    def postproc(self, attack: Attack) -> None:
        self.run.seen.append(attack)


class PluginRunFailed(HoneytrapError):
    """The attack did not go through every hook within the timeout (a hung plugin)."""


def run_plugins(
    plugins: Sequence[tuple[str, Mapping[str, OptionValue]]],
    attack: Attack,
    *,
    plugin_dir: str | None = None,
    config: Config | None = None,
    timeout: float = DEFAULT_PLUGIN_TIMEOUT,
) -> PluginRun:
    """Load `plugins` ((name, options) in configuration order), run every hook on `attack`
    through the real pipeline, close them. PluginError if one fails to load; PluginRunFailed
    if the attack is not through within `timeout`."""
    config = dataclasses.replace(
        config if config is not None else Config(),
        plugins=[PluginSpec(name, dict(options)) for name, options in plugins],
    )
    if plugin_dir is not None:
        config = dataclasses.replace(config, plugin_dir=plugin_dir)
    registry = load_plugins(config)
    run = PluginRun(attack)
    registry.register(LoadedPlugin("testing", types.ModuleType("honeytrap_testing"), _Seen(run)))
    registry.after_fork()
    pipeline = Pipeline(registry, workers=1, plugin_timeout=timeout)
    try:
        pipeline.submit(attack)
        through = pipeline.drain(timeout)
    finally:
        pipeline.close(0)  # drained already, or given up on: the workers are stopped
        registry.close()
    if not through:
        raise PluginRunFailed(f"attack {attack.id} not through every hook in {timeout:g} s")
    return run
