"""The journal's index: what ``Journal`` looks up by key, persisted so opening is cheap.

Policy
------
The JSONL journal is the source of truth; the index is a cache of it. It
maps each step key to where its latest line holding a value is (offset,
length, value start, how the value is held, time, digests), and keeps the
task names and where each task's newest ``parts`` are. Lookups go to an
in-memory overlay first (lines scanned or written by this process), then to
a SQLite database beside the journal, ``<journal>.values/index.sqlite3``,
that covers the file up to byte ``covered``.

Opening (``Reader.load``, flowing.journal.reader) reads the database's ``meta`` row; if it names
this file (device and inode), ``covered`` is within the file, the 256 bytes
before ``covered`` still have the recorded CRC and a file of exactly
``covered`` bytes still has the recorded mtime (else it was changed in
place), only the lines past ``covered`` are scanned, then written to the
database in one transaction. Journals under 1 MiB get no database unless
they have one: scanning them is as cheap.
Otherwise (missing, stale, damaged, not ours, or ``sqlite3`` unavailable)
the whole file is scanned as before and the database rebuilt; when it cannot
be written, the index simply stays in memory.

Why SQLite: indexed lookups without loading anything, atomic transactions
and crash safety (a killed writer leaves the old index or the new one) come
with the standard library; a hand-made index would need its own format,
atomic replacement and damage checks, and a lazy scan still reads every byte
before the first lookup. The database is opened only when the folder and
the file are owned by the current user, not writable by group or others and
not symbolic links. Even so it is never trusted for values: ``Journal.get``
reads the line an index row points at and checks its checksum, its key and
its fields against the row (and the value against its digest), so a stale
or forged row can make a task run again, never replay a wrong value.
"""

from __future__ import annotations

import binascii
import os
import stat
import threading
from typing import Any

from ..journal import values as valuestore

try:
    import sqlite3
except ImportError:  # some Python builds lack it: the index stays in memory
    sqlite3 = None  # type: ignore[assignment]

DB_NAME = "index.sqlite3"
MIN_INDEXED = 1 << 20  # smaller journals are scanned whole (a few ms), no database
SCHEMA_VERSION = 4
# (``entries`` without a rowid: one b-tree per row inserted, not two)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "  version INTEGER, dev INTEGER, ino INTEGER, covered INTEGER, tail INTEGER, "
    "  mtime INTEGER, lines INTEGER);"
    "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, off INTEGER, "
    "  len INTEGER, vstart INTEGER, code INTEGER, t REAL, digest, inputs) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY);"
    "CREATE TABLE IF NOT EXISTS parts (name TEXT PRIMARY KEY, off INTEGER, "
    "  vstart INTEGER);")
_TAIL = 256   # bytes before ``covered`` whose CRC tells a rewritten file from an appended one

# (offset, length, value start, code, t, digest, inputs); digests packed as in flowing.journal.reader (_pack)
Where = tuple[int, int, int, int, float, "bytes | str | None", "bytes | str | None"]
_GONE: Any = object()


class _Damaged(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _tail_crc(fd: int, covered: int) -> int:
    start = max(0, covered - _TAIL)
    return binascii.crc32(os.pread(fd, covered - start, start))


class Index:
    """Key -> where, task names and parts positions: an overlay on an optional database."""

    def __init__(self) -> None:
        self.mem: dict[str, Any] = {}          # key -> Where, or _GONE (hides a database row)
        self.names: set[str] = set()
        self.parts: dict[str, tuple[int, int] | None] = {}  # None hides a database row
        self.db: Any = None
        self._lock = threading.Lock()
        # The database's answer for the key asked last (replay asks for one key a few
        # times in a row); only the database's, so the overlay above always wins.
        # Set and cleared under ``_lock`` with the database's writes.
        self._last: tuple[str, Where | None] | None = None

    # -- the overlay -------------------------------------------------------

    def put(self, key: str, where: Where) -> None:
        self.mem[key] = where

    def drop(self, key: str) -> None:
        if self.db is None:
            self.mem.pop(key, None)
        else:
            self.mem[key] = _GONE

    def set_parts(self, name: str, at: tuple[int, int] | None) -> None:
        if at is None and self.db is None:
            self.parts.pop(name, None)
        else:
            self.parts[name] = at

    # -- lookups -----------------------------------------------------------

    def get(self, key: str) -> Where | None:
        w = self.mem.get(key)
        if w is not None:
            return None if w is _GONE else w
        if self.db is None:
            return None
        with self._lock:
            last = self._last
            if last is not None and last[0] == key:
                return last[1]
            try:
                row = self.db.execute("SELECT off, len, vstart, code, t, digest, inputs "
                                      "FROM entries WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error:  # (changed under us by another flowing: not replayed)
                return None
            where: Where | None = None if row is None else (
                row[0], row[1], row[2], row[3], row[4], row[5], row[6])
            self._last = (key, where)
        return where

    def has_name(self, name: str) -> bool:
        if name in self.names:
            return True
        if self.db is None:
            return False
        with self._lock:
            return self.db.execute("SELECT 1 FROM names WHERE name = ?", (name,)).fetchone() is not None

    def parts_at(self, name: str) -> tuple[int, int] | None:
        if name in self.parts or self.db is None:
            return self.parts.get(name)
        with self._lock:
            row = self.db.execute("SELECT off, vstart FROM parts WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], row[1])

    def __len__(self) -> int:
        if self.db is None:
            return sum(w is not _GONE for w in self.mem.values())
        with self._lock:
            n = self.db.execute("SELECT count(*) FROM entries").fetchone()[0]
            for key, w in self.mem.items():
                there = self.db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone()
                n += (w is not _GONE) - (there is not None)
        return int(n)

    # -- the database ------------------------------------------------------

    def attach(self, journal_abspath: str, fd: int, st: os.stat_result) -> tuple[int, int]:
        """Open the database if it is usable for this file; return the byte it covers
        and the number of lines before it ((0, 0): scan everything and rebuild it).
        A journal smaller than MIN_INDEXED gets no database (scanning it is cheap)
        unless it has one already. A damaged database of ours is replaced. Never raises."""
        for _attempt in range(2):
            try:
                return self._attach(journal_abspath, fd, st)
            except _Damaged as e:
                try:
                    os.unlink(e.path)
                except OSError:
                    return 0, 0
        return 0, 0

    def _attach(self, journal_abspath: str, fd: int, st: os.stat_result) -> tuple[int, int]:
        self.close()
        if sqlite3 is None:
            return 0, 0
        path = os.path.join(valuestore.store_dir(journal_abspath), DB_NAME)
        try:
            if st.st_size < MIN_INDEXED and not os.path.lexists(path):
                return 0, 0
            if not os.path.lexists(os.path.dirname(path)):
                os.close(valuestore.make_dir(os.path.dirname(path), st))
            dst = os.lstat(os.path.dirname(path))
            if not stat.S_ISDIR(dst.st_mode) or valuestore.trust_problem(dst, "folder"):
                return 0, 0
            try:
                fst = os.lstat(path)
            except FileNotFoundError:
                fst = None
            if fst is not None and (not stat.S_ISREG(fst.st_mode)
                                    or valuestore.trust_problem(fst, "index")):
                return 0, 0
            db = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                 isolation_level=None)
        except (OSError, sqlite3.Error, valuestore.StoreError):
            return 0, 0
        try:
            if fst is None:
                os.chmod(path, stat.S_IMODE(st.st_mode) & 0o666)
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-32768")  # up to 32 MiB: a big save re-reads no page
            db.executescript(_SCHEMA)
            row = db.execute("SELECT version, dev, ino, covered, tail, mtime, lines "
                             "FROM meta").fetchone()
            if row is not None and row[0] != SCHEMA_VERSION:  # another version's tables
                db.executescript("BEGIN IMMEDIATE; DROP TABLE meta; DROP TABLE entries; "
                                 "DROP TABLE names; DROP TABLE parts;" + _SCHEMA + "COMMIT;")
                row = None
        except sqlite3.DatabaseError as e:
            db.close()
            if isinstance(e, sqlite3.OperationalError):  # (locked, read-only...): leave it
                return 0, 0
            raise _Damaged(path) from None
        except (OSError, sqlite3.Error):
            db.close()
            return 0, 0
        self.db = db
        if (row is None or row[0] != SCHEMA_VERSION or (row[1], row[2]) != (st.st_dev, st.st_ino)
                or not 0 < row[3] <= st.st_size
                or (row[3] == st.st_size and row[5] != st.st_mtime_ns)):  # changed in place
            return 0, 0
        try:
            if _tail_crc(fd, row[3]) != row[4]:
                return 0, 0
        except OSError:
            return 0, 0
        return int(row[3]), int(row[6])

    def save(self, fd: int, st: os.stat_result, covered: int, lines: int, rebuild: bool) -> None:
        """Write the overlay into the database as covering the file up to ``covered``
        (``rebuild``: replacing what it held), then empty the overlay. On any error
        the database is dropped and the overlay kept (the index stays in memory)."""
        db = self.db
        if db is None:
            return
        try:
            with self._lock:
                self._last = None
                db.execute("BEGIN IMMEDIATE")
                try:
                    if rebuild:
                        db.execute("DELETE FROM entries")
                        db.execute("DELETE FROM names")
                        db.execute("DELETE FROM parts")
                    gone = [(k,) for k, w in self.mem.items() if w is _GONE]
                    if gone:
                        db.executemany("DELETE FROM entries WHERE key = ?", gone)
                    db.executemany(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        ((k, *w) for k, w in self.mem.items() if w is not _GONE))
                    db.executemany("INSERT OR IGNORE INTO names VALUES (?)",
                                   ((n,) for n in self.names))
                    cleared = [(n,) for n, at in self.parts.items() if at is None]
                    if cleared:
                        db.executemany("DELETE FROM parts WHERE name = ?", cleared)
                    db.executemany("INSERT OR REPLACE INTO parts VALUES (?, ?, ?)",
                                   ((n, *at) for n, at in self.parts.items() if at is not None))
                    db.execute("INSERT OR REPLACE INTO meta VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                               (SCHEMA_VERSION, st.st_dev, st.st_ino, covered,
                                _tail_crc(fd, covered), st.st_mtime_ns, lines))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except (OSError, sqlite3.Error):
            self.close()
            return
        self.mem.clear()
        self.names.clear()
        self.parts.clear()

    def close(self) -> None:
        self._last = None
        if self.db is not None:
            try:
                self.db.close()
            except Exception:  # noqa: BLE001 - closing a cache
                pass
            self.db = None
