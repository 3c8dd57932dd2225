"""SaveFile: the attack string and every downloaded sample to disk (the original's SaveFile).

Options (as the original's): `attacks_dir`, `downloads_dir`; and `sync_files` (yes/no, default
no): each file's data on the disk before its name is given, so a power loss or a kernel crash
leaves no file empty under its name (outfile.py's docstring says why one would be, and the cost:
~10% of the recorder's CPU per attack, a wait per batch, and one syncfs(2) per batch writing out
everything waiting on that filesystem, other programs' data included).

At SAVEDATA:
- the attack string goes to `attacks_dir/from_port_<port>-<proto>_<YYYY-MM-DDTHHMMSS>_<id>`
  (UTC start time, the attack's id): made from our own data only, never from attacker bytes,
  and unique by construction. The original put the pid in the name and created it exclusively:
  with a fork per connection, pids wrapped and about one attack in ten was lost.
  Attacks with no data are not saved (as the original). Virtual attacks are not saved: their
  data is decoded from the root attack's, which is.
- each download's payload goes to `downloads_dir/<md5>` (the original's naming, without its
  attacker-chosen file name suffix): one file per content, published by rename so a reader
  never sees half a sample.
Files are complete before their names appear (outfile.write_new). In the recorder's pipeline
an attack's file is created at the end of its batch (writebatch.py), with the batch's others and
before any of them is acknowledged, not between the attacks' hooks. While a file cannot be
written (a full disk), it waits in memory with the later ones, in order, and is written when
space returns (backlog.py); its path is recorded at once (the name is known in advance: should
it be taken, by the file of the same attack saved before a recorder died and its server sent it
again, the file is saved under the next free name and the warning says which).
The paths are recorded as `attack.analysis["SaveFile"]`, so logJSON (POSTPROC) lists them.
At FOLLOWUP (the downloads ended after the attack was saved) the samples are saved the same
way and their paths added there, so logJSON's follow-up line lists them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from hashlib import sha256

from honeytrap import outfile, writebatch
from honeytrap.attack import Attack, Payload
from honeytrap.backlog import Backlog
from honeytrap.plugin import PluginContext

# Attack ids are uuid4 hex; anything else (a plugin's own id) is hashed into a safe name part.
# Safe: 1 to _MAX_ID ASCII letters and digits (the regex [A-Za-z0-9]{1,64}, tested without one:
# bytes.isalnum() of an ASCII string's bytes is exactly that class).
_MAX_ID = 64
_PROTOCOLS = frozenset({"tcp", "udp", "raw"})
# The text of each whole second (a float time's: math.floor(when), as time.gmtime rounds it).
_second = outfile.utc_second_formatter("%Y-%m-%dT%H%M%S")
# With sync_files, a batch's attack files written unnamed before the first is named, their
# data then put on the disk together (outfile.start_unnamed, settle_all): one descriptor each
# meanwhile, so at most this many (the pipeline's batches are at most 128 attacks; later ones
# settle each).
STARTED_AHEAD = 128


class SaveFile:
    def __init__(self, ctx: PluginContext) -> None:
        self.log = ctx.log
        self.name = ctx.name  # the pipeline's log names a hung batch write by it
        self.attacks_path = ctx.option("attacks_dir")
        self.downloads_path = ctx.option("downloads_dir")
        self.sync_files = ctx.option_yes("sync_files", False)
        owner = outfile.server_owner(ctx.config, ctx.name)
        self.attacks_fd: int | None = outfile.open_directory(self.attacks_path, owner, ctx.name)
        try:
            self.downloads_fd: int | None = outfile.open_directory(
                self.downloads_path, owner, ctx.name
            )
        except BaseException:
            outfile.close_fd(self.attacks_fd)
            raise
        self.backlog = Backlog(ctx.name, f"{self.attacks_path} and {self.downloads_path}", ctx.log)
        # The batch's key for the attack files: one bound method kept, not one made per attack.
        self._creator: writebatch.Write = self._create

    def savedata(self, attack: Attack) -> None:
        if not attack.downloads:  # nearly every attack: its string alone, nothing else made
            if not attack.is_virtual and attack.attack_connection.payload.data:
                attack.set_analysis("SaveFile", {"attack_file": self._save_attack(attack)})
            return
        result: dict[str, object] = {}
        if not attack.is_virtual and attack.payload:
            result["attack_file"] = self._save_attack(attack)
        samples = self._save_downloads(attack)
        if samples:
            result["downloads"] = samples
        if result:
            attack.set_analysis("SaveFile", result)

    def savedata_batch(self, attacks: Sequence[Attack]) -> None:
        """savedata for a batch (hooks.SaveDataBatch: the pipeline calls this instead): the
        usual attack (no downloads, its own bytes) made here, its file held with the batch's
        others in one call to the write batch, in the attacks' order. An attack that raises
        costs its own files only; the first error is raised once every attack was tried (the
        pipeline logs and counts it)."""
        batch = writebatch.current()
        savedata = self.savedata
        error: Exception | None = None
        if batch is None:  # a direct caller: each written at once
            for attack in attacks:
                try:
                    savedata(attack)
                except Exception as exc:
                    error = error or exc
            if error is not None:
                raise error
            return
        assert self.attacks_fd is not None, "savedata after close"
        files: list[_AttackFile] = []
        dir_fd, log, directory = self.attacks_fd, self.log, self.attacks_path
        durable = self.sync_files
        for attack in attacks:
            try:
                if attack.downloads:
                    if files:  # held first: the files stay in the attacks' order
                        batch.add_all(self._creator, files)
                        files = []
                    savedata(attack)
                    continue
                data = attack.attack_connection.payload.data
                if attack.is_virtual or not data:
                    continue
                write = _AttackFile(dir_fd, attack_file_name(attack), data, log, durable)
                files.append(write)
                attack.set_analysis("SaveFile", {"attack_file": f"{directory}/{write.name}"})
            except Exception as exc:
                error = error or exc
        if files:
            batch.add_all(self._creator, files)
        if error is not None:
            raise error

    def followup(self, attack: Attack) -> None:
        """The samples downloaded after the attack was saved."""
        samples = self._save_downloads(attack)
        if samples:
            previous = attack.analysis.get("SaveFile")
            result = dict(previous) if isinstance(previous, dict) else {}
            result["downloads"] = samples
            attack.set_analysis("SaveFile", result)

    def _save_attack(self, attack: Attack) -> str:
        assert self.attacks_fd is not None, "savedata after close"
        write = _AttackFile(self.attacks_fd, attack_file_name(attack), attack.payload, self.log,
                            self.sync_files)
        batch = writebatch.current()
        if batch is None:
            self.backlog.submit(len(write.payload), write)
        else:
            batch.add(self._creator, write)  # at the batch's end, before it is acknowledged
        return f"{self.attacks_path}/{write.name}"

    def _create(self, files: list[_AttackFile]) -> None:
        """A batch's attack files (writebatch.py), in order, under one lock of the backlog's
        (Backlog.submit_each). One that raises (not a full disk: the backlog holds those) does
        not keep the others from being written; the first such error is raised once all were
        tried (the pipeline logs and counts it). With sync_files, while the backlog holds
        nothing, up to STARTED_AHEAD of the files are written unnamed first and their data put
        on the disk at once (outfile.start_unnamed, settle_all), then each named
        (name_started); what the backlog holds instead gives up its start and is written whole
        later."""
        if not self.sync_files:
            self.backlog.submit_each(files)
            return
        started = [] if self.backlog.holding() else files[:STARTED_AHEAD]
        for write in started:
            write.start()
        if started and outfile.settle_all(started[0].dir_fd):
            for write in started:
                write.settled = True
        try:
            self.backlog.submit_each(files)
        finally:
            for write in started:
                write.give_up()

    def _save_downloads(self, attack: Attack) -> list[str]:
        assert self.downloads_fd is not None, "savedata after close"
        paths: list[str] = []
        if not attack.downloads:
            return paths  # most attacks: no copy of an empty list
        for download in list(attack.downloads):  # a copy: other hooks may add to it
            payload = download.payload
            if payload.size == 0:
                continue
            self.backlog.submit(payload.size, functools.partial(self._publish, payload))
            paths.append(f"{self.downloads_path}/{payload.md5}")
        return paths

    def _publish(self, payload: Payload) -> None:
        assert self.downloads_fd is not None, "savedata after close"
        if outfile.publish(self.downloads_fd, payload.md5, payload.data,
                           durable=self.sync_files):
            self.log.info("sample %s saved (%d bytes)", payload.md5, payload.size)

    def stats(self) -> dict[str, int]:
        return self.backlog.stats()

    def close(self) -> None:
        self.backlog.close()
        outfile.close_fd(self.attacks_fd)
        outfile.close_fd(self.downloads_fd)
        self.attacks_fd = self.downloads_fd = None


# An attack file's `started` until its start(): empty, and never added to (start() makes its own).
_NOT_STARTED: list[int] = []


class _AttackFile:
    """Writing one attack file (the backlog's write: called now, or later, while a disk is
    full); `name` is the name it got, known once written. A slotted object rather than a
    closure and a list for the name: one per attack."""

    __slots__ = ("dir_fd", "name", "payload", "log", "durable", "started", "settled")

    def __init__(self, dir_fd: int, name: str, payload: bytes, log: logging.Logger,
                 durable: bool) -> None:
        self.dir_fd, self.name, self.payload, self.log = dir_fd, name, payload, log
        self.durable = durable  # SaveFile's sync_files
        # The unnamed file start() wrote, taken by one of __call__ and give_up only: a list's
        # pop() is one step under the GIL (the backlog's retry thread may call a held file
        # while its batch gives up the others). Until start() (only with sync_files) the
        # shared empty list, never added to: no list made per attack file.
        self.started: list[int] = _NOT_STARTED
        self.settled = False  # its started file's data is on the disk (settle_all)

    def __len__(self) -> int:  # what it weighs while its output is stalled (stalls.py)
        return len(self.payload)

    def start(self) -> None:
        fd = outfile.start_unnamed(self.dir_fd, self.payload)
        if fd is None:
            return
        if self.started is _NOT_STARTED:
            self.started = [fd]
        else:  # started again (its batch handed on meanwhile): as a list of its own would
            self.started.append(fd)

    def give_up(self) -> None:
        """Not written by its batch (held by the backlog): the started file is dropped."""
        try:
            fd = self.started.pop()
        except IndexError:
            return
        outfile.close_fd(fd)

    def __call__(self) -> None:
        base = self.name
        try:
            fd = self.started.pop()
        except IndexError:
            self.name = outfile.write_numbered(self.dir_fd, base, self.payload,
                                               durable=self.durable)
        else:
            self.name = outfile.name_started(fd, self.dir_fd, base, self.settled)
        if self.name != base:
            # Only a file left from an earlier run takes the name: names are unique.
            self.log.warning("attack file %s existed already: saved as %s", base, self.name)


def attack_file_name(attack: Attack) -> str:
    """`from_port_<port>-<proto>_<YYYY-MM-DDTHHMMSS>_<id>`: only our own data in it."""
    conn = attack.attack_connection
    proto = conn.protocol
    if proto not in _PROTOCOLS:
        proto = "ip"
    ident = attack.id
    # (bytes' isalnum tests the id's 32 bytes in a third of str's instructions.)
    if not (len(ident) <= _MAX_ID and ident.isascii() and ident.encode().isalnum()):
        ident = sha256(ident.encode()).hexdigest()
    # The start's second: the one named last (nearly every attack's) by two comparisons, no
    # call (floor(when) <= when < floor(when) + 1 is that second, for any float: + 1 is exact
    # below 2**53, and above it every float is whole).
    when = attack.start_time
    second, stamp = _last_second
    if not second <= when < second + 1.0:
        stamp = _any_second(when)
    port = conn.local_port
    return f"from_port_{port if type(port) is int else int(port)}-{proto}_{stamp}_{ident}"


def _any_second(when: float) -> str:
    global _last_second
    whole = math.floor(when)  # as time.gmtime rounds a float: toward minus infinity
    stamp = _second(whole)
    _last_second = (float(whole), stamp)  # one store: read whole by any thread
    return stamp


# The second attack_file_name named last, and its text (any second will do to start with).
_last_second: tuple[float, str] = (0.0, _second(0))


def load(ctx: PluginContext) -> SaveFile:
    return SaveFile(ctx)
