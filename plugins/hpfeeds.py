"""hpfeeds: attacks and samples to an hpfeeds broker.

Options: `host`, `port`, `ident`, `secret` (required), `channels` (a list; default
["honeytrap.events", "mwbinary.honeytrap.sensorunique"]). On a channel whose name starts with
`mwbinary.` each downloaded sample is published raw, once per hash (dionaea's convention); on
every other channel each attack as JSON (`attack.to_json()`, the attackers.json shape). Ours:
`confirm` (yes/no, default yes: see honeytrap/outputs/hpfeeds.py), `spool_dir`,
`spool_max_records`, `spool_max_bytes`, `retry_max` (seconds, the reconnect back-off cap),
`inline_samples` (yes/no, default no: the JSON names each sample by hashes, size, type and
stored name; yes adds its bytes as hex, which the sample channel already carries).

At SAVEDATA; virtual attacks are not published on their own (their findings are on their root,
as in logJSON). At FOLLOWUP (downloads that ended after the attack was published): the new
samples on the sample channels, and the follow-up record (`Attack.followup_json()`: same `id`,
`"follow_up": true`, the downloads) on the others. A broker that is away loses nothing:
records wait in the spool and are replayed in order. A message over the broker's 1 MiB limit
is cut (attack JSON: payload hex truncated, marked) or, for a sample, not published (logged
and counted).

Statistics (SIGUSR1, Prometheus): `spool_depth`, `spool_refused`, `spool_rejected`
(honeytrap/outputs/output.py), and `hpfeeds_events_too_big`, `hpfeeds_samples_too_big`: what
was not published for the broker's size limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from honeytrap.attack import Attack
from honeytrap.errors import PluginError
from honeytrap.outputs import hpfeeds_wire as wire
from honeytrap.outputs.hpfeeds import (
    EVENTS_CHANNEL,
    MAX_SEEN_SAMPLES,
    SAMPLE_PREFIX,
    SAMPLES_CHANNEL,
    HpfeedsSink,
    event_payload,
    followup_payload,
    record_data,
)
from honeytrap.outputs.output import Output
from honeytrap.outputs.writer import Record
from honeytrap.plugin import PluginContext


class Hpfeeds:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log
        port = ctx.option_int("port", 0)
        if not 0 < port < 65536:
            raise PluginError(f"plugin {ctx.name}: option 'port' must be 1..65535")
        self.ident = ctx.option("ident")
        self.sensor_id = ctx.config.sensor_id
        self.inline_samples = ctx.option_yes("inline_samples", False)
        self.channels = ctx.option_list("channels") or [EVENTS_CHANNEL, SAMPLES_CHANNEL]
        for channel in self.channels:
            if not channel or "\n" in channel or len(channel.encode()) > 255:
                raise PluginError(f"plugin {ctx.name}: bad channel name {channel!r}")
        confirm = ctx.option("confirm", "yes").lower()
        if confirm not in ("yes", "no"):
            raise PluginError(f"plugin {ctx.name}: option 'confirm' must be yes or no")
        sink = HpfeedsSink(ctx.option("host"), port, self.ident, ctx.option("secret"),
                           confirm=confirm == "yes", log=ctx.log)
        sink.name = ctx.name
        sink.channels = set(self.channels)
        self.output = Output(ctx, sink)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.samples_too_big = 0
        self.events_too_big = 0

    def after_fork(self) -> None:
        self.output.after_fork()

    def savedata(self, attack: Attack) -> None:
        if not attack.is_virtual:
            self._publish(attack, followup=False)

    def followup(self, attack: Attack) -> None:
        """Downloads that ended after the attack was published: the samples on the sample
        channels, the follow-up record (Attack.followup_json) on the others."""
        self._publish(attack, followup=True)

    def _publish(self, attack: Attack, *, followup: bool) -> None:
        for index, channel in enumerate(self.channels):
            limit = wire.MAX_BODY - wire.publish_overhead(self.ident, channel)
            if channel.startswith(SAMPLE_PREFIX):
                self._samples(attack, index, channel, limit)
                continue
            if followup:
                payload = followup_payload(attack, limit, self.sensor_id,
                                           inline_samples=self.inline_samples)
            else:
                payload = event_payload(attack, limit, self.sensor_id,
                                        inline_samples=self.inline_samples)
            if payload is None:
                self.events_too_big += 1
                self.log.error("attack %s: JSON too large for hpfeeds even cut; not published",
                               attack.id)
                continue
            if followup:
                key, when = f"{attack.id}-{index}-followup", time.time()
            else:
                key, when = f"{attack.id}-{index}", attack.start_time
            self.output.submit(Record(key, when, record_data(channel, payload)))

    def _samples(self, attack: Attack, index: int, channel: str, limit: int) -> None:
        for download in list(attack.downloads):
            sample = download.payload
            if sample.sha512 in self._seen:
                continue
            self._seen[sample.sha512] = None
            if len(self._seen) > MAX_SEEN_SAMPLES:
                self._seen.popitem(last=False)
            if sample.size > limit:
                self.samples_too_big += 1
                self.log.warning("attack %s: sample %s (%d bytes) over the hpfeeds limit; "
                                 "not published", attack.id, sample.md5, sample.size)
                continue
            key = f"{attack.id}-{index}-{sample.sha512[:32]}"
            self.output.submit(Record(key, attack.start_time, record_data(channel, sample.data)))

    def stats(self) -> dict[str, int]:
        return {
            **self.output.stats(),
            "hpfeeds_events_too_big": self.events_too_big,
            "hpfeeds_samples_too_big": self.samples_too_big,
        }

    def close(self) -> None:
        self.output.close()


def load(ctx: PluginContext) -> Hpfeeds:
    return Hpfeeds(ctx)
