"""Files the output plugins write, shared by several processes at once.

Plugins are loaded in the master, as root, before dynamic servers are forked; the servers run
the attack hooks after dropping to -u/-g. So everything is opened here at load time:

- log files are opened O_APPEND and written with one `os.write` per record. On a local file
  system the kernel appends each write whole (the inode lock is held for the whole write), so
  records from several servers never interleave. No Python buffered file objects: their buffers
  would be copied by fork and flushed twice, or cut records in half.
- directories new files are created in are made at load time, handed to the user and group
  the servers run as, and kept open: files are created relative to the directory descriptor, so
  an unprivileged server needs write access to that directory only, not to the path above it.

A record is in its file whole or not at all (a full disk): a short append is taken back with
ftruncate before the error is raised, so the next record never continues a fragment; a new file
(an attack file, a sample) is written unnamed (O_TMPFILE) and linked under its final name only
when complete, so no reader and no crash ever sees it half written under that name. Where the
filesystem has no O_TMPFILE, a temporary name in the same directory does it, unlinked on failure
(a process killed meanwhile leaves that hidden name, never a partial file under the final one:
tests/test_outfile_crash.py).

A new file may also be made durable (`durable=True`; SaveFile's `sync_files` option): its data
on the disk before its name is given. Without it, as the original and as any log appended
without fsync, a power loss or a kernel crash loses what the last seconds wrote: with delayed
allocation (ext4's default) a name links a file whose blocks do not exist yet, and the journal
commits the name within seconds while the data waits up to 30 s for writeback, so such a file is
found empty under its name (tests/test_outfile_power_loss.py: ext4 shut down without its log's
flush, as a crash does: 501 of 501 files empty; durable, all whole). One durable file is settled
by sync_file_range(2) (its write-out started and waited for: the work the kernel's flusher did
later anyway, ~20 us a file more in the writer); SaveFile's durable batch writes its files
unnamed, then one syncfs(2) puts them all on the disk at once (the flusher writing them
together; the journal committed, the disk's cache flushed, once per batch), then names them
(start_unnamed, settle_all, name_started; bench/README.md has the costs). Not the default: it
costs the recorder ~10% of its CPU per attack and a wait per batch, and syncfs writes out
everything waiting on that filesystem, other programs' data included.
What could not be written is held by the output (backlog.py), not lost.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from honeytrap import privileges, writebatch
from honeytrap.attack import Attack
from honeytrap.backlog import Backlog
from honeytrap.config import Config
from honeytrap.errors import ConfigError, PluginError
from honeytrap.plugin import PluginContext

log = logging.getLogger("honeytrap.outfile")

# The original's logAttacker opened its file under umask 022 and SaveFile chmod'ed to 0644:
# readable by the analysis tools of the sensor, writable only by its owner.
LOG_FILE_MODE = 0o644
SAVED_FILE_MODE = 0o644
# Directories servers create files in: owned by the server user, which alone may write there.
DIRECTORY_MODE = 0o755
# Names tried when a new file's name is taken (names are unique by construction; this only
# covers a file left over from an earlier run with the same name).
MAX_NAME_ATTEMPTS = 100
# Seconds a timestamp formatter remembers the text of: attacks reach the outputs in about the
# order they end, so their start times fall in a few recent seconds (connections overlap).
RECENT_SECONDS = 16

_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_UNNAMED_FLAGS = os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC
# open(O_TMPFILE) where the filesystem (or an old kernel) cannot: use a temporary name instead.
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
# Temporary names (without O_TMPFILE): hidden, and never a name SaveFile gives a file.
TEMP_PREFIX = ".tmp-"
# linkat(fd, "", dir, name, AT_EMPTY_PATH) names an unnamed file without walking the path
# /proc/self/fd/N (2-3 us of a SaveFile file's 30-40 less, measured on ext4). Since Linux 6.10
# the process that opened the file may do so without CAP_DAC_READ_SEARCH; before, it is
# refused (ENOENT), and the /proc path does it.
_AT_EMPTY_PATH = 0x1000
_EMPTY_PATH_REFUSED = frozenset({errno.ENOENT, errno.EPERM, errno.EINVAL, errno.ENOSYS})
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
# sync_file_range(2): SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER, the file's dirty pages
# written out and waited for (ext4 converts the blocks to written before the wait ends).
_SETTLE_FLAGS = 1 | 2 | 4
# Where the file cannot be written out this way (a pipe, a filesystem or kernel without it),
# the data is as durable as the filesystem makes it without: nothing else to do.
_NO_SETTLE = frozenset({errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP})


def _find_linkat() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).linkat
    except (OSError, AttributeError):
        return None
    # No argtypes: ctypes passes a Python int as a C int and bytes as a char pointer by
    # itself, and checking declared argument types costs more than the rest of the call (one
    # call per attack file). The callers pass exactly those: descriptors, flags, bytes.
    function.restype = ctypes.c_int
    return function


_linkat: Callable[..., int] | None = _find_linkat()


def _find_sync_file_range() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    # Declared: two of its arguments are 64-bit offsets, which ctypes would pass as C ints.
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range: Callable[..., int] | None = _find_sync_file_range()


def _find_syncfs() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    return function


_syncfs: Callable[..., int] | None = _find_syncfs()


def settle_all(dir_fd: int) -> bool:
    """Write out and wait for everything the filesystem of `dir_fd` holds unwritten (syncfs(2):
    a batch's unnamed files, from start_unnamed, all at once: the kernel's flusher writes them
    out together, as it would have later, where a sync_file_range each costs the writer ~20 us
    a file more, bench/README.md). Whether it was done: if not, each file settles itself."""
    function = _syncfs
    return function is not None and function(dir_fd) == 0


def settle(fd: int) -> None:
    """Write the new file `fd`'s data out and wait for it, before it is named (see the module
    docstring). An I/O error is raised (the file must not be named: the caller keeps the
    record); a file or system that cannot do it is left as it is."""
    function = _sync_file_range
    if function is None or function(fd, 0, 0, _SETTLE_FLAGS) == 0:
        return
    code = ctypes.get_errno()
    if code not in _NO_SETTLE:
        raise OSError(code, os.strerror(code))


@dataclass(frozen=True)
class Owner:
    """The uid/gid dynamic servers run as; -1 leaves that id unchanged (as os.chown does)."""

    uid: int = -1
    gid: int = -1

    @property
    def unchanged(self) -> bool:
        return self.uid == -1 and self.gid == -1


def server_owner(config: Config, plugin: str) -> Owner:
    """The uid/gid the servers run as (privileges.resolve: -u alone also means the user's
    primary group). An unknown name is a PluginError naming the plugin."""
    try:
        identity = privileges.resolve(config.user, config.group)
    except ConfigError as exc:
        raise PluginError(f"plugin {plugin}: {exc.message}") from exc
    return Owner(
        -1 if identity.uid is None else identity.uid,
        -1 if identity.gid is None else identity.gid,
    )


def open_append(path: str, plugin: str) -> int:
    """Open (creating) a log file for appending; PluginError naming the plugin on failure."""
    try:
        return os.open(path, _APPEND_FLAGS, LOG_FILE_MODE)
    except OSError as exc:
        raise PluginError(f"plugin {plugin}: cannot open {path}: {exc.strerror}") from exc


def append_record(fd: int, record: bytes) -> None:
    """Append one record with one write, whole or not at all. A short write (a full disk) is
    taken back and raised as OSError(ENOSPC): the file ends where it ended before.

    The descriptor's offset is where our write ended (O_APPEND moves it there), so the record
    began `written` bytes before it. Only this process writes through this open file (another
    recorder of a reload has its own, opened by its own registry); should another process's
    append land between our write and the truncate, the truncate would take it too, which a
    disk on which our write just fell short makes unlikely to have succeeded anyway."""
    written = os.write(fd, record)
    if written == len(record):
        return
    end = os.lseek(fd, 0, os.SEEK_CUR)
    os.ftruncate(fd, end - written)
    raise OSError(errno.ENOSPC, f"short write ({written} of {len(record)} bytes) taken back")


def open_directory(path: str, owner: Owner, plugin: str) -> int:
    """Create `path` if needed, give it to the servers' user/group, and return a descriptor
    for it (files are created relative to it: see the module docstring)."""
    try:
        os.makedirs(path, DIRECTORY_MODE, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise PluginError(f"plugin {plugin}: cannot use directory {path}: {exc.strerror}") from exc
    try:
        if not owner.unchanged:
            os.fchown(fd, owner.uid, owner.gid)
    except OSError as exc:
        os.close(fd)
        raise PluginError(f"plugin {plugin}: cannot chown {path}: {exc.strerror}") from exc
    return fd


def write_new(dir_fd: int, names: Iterable[str], data: bytes, *, durable: bool = False) -> str:
    """Write `data` to a new file in the directory, under the first of `names` that does not
    exist yet (never replacing a file), complete before the name appears (and `durable`: on
    the disk before it, see the module docstring). Returns the name used; FileExistsError if
    every name is taken; any OSError leaves nothing behind."""
    try:
        fd = os.open(".", _UNNAMED_FLAGS, SAVED_FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _NO_TMPFILE:
            raise
        return _write_new_by_temp(dir_fd, names, data, durable)
    try:
        written = os.write(fd, data)  # all of it, nearly always: nothing more to do then
        if written < len(data):
            _write_rest(fd, data, written)
        if durable:
            settle(fd)
        for name in names:
            if _link_unnamed(fd, dir_fd, name):
                return name
        raise FileExistsError(errno.EEXIST, "every candidate name is taken")
    finally:
        os.close(fd)


def write_numbered(dir_fd: int, name: str, data: bytes, *, durable: bool = False) -> str:
    """write_new(dir_fd, numbered(name), data), its usual case made in one call: the unnamed
    file written and linked under `name` (SaveFile's attack file: one per attack; the name is
    unique, so taken only by a file left from an earlier run). Anything else (the name taken,
    no O_TMPFILE, a short write, a kernel refusing AT_EMPTY_PATH) goes write_new's way."""
    linkat = _linkat
    if linkat is None:
        return write_new(dir_fd, numbered(name), data, durable=durable)
    try:
        fd = os.open(".", _UNNAMED_FLAGS, SAVED_FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _NO_TMPFILE:
            raise
        return _write_new_by_temp(dir_fd, numbered(name), data, durable)
    try:
        written = os.write(fd, data)
        if written < len(data):
            _write_rest(fd, data, written)
        if durable:
            settle(fd)
        return _name_numbered(fd, dir_fd, name, linkat)
    finally:
        os.close(fd)


def start_unnamed(dir_fd: int, data: bytes) -> int | None:
    """A durable write_numbered's first half, for a batch of files: the unnamed file written,
    not yet settled (settle_all does a batch's at once); its descriptor, for name_started
    (which names it by AT_EMPTY_PATH or by /proc, as _link_unnamed). None where this way
    cannot be taken (no O_TMPFILE, any error: write_numbered then does all of it, and raises
    what it must)."""
    try:
        fd = os.open(".", _UNNAMED_FLAGS, SAVED_FILE_MODE, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        _write_all(fd, data)
    except OSError:
        os.close(fd)
        return None
    return fd


def name_started(fd: int, dir_fd: int, name: str, settled: bool) -> str:
    """write_numbered's second half: the file start_unnamed wrote settled (unless settle_all
    did it since), then named `name` (or the next free numbered name); `fd` is closed."""
    try:
        if not settled:
            settle(fd)
        linkat = _linkat
        if linkat is None:  # refused meanwhile (_link_unnamed found the kernel refuses it)
            for candidate in numbered(name):
                if _link_unnamed(fd, dir_fd, candidate):
                    return candidate
            raise FileExistsError(errno.EEXIST, "every candidate name is taken")
        return _name_numbered(fd, dir_fd, name, linkat)
    finally:
        os.close(fd)


def _name_numbered(fd: int, dir_fd: int, name: str, linkat: Callable[..., int]) -> str:
    encoded = name.encode(_FS_ENCODING, _FS_ERRORS)
    if b"\0" not in encoded and linkat(fd, b"", dir_fd, encoded, _AT_EMPTY_PATH) == 0:
        return name
    for candidate in numbered(name):  # `name` again: _link_unnamed says why it failed
        if _link_unnamed(fd, dir_fd, candidate):
            return candidate
    raise FileExistsError(errno.EEXIST, "every candidate name is taken")


def numbered(name: str) -> Iterator[str]:
    """`name`, then `name.1` ... (MAX_NAME_ATTEMPTS names in all)."""
    yield name
    for n in range(1, MAX_NAME_ATTEMPTS):
        yield f"{name}.{n}"


def _link_unnamed(fd: int, dir_fd: int, name: str) -> bool:
    """Give the unnamed file `fd` the name `name` in the directory; False if the name is
    taken: link(2) never replaces an existing name, as O_EXCL did not. AT_EMPTY_PATH where
    the kernel lets us (see _AT_EMPTY_PATH), else linkat(AT_SYMLINK_FOLLOW) of
    /proc/self/fd/N. (Once per attack file: the name taken answered without an exception.)"""
    global _linkat
    linkat = _linkat
    if linkat is not None:
        encoded = name.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode, without its call
        if b"\0" in encoded:
            raise ValueError("embedded null byte")  # as os.link says; C would cut the name
        if linkat(fd, b"", dir_fd, encoded, _AT_EMPTY_PATH) == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            return False
        if code not in _EMPTY_PATH_REFUSED:
            raise OSError(code, os.strerror(code), name)
        if not _link_by_proc(fd, dir_fd, name):
            return False
        _linkat = None  # this kernel refuses it, the /proc path works: use that from now on
        return True
    return _link_by_proc(fd, dir_fd, name)


def _link_by_proc(fd: int, dir_fd: int, name: str) -> bool:
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd)
    except FileExistsError:
        return False
    return True


def _write_new_by_temp(dir_fd: int, names: Iterable[str], data: bytes, durable: bool) -> str:
    """write_new on a filesystem without O_TMPFILE: a temporary name, linked, then unlinked."""
    temp = f"{TEMP_PREFIX}{os.urandom(16).hex()}"  # not uuid's: that module is not loaded
    fd = os.open(temp, _CREATE_FLAGS, SAVED_FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            _write_all(fd, data)
            if durable:
                settle(fd)
        finally:
            os.close(fd)
        for name in names:
            try:
                os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                continue
            return name
        raise FileExistsError(errno.EEXIST, "every candidate name is taken")
    finally:
        try:
            os.unlink(temp, dir_fd=dir_fd)  # a half-written file (disk full) is not kept
        except FileNotFoundError:
            pass


def publish(dir_fd: int, name: str, data: bytes, *, durable: bool = False) -> bool:
    """Make `name` hold `data`, never visible half written (`durable`: as write_new). False
    (and nothing written) if `name` exists already: the name is derived from the content, so it
    holds the same bytes."""
    if exists(dir_fd, name):
        return False
    try:
        write_new(dir_fd, (name,), data, durable=durable)
    except FileExistsError:
        return False  # written meanwhile by another process: the same content
    return True


def exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class LineLog:
    """An output plugin that appends one line per (non-virtual) attack to its `logfile` at
    POSTPROC (logAttacker, logJSON): virtual attacks' findings are already on their root, so
    logging them too would count an attack twice. Subclasses say how a line looks. Lines that
    cannot be written now (a full disk) wait in order in the backlog (backlog.py)."""

    def __init__(self, ctx: PluginContext) -> None:
        path = ctx.option("logfile")
        self.name = ctx.name  # the pipeline's log names a hung output by it (writebatch.py)
        self.fd: int | None = open_append(path, ctx.name)
        self.backlog = Backlog(ctx.name, path, ctx.log)
        # The batch's key for this output: one bound method kept, not one made per line.
        self._appender: writebatch.Write = self._append_lines

    def line(self, attack: Attack) -> bytes:
        raise NotImplementedError

    def postproc(self, attack: Attack) -> None:
        """write_line(line(attack)) for an attack that is not virtual, in one call less."""
        if attack.is_virtual:
            return
        line = self.line(attack)
        batch = writebatch.current()
        if batch is None:
            self.write_line(line)
        else:
            assert self.fd is not None, "write after close"
            batch.add(self._appender, line)

    def lines(self, attacks: Sequence[Attack]) -> list[bytes]:
        """The lines of the attacks that are not virtual (postproc_batch's); raises if one
        cannot be made. A subclass may make them in a way of its own (the same bytes)."""
        line = self.line
        return [line(attack) for attack in attacks if not attack.is_virtual]

    def postproc_batch(self, attacks: Sequence[Attack]) -> None:
        """postproc for a batch (hooks.PostProcBatch: the pipeline calls this instead): the
        lines of its attacks that are not virtual, held in the write batch. An attack whose
        line cannot be made costs its own line only: the others are held, then the first error
        is raised (the pipeline logs and counts it)."""
        error: Exception | None = None
        try:
            lines = self.lines(attacks)
        except Exception:
            lines = []
            line = self.line
            for attack in attacks:
                if not attack.is_virtual:
                    try:
                        lines.append(line(attack))
                    except Exception as exc:
                        error = error or exc
        if lines:
            batch = writebatch.current()
            if batch is None:
                self._append(b"".join(lines))
            else:
                assert self.fd is not None, "write after close"
                # One record a line, as postproc's (a stalled output counts lines lost).
                batch.add_all(self._appender, lines)
        if error is not None:
            raise error

    def write_line(self, line: bytes) -> None:
        """Append one whole line, or keep it in the backlog until the disk takes it. In a
        pipeline's batch (writebatch.py) the line waits for the batch's end, then goes out
        with the batch's other lines in one append (whole or not at all, like one line)."""
        assert self.fd is not None, "write after close"
        batch = writebatch.current()
        if batch is None:
            self._append(line)
        else:
            batch.add(self._appender, line)

    def _append_lines(self, lines: list[bytes]) -> None:
        """A batch's lines (writebatch.py), in one append."""
        self._append(b"".join(lines))

    def _append(self, lines: bytes) -> None:
        assert self.fd is not None, "write after close"
        self.backlog.submit(len(lines), functools.partial(append_record, self.fd, lines))

    def stats(self) -> dict[str, int]:
        return self.backlog.stats()

    def close(self) -> None:
        self.backlog.close()
        close_fd(self.fd)
        self.fd = None


def utc_formatter(layout: str) -> Callable[[float], str]:
    """A function giving `time.strftime(layout, time.gmtime(when))` for a POSIX time: the same
    text, with each second's text remembered (strftime is the slowest step of an output line,
    and most attacks start in a second formatted just before). `layout` has no sub-second
    field, so the whole second is all that matters."""
    second = utc_second_formatter(layout)

    def text(when: float) -> str:
        return second(math.floor(when))  # time.gmtime rounds a float toward minus infinity

    return text


def utc_second_formatter(layout: str) -> Callable[[int], str]:
    """utc_formatter's function of the whole second (`math.floor(when)`): a caller that
    floors the time itself makes one call less."""

    @functools.lru_cache(maxsize=RECENT_SECONDS)
    def second(whole: int) -> str:
        return time.strftime(layout, time.gmtime(whole))

    return second


def close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            log.warning("closing fd %d failed", fd, exc_info=True)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)  # all of it, nearly always: no view made for that
    if written < len(data):
        _write_rest(fd, data, written)


def _write_rest(fd: int, data: bytes, written: int) -> None:
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view):]
