"""The ANALYZE hook every downloader plugin shares: parse the attack string, fetch each
request through the policy; and the plugin's statistics, the policy's counts of its tries
(`downloads`: samples fetched, `download_failures`: tries refused or failed)."""

from __future__ import annotations

from collections.abc import Callable

from honeytrap.attack import Attack
from honeytrap.download.policy import DownloadPolicy, Fetcher
from honeytrap.download.request import DownloadRequest

Parser = Callable[[bytes], list[DownloadRequest]]


class Downloader:
    """A plugin instance: `analyze` downloads whatever `parse` finds, with `fetch`."""

    def __init__(self, policy: DownloadPolicy, parse: Parser, fetch: Fetcher) -> None:
        self.policy = policy
        self.parse = parse
        self.fetch = fetch

    def analyze(self, attack: Attack) -> None:
        for request in self.parse(attack.payload):
            self.policy.run(attack, request, self.fetch)

    def stats(self) -> dict[str, int]:
        return self.policy.counts.stats()
