"""The ANALYZE hook every downloader plugin shares: parse the attack string, and hand each
request to the download pool as a background task (honeytrap/background.py) that fetches it
through the policy once the attack is recorded; and the plugin's statistics, the policy's
counts of its tries (`downloads`: samples fetched, `download_failures`: tries refused or
failed, the download pool's refusals included)."""

from __future__ import annotations

from collections.abc import Callable

from honeytrap.attack import Attack
from honeytrap.background import Task
from honeytrap.download.deadline import Deadline
from honeytrap.download.policy import DownloadPolicy, Fetcher
from honeytrap.download.request import DownloadRequest

Parser = Callable[[bytes], list[DownloadRequest]]


class Downloader:
    """A plugin instance: `analyze` returns a task per download `parse` finds, run with
    `fetch`. A URL this attack (or one derived from the same root) already named is skipped."""

    def __init__(self, policy: DownloadPolicy, parse: Parser, fetch: Fetcher,
                 name: str = "download") -> None:
        self.policy = policy
        self.parse = parse
        self.fetch = fetch
        self.name = name

    def analyze(self, attack: Attack) -> list[Task]:
        return [
            _Fetch(self, attack, request).task()
            for request in self.parse(attack.payload)
            if self.policy.first_time(attack, request)
        ]

    def stats(self) -> dict[str, int]:
        return self.policy.counts.stats()


class _Fetch:
    """One download as a pool task. Its deadline starts when the task runs (waiting in the
    queue costs it nothing), and is what cancel() shuts."""

    def __init__(self, downloader: Downloader, attack: Attack, request: DownloadRequest) -> None:
        self.downloader = downloader
        self.attack = attack
        self.request = request
        self.deadline: Deadline | None = None

    def task(self) -> Task:
        label = f"{self.downloader.name} {self.request.uri[:200]!r}"
        return Task(label, self.run, self.refused, self.cancel)

    def run(self) -> None:
        policy = self.downloader.policy
        self.deadline = policy.deadline()
        policy.attempt(self.attack, self.request, self.downloader.fetch, self.deadline)

    def refused(self, reason: str) -> None:
        self.downloader.policy.refuse(self.attack, self.request, reason)

    def cancel(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
