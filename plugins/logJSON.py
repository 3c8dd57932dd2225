"""logJSON: every attack as one JSON line (T-Pot's attackers.json).

Options: `logfile`; `inline_samples` (yes/no, default no: each download names its sample by
hashes, size, file type and the name SaveFile stores it under, sized for Elastic; yes adds the
sample's bytes as `data_hex`, up to twice a sample's size on one line).

At POSTPROC, so the downloads found by the ANALYZE plugins are listed (T-Pot's
fork logged before the download plugins ran and never listed any). One line per attack that is
not virtual: a virtual attack's downloads are already on its root attack. The shape is
`Attack.to_json()`, the one serialisation every output shares; the payload is hex in it; plus
`sensor_id`, the sensor's id (a fleet's ELK tells its sensors apart by it).

Downloads run in the download pool after the attack is recorded, so its line lists none; when
they end having found something, a follow-up line with the same `id` and `sensor_id`,
`"follow_up": true` and the downloads and tries (`Attack.followup_json()`) is appended.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from honeytrap import outfile
from honeytrap.attack import Attack, extra_text
from honeytrap.plugin import PluginContext

# json.dumps(record, separators=(",", ":")) without building an encoder for every record.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class LogJSON(outfile.LineLog):
    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.sensor_id = ctx.config.sensor_id
        self.inline_samples = ctx.option_yes("inline_samples", False)
        # What ends every line: the sensor's id, the closing brace, the newline; made once.
        self._line_end = extra_text((("sensor_id", self.sensor_id),)) + "}\n"

    def line(self, attack: Attack) -> bytes:
        # The text of _ENCODER.encode({**attack.to_json(), "sensor_id": ...}), built directly
        # (attack.to_json_text's, with its end made once).
        return attack.json_text_open(self.inline_samples, self._line_end).encode("utf-8")

    def lines(self, attacks: Sequence[Attack]) -> list[bytes]:
        """A batch's lines (postproc_batch), made here rather than by a line() call each."""
        inline = self.inline_samples
        end = self._line_end
        return [attack.json_text_open(inline, end).encode("utf-8") for attack in attacks
                if not attack.is_virtual]

    def followup(self, attack: Attack) -> None:
        """The downloads found after the attack's line was written: a follow-up line."""
        doc = attack.followup_json(inline_samples=self.inline_samples)
        doc["sensor_id"] = self.sensor_id
        self.write_line((_ENCODER.encode(doc) + "\n").encode("utf-8"))


def load(ctx: PluginContext) -> LogJSON:
    return LogJSON(ctx)
