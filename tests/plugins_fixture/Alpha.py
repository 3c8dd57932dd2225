"""Test plugin: every hook, recording its calls; option `fail` names hooks that raise."""

from __future__ import annotations

from typing import Any


class Probe:
    def __init__(self, ctx: Any) -> None:
        self.name = ctx.name
        self.failing = set(ctx.option_list("fail"))
        self.calls: list[str] = []

    def _hook(self, hook: str) -> None:
        self.calls.append(hook)
        if hook in self.failing:
            raise RuntimeError(f"{self.name} fails in {hook} on purpose")

    def perread(self, event: Any) -> None:
        self._hook("perread")

    def preproc(self, attack: Any) -> None:
        self._hook("preproc")

    def analyze(self, attack: Any) -> None:
        self._hook("analyze")

    def savedata(self, attack: Any) -> None:
        self._hook("savedata")

    def postproc(self, attack: Any) -> None:
        self._hook("postproc")

    def followup(self, attack: Any) -> None:
        self._hook("followup")

    def after_fork(self) -> None:
        self._hook("after_fork")

    def close(self) -> None:
        self._hook("close")


def load(ctx: Any) -> Probe:
    return Probe(ctx)
