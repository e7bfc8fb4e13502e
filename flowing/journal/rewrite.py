"""Rewrites of a journal file: ``compact`` and ``forget`` (``flowing journal``).

Each holds the journal's exclusive flock for its whole run (on the new file
too: it is locked before it is renamed in, so no writer appends to it before
the stored values the rewrite found unneeded are removed), reads every line
(refusing, before anything is written, a file that is not a flowing journal
this flowing may rewrite), writes the new file next to the journal as
``.NAME.<16 hex digits>.tmp`` with the journal's permission bits (and owner,
where allowed), fsyncs it, renames it over the journal and fsyncs the
directory (see flowing.journal.files). The result starts with a header, so a
0.1.0 journal is upgraded. Stored values (flowing.journal.values) that no
kept entry names are removed after.
"""

from __future__ import annotations

import difflib
import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass

from ..errors import JournalError
from ..journal import values as valuestore
from .files import (
    _CHUNK,
    _discard,
    _first_line,
    _fsync_dir,
    _new_temp,
    _open_regular,
    _refusal,
    _remove_stale_temps,
    _same_file,
)
from .format import HEADER, Entry, _base_name, _make_line
from .scan import _entry, _scan, _Warner

__all__ = ["compact", "forget", "CompactResult", "ForgetResult"]


@dataclass(frozen=True, slots=True)
class CompactResult:
    lines_before: int      # entry lines (unreadable ones included; the header not counted)
    bytes_before: int
    entries_after: int
    bytes_after: int
    unreadable: int        # lines dropped because they could not be read
    values_freed: int = 0  # bytes of stored values removed (nothing referred to them any more)


@dataclass(frozen=True, slots=True)
class ForgetResult:
    requested: dict[str, list[Entry]]   # task name asked for -> its removed entries
    downstream: dict[str, list[Entry]]  # other task -> removed entries (they used a forgotten result)
    removed: int                        # lines removed (all versions of every forgotten key)
    kept: int                           # entries left in the file
    values_freed: int = 0               # bytes of stored values removed with them


class _Exclusive:
    """The journal file opened and exclusively flocked, following any replacement."""

    def __init__(self, path: str, logger: logging.Logger) -> None:
        self.path = path
        self.abspath = os.path.abspath(path)
        self.logger = logger
        self.fd = -1

    def __enter__(self) -> _Exclusive:
        while True:
            fd = _open_regular(self.abspath, os.O_RDONLY, creating=False, shown=self.path)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, self.abspath):
                self.fd = fd
                return self
            os.close(fd)  # replaced while we waited: lock the new file instead

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the flock

    def scan(self, doing: str) -> tuple[list[Entry], int, int, bool]:
        """(valid entries in file order, unreadable lines, file size, is it a new journal?).

        Raises JournalError (before anything is written) unless the file is a
        flowing journal this flowing may rewrite.
        """
        entries: list[Entry] = []
        warner = _Warner(self.logger, self.path)
        size = os.fstat(self.fd).st_size
        first = True
        for s in _scan(self.fd, size):
            if first:
                first = False
                kind, version = _first_line(s)
                if kind in ("foreign", "newer"):
                    raise _refusal(self.path, kind, version, doing, "check the path")
                if kind == "header":
                    continue
            if s[6] is not None:
                warner.skip(s[0], s[1], s[6])
            else:
                entries.append(_entry(s))
        if first and size:  # nothing but blank lines
            raise _refusal(self.path, "foreign", 0, doing, "check the path")
        warner.done()
        _remove_stale_temps(self.abspath, self.logger)  # we hold the exclusive lock
        return entries, warner.count, size, first

    def replace_with(self, spans: list[tuple[int, int]], extra: bytes = b"") -> int:
        """Atomically replace the file by a header, the byte ranges ``spans`` of the current
        one and the whole lines ``extra``.

        The new file keeps the journal's permission bits and, where allowed, its owner.
        Returns with the exclusive flock held on it (``fd``).
        """
        tfd, tmp = _new_temp(self.abspath)
        try:
            fcntl.flock(tfd, fcntl.LOCK_EX)  # (new: never contended) held from rename to exit
            with os.fdopen(tfd, "wb", buffering=_CHUNK, closefd=False) as out:
                valuestore.take_owner_and_mode(tfd, os.fstat(self.fd))
                total = len(HEADER)
                out.write(HEADER)
                for off, length in spans:
                    while length > 0:
                        buf = os.pread(self.fd, min(length, _CHUNK), off)
                        if not buf:
                            raise OSError(errno.EIO, f"journal {self.path!r} shrank while being rewritten")
                        out.write(buf)
                        off += len(buf)
                        length -= len(buf)
                        total += len(buf)
                out.write(extra)
                total += len(extra)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.abspath)
        except BaseException:
            _discard(tmp)
            os.close(tfd)
            raise
        # The path now names the new file, locked since before it got that name: a
        # writer following the path waits there until ``clean`` (which works from what
        # this rewrite read) is done. The old file's lock goes with its descriptor.
        os.close(self.fd)
        self.fd = tfd
        _fsync_dir(self.abspath)
        return total


def compact(path: str | os.PathLike[str], logger: logging.Logger) -> CompactResult:
    """Atomically rewrite the journal keeping only the latest valid entry per key.

    The result starts with a header (a 0.1.0 journal is upgraded). An empty
    journal is left as it is. Raises JournalError, leaving the file
    untouched, if it is not a flowing journal (see the module docstring).
    """
    path = os.fspath(path)
    with _Exclusive(path, logger) as ex:
        entries, bad, size, new = ex.scan("compact")
        if new:
            return CompactResult(lines_before=0, bytes_before=size, entries_after=0,
                                 bytes_after=size, unreadable=0)
        # The latest line with a value per key (the one a run would replay); a key
        # that only ever had value-less markers keeps its latest marker (its
        # dependency chain still matters to `forget`).
        # A ``gone`` marker (the value could not be loaded) outranks the lines before it.
        latest: dict[str, Entry] = {}
        for e in entries:
            held = latest.get(e.key)
            if held is None or e.enc != "none" or held.enc in ("none", "gone"):
                latest[e.key] = e
        kept = sorted(latest.values(), key=lambda e: e.offset)
        after = ex.replace_with([(e.offset, e.size) for e in kept])
        _removed, freed = valuestore.clean(ex.abspath, _stored_of(kept))
    return CompactResult(lines_before=len(entries) + bad, bytes_before=size,
                         entries_after=len(kept), bytes_after=after, unreadable=bad,
                         values_freed=freed)


def forget(path: str | os.PathLike[str], tasks: list[str], logger: logging.Logger) -> ForgetResult:
    """Atomically remove the named tasks (with their items) and everything downstream.

    A name matches entries named exactly so and, for ``for_each`` tasks, its
    items ``name[i]``. Every entry that lists a removed key among its
    dependencies is removed too, transitively. A task whose lines go because
    one of its items was asked for keeps a value-less line when other items of
    it stay (``_chains``). Unreadable lines are dropped.
    Raises JournalError (with close matches) if a name matches nothing, and
    if the file is not a flowing journal; the file is then left untouched.
    """
    path = os.fspath(path)
    with _Exclusive(path, logger) as ex:
        entries, _bad, _size, _new = ex.scan("rewrite")
        seeds: dict[str, str] = {}      # key -> requested name
        requested: dict[str, list[Entry]] = {t: [] for t in tasks}
        matched: set[str] = set()
        for e in entries:
            for t in tasks:
                if e.name == t or (e.kind == "item" and _base_name(e.name) == t):
                    seeds.setdefault(e.key, t)
                    matched.add(t)
        unknown = [t for t in tasks if t not in matched]
        if unknown:
            known = sorted({e.task for e in entries})
            parts = []
            for t in unknown:
                close = difflib.get_close_matches(t, known, n=3, cutoff=0.6)
                hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
                parts.append(f"{t!r}{hint}")
            raise JournalError(f"journal {path!r} has no task named {', '.join(parts)}; "
                               f"`flowing journal show {path}` lists them")
        # Transitive closure over recorded dependencies: dep key -> keys that used it.
        users: dict[str, set[str]] = {}
        for e in entries:
            for d in e.dep_keys:
                users.setdefault(d, set()).add(e.key)
        # One item asked for by name (``fetch[3]``): its task's own entry goes too (else
        # the task replays whole and the item never runs), but not the task's other
        # items, which list the task's key first among their dependencies.
        items_of: dict[str, set[str]] = {}
        for e in entries:
            if e.kind == "item" and e.dep_keys:
                items_of.setdefault(e.dep_keys[0], set()).add(e.key)
        asked_items = {_base_name(seeds[e.key]) for e in entries
                       if e.key in seeds and e.kind == "item" and e.name == seeds[e.key]}
        parents = {e.key for e in entries if e.kind != "item" and e.name in asked_items}
        gone = set(seeds) | parents
        todo = list(gone)
        while todo:
            done = todo.pop()
            siblings = items_of.get(done, set()) if done in parents else set()
            for k in users.get(done, ()):
                if k not in gone and k not in siblings:
                    gone.add(k)
                    todo.append(k)
        downstream: dict[str, list[Entry]] = {}
        keep: list[Entry] = []
        for e in entries:
            if e.key in seeds:
                requested[seeds[e.key]].append(e)
            elif e.key in gone:
                downstream.setdefault(e.task, []).append(e)
            else:
                keep.append(e)
        ex.replace_with([(e.offset, e.size) for e in keep], _chains(entries, parents, keep))
        _removed, freed = valuestore.clean(ex.abspath, _stored_of(keep))
    removed = sum(map(len, requested.values())) + sum(map(len, downstream.values()))
    return ForgetResult(requested=requested, downstream=downstream, removed=removed,
                        kept=len(keep), values_freed=freed)


def _chains(entries: list[Entry], parents: set[str], keep: list[Entry]) -> bytes:
    """Value-less lines for the task keys whose lines go because one of their items
    was asked for, while other items of theirs stay: an item line names only its
    task's key (flowing.replay.record), so without such a line a later ``forget`` of
    a dependency could no longer reach those items. Never replays (``enc`` none)."""
    kept_tasks = {e.dep_keys[0] for e in keep if e.kind == "item" and e.dep_keys}
    lines = []
    done: set[str] = set()
    for e in entries:
        if e.key in parents and e.key in kept_tasks and e.key not in done and e.kind != "item":
            done.add(e.key)
            lines.append(_make_line(e.key, e.kind, e.name, list(e.dep_keys), time.time(),
                                    "none", "null"))
    return b"".join(lines)


def _stored_of(entries: list[Entry]) -> set[str]:
    """The stored values these entries (in file order) refer to, unless a later
    ``gone`` marker of the same key says that value could not be loaded."""
    last_gone = {e.key: e.offset for e in entries if e.enc == "gone"}
    return {e.stored for e in entries
            if e.stored is not None and e.offset > last_gone.get(e.key, -1)}
