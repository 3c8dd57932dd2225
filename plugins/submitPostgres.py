"""submitPostgres: every attack, with its downloads, into a central PostgreSQL database.

Options, as the original's: `db_host` (a name, an address, or a unix socket directory),
`db_port` (default 5432), `db_name`, `db_user`, `db_pass`, all but db_port required, and
`sensor_id` (this sensor's name in the `sensors` table; the original required it, T-Pot's file
has none: default, the sensor id of the whole sensor, the top-level `sensor_id` key or the one
kept in state_dir, so one key names the sensor everywhere). Ours: `spool_dir` (default
/var/spool/honeytrap/<plugin name>), `spool_max_records`, `spool_max_bytes`, `retry_max`
(seconds, the reconnect back-off cap).

At SAVEDATA, like the original; attacks without payload are stored too (the original skipped
them, but a bare connection is still an observation). Virtual attacks are not stored on their
own: what was found in them is on their root attack, as in logJSON. The schema is ours and is
created and migrated automatically (honeytrap/outputs/postgres.py). A database that is away does
not lose attacks: they wait in the spool and are replayed in order when it is back.
At FOLLOWUP (downloads that ended after the attack was stored) its new downloads and download
tries are added to the attack's rows and its counts and analysis updated.

Statistics (SIGUSR1, Prometheus): `spool_depth`, `spool_refused`, `spool_rejected`
(honeytrap/outputs/output.py); SavePostgres, the same plugin, adds into the same names.
"""

from __future__ import annotations

from honeytrap.attack import Attack
from honeytrap.outputs.output import Output
from honeytrap.outputs.postgres import (
    DEFAULT_PORT,
    ConnInfo,
    PostgresSink,
    attack_record,
    followup_record,
)
from honeytrap.plugin import PluginContext


class SubmitPostgres:
    def __init__(self, ctx: PluginContext) -> None:
        info = ConnInfo(
            host=ctx.option("db_host"),
            port=ctx.option("db_port", DEFAULT_PORT),
            dbname=ctx.option("db_name"),
            user=ctx.option("db_user"),
            password=ctx.option("db_pass"),
        )
        sink = PostgresSink(info, ctx.option("sensor_id", ctx.config.sensor_id), ctx.log)
        sink.name = ctx.name
        self.output = Output(ctx, sink)

    def after_fork(self) -> None:
        self.output.after_fork()

    def savedata(self, attack: Attack) -> None:
        if not attack.is_virtual:
            self.output.submit(attack_record(attack))

    def followup(self, attack: Attack) -> None:
        """Downloads that ended after the attack was stored: the attack's record again, under
        a key of its own; its new downloads and tries are inserted (the rows already there are
        kept: ON CONFLICT DO NOTHING) and its counts and analysis updated."""
        self.output.submit(followup_record(attack))

    def stats(self) -> dict[str, int]:
        return self.output.stats()

    def close(self) -> None:
        self.output.close()


def load(ctx: PluginContext) -> SubmitPostgres:
    return SubmitPostgres(ctx)
