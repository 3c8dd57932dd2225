"""The tests' one way to push an attack through the real plugin pipeline (pipeline.py) and wait
for every hook, with the registry closed afterwards as the recorder closes it."""

from __future__ import annotations

import threading

from honeytrap.attack import Attack, Connection, Payload
from honeytrap.pipeline import Pipeline
from honeytrap.plugin import Registry

# Bound on every wait: far above what any step needs, so only a bug reaches it.
WAIT = 30.0


def attack_of(payload: bytes) -> Attack:
    return Attack(Connection("tcp", "198.18.0.2", 445, "198.18.0.1", 40000, Payload(payload)))


def process(registry: Registry, attack: Attack) -> Attack:
    """Every hook of `registry` over `attack` (and its virtual attacks), then close."""
    pipeline = Pipeline(registry, workers=1)
    try:
        pipeline.submit(attack)
        assert pipeline.drain(WAIT), "the pipeline did not finish the attack"
    finally:
        pipeline.close(WAIT)
        registry.close()
    return attack


class PayloadGate:
    """An ANALYZE hook that blocks for the attack whose payload is `payload` until `opened` is
    set (bounded by WAIT), `entered` set once it is blocked: what the worker does meanwhile, and
    the attacks submitted meanwhile (queued together, taken as one batch), are the test's."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.entered = threading.Event()
        self.opened = threading.Event()

    def analyze(self, attack: Attack) -> None:
        if attack.payload == self.payload:
            self.entered.set()
            self.opened.wait(WAIT)
