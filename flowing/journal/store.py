"""The durable journal: an append-only JSONL file of finished steps.

Every task that succeeds (every ``for_each`` item, every manual override)
appends one line. A later run, in this process or a fresh one, opens the
journal, replays each task whose step key is in it and runs only the rest.

The package's parts: flowing.journal.format (the line format, the header,
encoding values), flowing.journal.files (which files are journals; opening,
creating and locking them safely; crash safety), flowing.journal.scan
(reading lines), flowing.journal.reader (the index and checked reads),
flowing.journal.commit (group commit), flowing.journal.rewrite (``compact``
and ``forget``), flowing.journal.values (big values beside the journal),
flowing.journal.index (the index persisted in SQLite). This module holds
``Journal``, which owns the open file and ties them together.

Locking
-------
Writers append with ONE ``os.write`` on an ``O_APPEND`` descriptor while
holding an exclusive ``fcntl.flock`` on the file, so lines from different
processes never interleave; a ``threading.Lock`` does the same for threads
of one process (flock does not exclude threads sharing a descriptor).
Readers that build an index hold a shared flock while scanning so they never
see a line half-copied by a concurrent writer. The header is written under
the exclusive lock, after checking again that the file still needs one.
``flowing journal forget`` and ``compact`` hold the exclusive flock while
they write a new file next to the journal and ``os.replace`` it in; a writer
that then gets the lock notices the path now names another inode, reopens it
and re-indexes before writing. ``fsync`` runs after both locks are released
(group commit: flowing.journal.commit). A forked child reopens the file on its
first ``record``: it would otherwise share the parent's open file description
and so its flock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import JournalError
from ..journal import values as valuestore
from ..text import safe_str
from .commit import Check, GroupCommit, _Held, _Line
from .files import (
    _append,
    _discard,
    _fsync_dir,
    _header_file,
    _open_or_create,
    _open_regular,
    _remove_stale_temps,
    _same_file,
    _Unusable,
)
from .format import _HEAD, _VALUE_TAG, HEADER, KINDS, Entry, Hit, _check, _encode_value, _make_line
from .reader import Reader
from .scan import _journal_entries

__all__ = ["Journal"]


class Journal:
    """An open journal: the descriptor it holds, its ``Reader`` (the index and checked
    reads) and its ``GroupCommit`` (ordered, shared-fsync appends). See the module docstring.

    ``record`` may be called from many threads at once and from many
    processes on the same file; ``peek``, ``get``, ``lookup`` and
    ``__contains__`` from any thread. ``close`` must not race with them.
    """

    def __init__(self, path: str, fd: int, logger: logging.Logger) -> None:
        self.path = path
        self._abspath = os.path.abspath(path)
        self._fd = fd
        self._logger = logger
        self._old_fds: list[int] = []      # replaced descriptors: an fsync may still use them
        self._pid = os.getpid()
        self._known_end = -1               # size after our last append: unchanged -> no tail check
        self._reader = Reader(path, self._abspath, logger, self.invalidate)
        self._commit = GroupCommit(self._emit, lambda: os.fsync(self._fd), logger, path)

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], logger: logging.Logger) -> Journal:
        """Open (creating with mode 0600 and a header if missing) and index the journal.

        Raises JournalError, naming the path and the fix, if it can't be used:
        not a regular file, a symbolic link, not a flowing journal, a newer
        format, or a permission problem. A refused file is left untouched.
        """
        path = os.fspath(path)
        fd, created = _open_or_create(path)
        self = cls(path, fd, logger)
        try:
            self._lock_current(fcntl.LOCK_SH)
            try:
                if not self._load():
                    # Empty (or a torn header): write the header, re-checking under the
                    # exclusive lock since another process may have done it meanwhile.
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._lock_current(fcntl.LOCK_EX)
                    if not self._load():
                        self._start_file()
                _remove_stale_temps(self._abspath, logger)
                valuestore.clean(self._abspath, None)  # temporary files of killed writers
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            if created:
                _fsync_dir(self._abspath)  # make the new file's name durable too
        except BaseException:
            self._close_fds()
            raise
        return self

    def _lock_current(self, op: int) -> None:
        """Take a flock (``op``) on a descriptor that still names the path.

        A shared lock keeps writers out so a scan never meets a half-written
        line; the loop follows a rewrite that replaced the file before we
        locked it. Raises JournalError if the path no longer names a usable file.
        """
        while True:
            fcntl.flock(self._fd, op)
            if _same_file(self._fd, self._abspath):
                return
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            new = _open_regular(self._abspath, os.O_RDWR | os.O_APPEND, creating=False,
                                shown=self.path)
            self._old_fds.append(self._fd)
            self._fd = new

    def _load(self) -> bool:
        """(Re)build the index; the caller holds a flock on a verified descriptor.

        Returns False if the file is empty (see ``Reader.load``).
        """
        return self._reader.load(self._fd)

    def _start_file(self) -> None:
        """Give an empty journal file its header (exclusive flock held on a verified fd).

        A file holding just the header (same mode and owner) is renamed over the
        empty one, so a crash leaves either the empty file or a whole header. It is
        locked before it gets the journal's name (as a rewrite's new file is: no
        other writer appends to it first), and the exclusive flock is held on it
        on return.
        """
        try:
            tmp = _header_file(self._abspath, os.fstat(self._fd))
            try:
                new = _open_regular(tmp, os.O_RDWR | os.O_APPEND, creating=False,
                                    shown=self.path)
            except BaseException:
                _discard(tmp)
                raise
            try:
                fcntl.flock(new, fcntl.LOCK_EX)
                os.replace(tmp, self._abspath)
                _fsync_dir(self._abspath)
            except BaseException:
                os.close(new)
                _discard(tmp)
                raise
        except OSError as e:
            raise JournalError(f"journal {self.path!r}: cannot write the journal header "
                               f"({e.strerror or e}); check free space and permissions, or "
                               f"choose another journal_path") from None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._old_fds.append(self._fd)
        self._fd = new
        self._known_end = len(HEADER)
        self._reader.started()

    # -- reading ---------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._reader

    def __len__(self) -> int:
        return len(self._reader.idx)

    def has_task(self, name: str) -> bool:
        """Whether the file holds an entry (value or marker) for the task ``name``."""
        return self._reader.idx.has_name(name)

    def latest_parts(self, name: str) -> dict[str, str] | None:
        """The ``parts`` of the newest task entry named ``name`` (what
        its key was computed from, as short fingerprints), or None if that entry
        has none (written by flowing 0.2.0, or no entry)."""
        return None if self._commit.closed else self._reader.latest_parts(self._fd, name)

    def peek(self, key: str) -> tuple[float, str | None, str | None] | None:
        """(t, digest, inputs) of the latest entry for ``key`` holding a value, without loading it.

        None if there is none, or if its value is a pickle this file may not
        load (see the trust rule; warned once).
        """
        return None if self._commit.closed else self._reader.peek(key)

    def get(self, key: str, lazy: bool = False) -> Hit | None:
        """The latest journaled value of ``key`` with its digests, or None if absent or unloadable.

        A value stored beside the journal is checked cheaply (present, trusted,
        right size); with ``lazy`` it is not read: ``Hit.value`` is then a
        ``StoredValue`` whose ``load()`` reads and verifies it. A value in the
        line is read now and checked against its recorded digest.
        """
        return None if self._commit.closed else self._reader.get(self._fd, key, lazy)

    def lookup(self, key: str) -> tuple[bool, Any]:
        """(True, value) if ``key`` is journaled and its value loads, else (False, None)."""
        hit = self.get(key)
        return (False, None) if hit is None else (True, hit.value)

    def entries(self) -> Iterator[Entry]:
        """Every valid entry of the file in file order (duplicates included)."""
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_SH)
        end = os.fstat(fd).st_size
        fcntl.flock(fd, fcntl.LOCK_UN)
        return _journal_entries(fd, self.path, self._logger, end, lenient=False)

    # -- writing ---------------------------------------------------------

    def record(self, key: str, name: str, dep_keys: Sequence[str], value: Any, kind: str = "task",
               *, digest: str | None = None, inputs: str | None = None, store: bool = True,
               parts: Mapping[str, str] | None = None, durable: bool = True,
               check: Check | None = None,
               digest_of: Callable[[Any], str | None] | None = None) -> bool:
        """Append one entry and fsync it. True if what was asked is durable.

        ``digest``: content digest of ``value``; ``inputs``: digest of the
        dependency values it was computed from (both stored as given, None
        when unknown). ``digest_of`` (with no ``digest``): computes the digest
        only for a value not stored as JSON in the line, the one case where
        reading it back needs the digest to check it (a JSON value round-trips
        exactly and the line's CRC covers its text). ``parts``: short fingerprints of what the key was
        computed from (``flowing.replay.why``), kept in the line for ``latest_parts``.
        ``store=False`` writes a value-less marker (``enc``
        ``none``) that never replays but keeps the chain of dependency keys
        for ``journal forget``; True then means the marker is durable.

        ``durable=False`` (``for_each`` items) may hold the line back to share
        one write and one fsync with the lines that follow it (group commit);
        it is written by the next durable ``record``, by ``flush`` or
        ``close``, or once the held lines pass 1 MiB or 0.2 s (flowing.journal.commit).
        True then means it will be written. A value big enough for the store
        is always written (and fsynced) before the line that names it.
        ``check`` is called (under the journal's lock) just before the line is
        written, once per distinct check per write: None lets the line be
        written; anything else drops it, a non-empty str being logged as a
        warning (``inplace``: a side input changed in place meanwhile).

        Never raises for runtime problems: an unstorable value gives one
        warning, writes a marker and returns False; a write error disables the
        journal for the rest of the run (one warning) and returns False.
        Passing an unknown ``kind``, a non-str key or non-str digests is a
        programming error and raises ValueError/TypeError.
        """
        if kind not in KINDS:
            raise ValueError(f"journal entry kind must be one of {sorted(KINDS)}, not {kind!r}")
        if type(key) is not str or not key:
            raise TypeError(f"journal key must be a non-empty str, not {key!r}")
        for field, d in (("digest", digest), ("inputs", inputs)):
            if d is not None and type(d) is not str:
                raise TypeError(f"journal {field} must be a str or None, not {type(d).__name__}")
        if self._commit.disabled is not None or self._commit.closed:
            return False
        if self._pid != os.getpid():
            self._after_fork()
        wanted = True   # what the caller asked for will be in the file
        enc, text = "none", "null"
        held = -1       # flock on a stored value file, kept until its line is written
        if store:
            try:
                enc, text, big = _encode_value(value)
                if enc != "json" and digest is None and digest_of is not None:
                    digest = digest_of(value)
                if big is not None:
                    sha, size, held = valuestore.write(self._abspath, os.fstat(self._fd), *big)
                    text = '{"sha256":"%s","size":%d}' % (sha, size)
                    durable = True
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # any pickling failure (a __reduce__ may even exit)
                self._logger.warning("task %r: result not journaled (%s: %s); it will run again "
                                     "next time", name, type(e).__name__, safe_str(e, 200))
                # Still write a value-less marker: it never replays, but it keeps the
                # chain of dependency keys whole, so ``journal forget`` can reach past it.
                wanted = False
                enc, text = "none", "null"
        t = time.time()
        name = str(name)
        line = _make_line(key, kind, name, [str(d) for d in dep_keys], t, enc, text, digest,
                          inputs, parts)
        entry: _Held = (key, kind, name, enc, float("%.3f" % t), digest, inputs,
                        line.find(_VALUE_TAG, _HEAD) + len(_VALUE_TAG), parts is not None)
        try:
            return self._commit.write(line, entry, durable, check) and wanted
        finally:
            if held >= 0:
                os.close(held)

    def checkpoint(self) -> None:
        """Write held lines and, for a journal over 1 MiB whose every line this
        process has indexed, persist the index (flowing.journal.index), so the next
        open reads nothing it already knows. Called at the end of a run. Never raises."""
        if self._pid != os.getpid():
            return
        self.flush()
        commit = self._commit
        with commit.lock:
            if commit.closed or commit.disabled is not None or self._reader.indexed_end <= 0:
                return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH)
                try:
                    if _same_file(self._fd, self._abspath):
                        self._reader.save(self._fd, os.fstat(self._fd))
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass

    def flush(self) -> bool:
        """Write and fsync the lines ``record(durable=False)`` held back. True if all are durable."""
        return self._commit.flush()

    def invalidate(self, key: str) -> None:
        """Never replay the current entry of ``key`` again (its value could not be loaded):
        append a ``gone`` marker with the entry's name and dependencies, so the chain
        ``journal forget`` follows stays whole."""
        where = self._reader.idx.get(key)
        if where is None or self._commit.closed or self._commit.disabled is not None:
            return
        off, length, vstart = where[:3]
        try:
            hdr, _v, _p = _check(os.pread(self._fd, length, off)[:-1], None, None)
        except OSError:
            hdr = None
        if hdr is None:
            self._reader.idx.drop(key)
            return
        t = time.time()
        line = _make_line(key, hdr["kind"], hdr["name"], hdr["deps"], t, "gone", "null",
                          hdr["digest"], hdr["inputs"])
        if self._pid != os.getpid():
            self._after_fork()
        self._commit.write(line, (key, hdr["kind"], hdr["name"], "gone", t, None, None, 0, False))
        self._reader.idx.drop(key)

    def _emit(self, lines: list[_Line]) -> None:
        """Append ``lines`` in one write under the exclusive flock, then index them
        (``GroupCommit.lock`` held). Raises OSError."""
        data = lines[0][0] if len(lines) == 1 else b"".join([x[0] for x in lines])
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if not _same_file(self._fd, self._abspath):
                self._reopen()
            off = _append(self._fd, data, self._known_end)
            self._known_end = off + len(data)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._reader.appended(off, lines)

    def _reopen(self) -> None:
        """The path was replaced (forget/compact) or removed: follow it and re-index.

        Called with the commit lock and the exclusive flock held on the current fd; returns
        with the exclusive flock held on the new one. Raises OSError if the path
        no longer names a flowing journal we may use.
        """
        try:
            if not os.path.lexists(self._abspath):
                raise JournalError("the journal file was removed or renamed")
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._lock_current(fcntl.LOCK_EX)
            self._known_end = -1
            if not self._load():
                self._start_file()
        except JournalError as e:
            # Keep holding an exclusive lock on some descriptor, as the caller expects.
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            raise _Unusable(str(e)) from None
        self._logger.info("journal %r was rewritten by another process; re-read it", self.path)

    def _after_fork(self) -> None:
        # A forked child shares the parent's open file description, and with it the
        # flock: give the child its own so the lock excludes parent and child. The
        # thread locks may have been held by a parent thread at fork time: renew them.
        self._pid = os.getpid()
        self._commit.after_fork()
        self._known_end = -1
        try:
            before = os.fstat(self._fd)
            fd = _open_regular(self._abspath, os.O_RDWR | os.O_APPEND, creating=False,
                               shown=self.path)
            self._old_fds.append(self._fd)
            self._fd = fd
            self._lock_current(fcntl.LOCK_SH)
            try:
                now = os.fstat(self._fd)
                if self._reader.forked():
                    self._load()
                elif (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev):
                    self._load()  # the file was rewritten meanwhile: offsets changed
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except (OSError, JournalError) as e:
            self._commit.disable(e if isinstance(e, OSError) else _Unusable(str(e)))

    # -- closing ---------------------------------------------------------

    def _close_fds(self) -> None:
        for fd in [self._fd, *self._old_fds]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._old_fds.clear()

    def close(self) -> None:
        """Write held lines, wait for pending fsyncs, then release the file. Idempotent."""
        commit = self._commit
        if not commit.closed and self._pid == os.getpid():
            self.flush()
        with commit.lock:
            if commit.closed:
                return
            commit.close()
            self._close_fds()
            if self._pid == os.getpid():
                self._reader.idx.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({self.path!r}, {len(self)} keys{', closed' if self._commit.closed else ''})"

