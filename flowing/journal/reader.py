"""The reads of an open journal: its index of the file, and values read back, checked.

Opening (``Reader.load``) scans the file (flowing.journal.scan) and indexes
it: offsets and a few small fields per key (time, digests), never values;
``get`` reads the one line it needs and checks it is the line the index
describes. A journal over 1 MiB keeps its index in SQLite beside it
(flowing.journal.index), so a later open reads only the lines appended
since; the file stays the source of truth. At the end of a run,
``checkpoint()`` writes held lines and saves the index when this process
knows every line of the file (no other writer appended meanwhile).

Values read back
----------------
A value read back is checked before it is used: a line value is decoded and
its content digest (``flowing.keys.digest.value_digest``) must equal the entry's
``digest`` (when one is recorded: an item stored as JSON has none, its CRC
covers its text), so a value edited by hand, even with its checksum fixed
up, is not replayed unless its digest is made again too (the digest is no
secret: a journal others may write is trusted for JSON values only, see
``trusted``); a stored file must have the size and
sha256 its line names. ``get(key, lazy=True)`` (what replay uses) checks a
stored file cheaply (present, trusted, right size) and returns a
``StoredValue`` that reads and verifies it on first use; if that fails, the
entry is retired with a ``gone`` line and ``ValueUnavailable`` (a
``JournalError``) names the task and says the next run computes it again.
``compact`` and ``forget`` remove the stored files no kept entry names.

Pickle trust rule
-----------------
Unpickling runs code chosen by whoever wrote the bytes. Pickled values are
therefore loaded only if the journal file is owned by the current user and
is not writable by group or others (``chmod 600 PATH``). Otherwise one
warning explains why, pickled entries are treated as absent (those tasks
re-run) and JSON entries are still used. New journals are created 0600.
Stored values are pickles too: each is loaded only if the journal is
trusted AND the value folder and the file itself are owned by the current
user and not writable by group or others (and are a real directory and a
regular file: no links are followed).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ValueUnavailable
from ..journal import index as journalindex
from ..journal import values as valuestore
from ..results import Deferred
from ..text import safe_str
from .commit import _Held, _Line
from .files import _first_line, _refusal, _trust_problem
from .format import _HEAD, _TORN, _VALUE_TAG, HEADER, Hit, _check, _stored_ref, human_size
from .scan import _scan, _Warner

_JSON, _PICKLE, _FILE = 0, 1, 2     # how an indexed entry holds its value
_CODES = {"json": _JSON, "pickle": _PICKLE, "file": _FILE}
_UNLOADED: Any = object()


def _pack(digest: str | None) -> bytes | str | None:
    """A 64-hex-digit digest as its 32 bytes (half the memory in the index); others as they are."""
    if digest is not None and len(digest) == 64:
        try:
            packed = bytes.fromhex(digest)
        except ValueError:
            return digest
        # (fromhex also reads spaces and capitals: only what hex() gives back is packed)
        if packed.hex() == digest:
            return packed
    return digest


def _unpack(d: bytes | str | None) -> str | None:
    return d.hex() if isinstance(d, bytes) else d


def _note(idx: journalindex.Index, off: int, length: int, line: _Held) -> None:
    """Index one valid line at ``off`` (``line``: its fields, as ``GroupCommit`` holds them)."""
    key, kind, name, enc, t, digest, inputs, vstart, has_parts = line
    if kind != "item":
        idx.names.add(name)
        if kind == "task" and enc != "gone":
            idx.set_parts(name, (off, vstart) if has_parts else None)
    if enc == "gone":  # the value before it could not be loaded: never replay it
        idx.drop(key)
    elif enc != "none":  # a marker without a value never replays
        idx.put(key, (off, length, vstart, _CODES[enc], t, _pack(digest), _pack(inputs)))


class StoredValue(Deferred):
    """A replayed value not read yet: ``load()`` reads and verifies it on first use.

    A failed load (file missing, damaged, not trusted) invalidates the entry
    in the journal and raises ``ValueUnavailable``; so does every later call.
    """

    __slots__ = ("_reader", "key", "name", "sha256", "size", "_lock", "_error", "_value")

    def __init__(self, reader: Reader, key: str, name: str, sha256: str, size: int) -> None:
        self._reader = reader
        self.key, self.name, self.sha256, self.size = key, name, sha256, size
        self._lock = threading.Lock()
        self._error: ValueUnavailable | None = None
        self._value: Any = _UNLOADED

    def load(self) -> Any:
        with self._lock:
            if self._value is not _UNLOADED:
                return self._value
            if self._error is not None:
                raise self._error
            r = self._reader
            try:
                if not r.trusted():
                    raise valuestore.StoreError(f"journal {r.path!r} is not trusted for pickles")
                self._value = valuestore.load(r.abspath, self.sha256, self.size)
                return self._value
            except (valuestore.StoreError, OSError, MemoryError) as e:
                why = safe_str(e, 200)
            try:
                r.invalidate(self.key)
            except OSError:
                pass
            self._error = ValueUnavailable(
                f"task {self.name!r}: its journaled value could not be loaded ({why}); journal "
                f"{r.path!r} no longer replays it, so the next run computes it again")
            r.logger.warning("%s", self._error)
            raise self._error

    def __repr__(self) -> str:
        return f"<journaled value of {self.name!r}, {human_size(self.size)}, not loaded>"


class Reader:
    """The index of an open journal's file and the reads it answers, from any thread.

    It holds no descriptor: each call that reads gets the journal's current one
    (a rewrite by another process or a fork replaces it). ``invalidate(key)``
    retires an entry whose value could not be loaded (the journal's writer).
    """

    def __init__(self, path: str, abspath: str, logger: logging.Logger,
                 invalidate: Callable[[str], None]) -> None:
        self.path, self.abspath, self.logger, self.invalidate = path, abspath, logger, invalidate
        # key -> where its latest line with a value is; the names of the tasks (not
        # items) with an entry of any kind (a task that has one but not under its key
        # now ran with a new key: "why did it run again?"); task name -> (offset, value
        # start) of its newest entry when that has parts. See flowing.journal.index.
        self.idx = journalindex.Index()
        self.stale_dbs: list[Any] = []     # connections inherited over fork: never used again
        # The index describes every line up to this byte (and this many lines): -1 once
        # another process appended after it (then only the next open catches up).
        self.indexed_end = -1
        self.indexed_lines = 0
        self._trust: str | None = None     # why pickles are refused, or None
        self._trust_warned = False
        self._warned_keys: set[str] = set()

    # -- indexing --------------------------------------------------------

    def load(self, fd: int) -> bool:
        """(Re)build the index; the caller holds a flock on a verified descriptor.

        Returns False, with an empty index, if the file is empty. Raises
        JournalError if it is not a flowing journal or is of a newer format.
        With a usable persisted index (flowing.journal.index), only the lines
        past what it covers are read.
        """
        st = os.fstat(fd)
        self._trust = _trust_problem(st)
        self.idx.close()
        idx = journalindex.Index()
        start, lines = idx.attach(self.abspath, fd, st)
        warner = _Warner(self.logger, self.path)
        first = True
        covered = start  # end of the last whole line (a torn tail is cut by the next writer)
        if start:
            kind, version = _first_line(next(_scan(fd, st.st_size)))
            if kind in ("foreign", "newer"):
                idx.close()
                raise _refusal(self.path, kind, version, "write to", "choose another journal_path")
            first = False
        for s in _scan(fd, st.st_size, start, lines):
            lineno, off, length, hdr, vstart, head, problem = s
            if problem is not _TORN:
                lines, covered = lineno, off + length
            if first:
                first = False
                kind, version = _first_line(s)
                if kind in ("foreign", "newer"):
                    idx.close()
                    raise _refusal(self.path, kind, version, "write to", "choose another journal_path")
                if kind == "header":
                    continue
            if problem is not None:
                warner.skip(lineno, off, problem)
            elif hdr is not None:
                _note(idx, off, length, (hdr["key"], hdr["kind"], hdr["name"], hdr["enc"], hdr["t"],
                                         hdr["digest"], hdr["inputs"], vstart, bool(hdr.get("parts"))))
        if first and st.st_size:  # nothing but blank lines
            idx.close()
            raise _refusal(self.path, "foreign", 0, "write to", "choose another journal_path")
        warner.done()
        if idx.db is not None and covered and (start == 0 or start < covered):
            idx.save(fd, st, covered, lines, rebuild=start == 0)
        self.idx = idx
        self.indexed_end, self.indexed_lines = covered, lines
        return not first

    def started(self) -> None:
        """The file was just given its header: the index knows it whole."""
        self.indexed_end, self.indexed_lines = len(HEADER), 1

    def appended(self, off: int, lines: list[_Line]) -> None:
        """Index ``lines``, just appended at ``off`` by this process."""
        data_len = sum(len(x[0]) for x in lines)
        if off == self.indexed_end:  # our lines follow what the index knows
            self.indexed_end = off + data_len
            self.indexed_lines += len(lines)
        else:
            self.indexed_end = -1
        for line, held, _ in lines:
            _note(self.idx, off, len(line), held)
            off += len(line)

    def save(self, fd: int, st: os.stat_result) -> None:
        """Persist the index of a journal over 1 MiB whose every line it knows
        (``st``: the file now, under a flock); see ``Journal.checkpoint``."""
        if st.st_size != self.indexed_end:
            return
        idx = self.idx
        if idx.db is None:
            if st.st_size < journalindex.MIN_INDEXED:
                return
            idx.attach(self.abspath, fd, st)  # (the overlay holds it all)
            rebuild = True
        else:
            rebuild = False
        idx.save(fd, st, st.st_size, self.indexed_lines, rebuild)

    def forked(self) -> bool:
        """In a forked child: set aside a database connection (never used, nor closed,
        across fork). True if there was one (the index must then be rebuilt)."""
        if self.idx.db is None:
            return False
        self.stale_dbs.append(self.idx.db)
        self.idx.db = None
        return True

    # -- reading ---------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return type(key) is str and self.idx.get(key) is not None

    def latest_parts(self, fd: int, name: str) -> dict[str, str] | None:
        """The ``parts`` of the newest task entry named ``name`` (what
        its key was computed from, as short fingerprints), or None if that entry
        has none (written by flowing 0.2.0, or no entry)."""
        where = self.idx.parts_at(name)
        if where is None:
            return None
        off, vstart = where
        try:
            head = os.pread(fd, vstart, off)
            parts = json.loads(b"{" + head[_HEAD:vstart - len(_VALUE_TAG)] + b"}").get("parts")
        except Exception:  # noqa: BLE001 - only used to word a reason
            return None
        if type(parts) is not dict:
            return None
        return {str(k): str(v) for k, v in parts.items()}

    def peek(self, key: str) -> tuple[float, str | None, str | None] | None:
        """(t, digest, inputs) of the latest entry for ``key`` holding a value, without loading it.

        None if there is none, or if its value is a pickle this file may not
        load (see the trust rule; warned once).
        """
        where = self.idx.get(key)
        if where is None or (where[3] and not self.trusted()):
            return None
        return where[4], _unpack(where[5]), _unpack(where[6])

    def get(self, fd: int, key: str, lazy: bool = False) -> Hit | None:
        """The latest journaled value of ``key`` with its digests, or None if absent or unloadable.

        A value stored beside the journal is checked cheaply (present, trusted,
        right size); with ``lazy`` it is not read: ``Hit.value`` is then a
        ``StoredValue`` whose ``load()`` reads and verifies it. A value in the
        line is read now and checked against its recorded digest.
        """
        where = self.idx.get(key)
        if where is None:
            return None
        off, length, vstart, code, t, digest, inputs = where
        if code and not self.trusted():
            return None
        try:
            line = os.pread(fd, length, off)
            # The index is a cache: the line must be the one it describes.
            hdr, at, _problem = _check(line[:-1], None, None) if line[-1:] == b"\n" else (
                None, 0, None)
            if (hdr is None or hdr["key"] != key or at != vstart or _CODES.get(hdr["enc"]) != code
                    or hdr["digest"] != _unpack(digest) or hdr["inputs"] != _unpack(inputs)):
                raise ValueError("the journal changed under its index (it is rebuilt next time)")
            raw = line[vstart:length - 2]  # the value field, without '}' and newline
            if code == _FILE:
                ref = _stored_ref(raw)
                if ref is None:
                    raise ValueError("its reference to a stored value is malformed")
                why = valuestore.check(self.abspath, *ref)
                if why is not None:
                    raise valuestore.StoreError(why)
                stored = StoredValue(self, key, self.name_at(fd, off, vstart), ref[0], ref[1])
                value = stored if lazy else stored.load()
            else:
                if code == _PICKLE:
                    value = pickle.loads(base64.b64decode(raw[1:-1], validate=True))
                else:
                    value = json.loads(raw)
                d = _unpack(digest)
                if d is not None:
                    from ..keys.digest import value_digest  # lazy: only values read back are checked

                    if value_digest(value) != d:
                        raise ValueError("the value read does not match its recorded digest "
                                         "(the line was edited or damaged)")
        except Exception as e:  # noqa: BLE001 - any failure to load means "not journaled"
            if key not in self._warned_keys:
                self._warned_keys.add(key)
                self.logger.warning("journal %r: task %r: journaled result could not be loaded "
                                     "(%s); it will run again", self.path,
                                     self.name_at(fd, off, vstart), safe_str(e, 200))
            return None
        return Hit(value, _unpack(digest), inputs=_unpack(inputs), t=t)

    def trusted(self) -> bool:
        if self._trust is None:
            return True
        if not self._trust_warned:
            self._trust_warned = True
            self.logger.warning(
                "journal %r: pickled results are not loaded because %s, so anyone who can "
                "change it could run code in this process; those tasks will run again "
                "(JSON results are still used). Fix: chmod 600 %s (and make sure you own it)",
                self.path, self._trust, self.path)
        return False

    def name_at(self, fd: int, off: int, vstart: int) -> str:
        try:
            head = os.pread(fd, vstart, off)
            name = json.loads(b"{" + head[_HEAD:vstart - len(_VALUE_TAG)] + b"}")["name"]
            return name if type(name) is str else "?"
        except Exception:  # noqa: BLE001 - only used to word a warning
            return "?"
