"""The durable journal: an append-only JSONL file of finished steps.

Every task that succeeds (every ``for_each`` item, every manual override)
appends one line. A later run, in this process or a fresh one, opens the
journal, replays each task whose step key is in it and runs only the rest.

File format
-----------
UTF-8, one entry per line, each line a JSON object whose fields always come
in this order::

    {"v":1,"crc":"1a2b3c4d","key":"<step key>","kind":"task","name":"fetch",
     "deps":["<dep key>",...],"t":1763850000.123,"enc":"json","value":<value>}

(one line in the file; wrapped here). Fields:

``v``     format version; lines with another version are skipped with a warning.
``crc``   CRC-32 (8 lowercase hex digits) of every byte after ``"crc":"…",``
          up to and including the closing ``}`` (the newline excluded). It
          lets a reader reject a torn or damaged line without parsing its
          value.
``key``   the step key (sha256 hex, chained from the dependencies' keys).
``kind``  ``task`` | ``item`` (one ``for_each`` item, named ``task[i]``) |
          ``override`` (a value set by hand).
``name``  the task name, for people and for ``flowing journal forget``.
``deps``  the step keys this entry was computed from, so the journal alone
          knows what is downstream of what.
``t``     wall-clock time of the write (seconds since the epoch).
``enc``   ``json``: ``value`` is the result itself, readable in the file;
          used only when the result is plain JSON that round-trips exactly
          (dict with str keys, list, str, int, finite float, bool, None; no
          tuples, no subclasses).
          ``pickle``: ``value`` is a base64 string of a pickle (protocol 5).
``value`` always the last field, so a reader finds where the header ends
          by searching for ``,"value":`` (that byte sequence cannot occur
          earlier: a quote inside a JSON string is escaped).

A key may appear several times; the latest valid line wins. Blank lines are
ignored; any other line that fails these checks is skipped with one warning
(past 20 such lines, the rest are counted in one summary warning). Opening
reads the file once, in 1 MiB pieces, checks each line's checksum and parses
only its header: the index keeps (offset, length) per key, never values;
``lookup`` reads the one line it needs.

Locking
-------
Writers append with ONE ``os.write`` on an ``O_APPEND`` descriptor while
holding an exclusive ``fcntl.flock`` on the file, so lines from different
processes never interleave; a ``threading.Lock`` does the same for threads
of one process (flock does not exclude threads sharing a descriptor).
Readers that build an index hold a shared flock while scanning so they never
see a line half-copied by a concurrent writer. ``flowing journal forget`` and
``compact`` hold the exclusive flock while they write a new file next to the
journal and ``os.replace`` it in; a writer that then gets the lock notices
the path now names another inode, reopens it and re-indexes before writing.
``fsync`` runs after both locks are released, and writers that finished
their append while another thread was in ``fsync`` share the next one (group
commit). A forked child reopens the file on its first ``record``: it would
otherwise share the parent's open file description and so its flock.

Crash safety
------------
The file is only ever appended to (rewrites go to a new file that is fsynced
before it atomically replaces the old one, and the directory is fsynced
after). ``record`` returns only after ``fsync``, so a returned entry survives
a crash or power cut. A crash can therefore damage only lines whose write or
fsync had not finished: the entries being written at that moment. Such a
line is incomplete, has no newline or fails its checksum, so readers skip it
(one warning) and its task simply re-runs; the lines before it were
complete and are never touched again. The next writer cuts an incomplete
tail off before appending (it holds the exclusive lock, so no live writer
can be in the middle of that line), so a new line never gets glued to it.

Pickle trust rule
-----------------
Unpickling runs code chosen by whoever wrote the bytes. Pickled values are
therefore loaded only if the journal file is owned by the current user and
is not writable by group or others (``chmod 600 PATH``). Otherwise one
warning explains why, pickled entries are treated as absent (those tasks
re-run) and JSON entries are still used. New journals are created 0600.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import errno
import fcntl
import json
import logging
import math
import os
import pickle
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Journal", "JournalError", "Entry", "iter_entries", "forget", "compact",
           "ForgetResult", "CompactResult", "KINDS", "FORMAT_VERSION"]

FORMAT_VERSION = 1
KINDS = frozenset({"task", "item", "override"})

_PREFIX = b'{"v":1,"crc":"'        # every current-version line starts with this
_HEAD = len(_PREFIX) + 10           # prefix + 8 hex digits + '",' : the checksum covers the rest
_VALUE_TAG = b',"value":'
_CHUNK = 1 << 20                    # read size when scanning
_HEAD_MAX = 4 << 20                 # longer lines are checksummed while streaming, not held whole
_MAX_LINE_WARNINGS = 20             # past this, skipped lines are summarised in one warning
_PICKLE_PROTOCOL = 5                # readable by every supported Python (>= 3.8)
_PREVIEW_BYTES = 256


class JournalError(Exception):
    """The journal cannot be used; the message names the path and the fix."""


# ---------------------------------------------------------------- encoding

def _is_plain_json(v: Any) -> bool:
    """True if json.loads(json.dumps(v)) gives back an equal value of the same types."""
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return True
    if t is float:
        return math.isfinite(v)
    if t is list:
        return all(_is_plain_json(x) for x in v)
    if t is dict:
        return all(type(k) is str and _is_plain_json(x) for k, x in v.items())
    return False


def _encode_value(value: Any) -> tuple[str, str]:
    """Return (enc, JSON text of the value field). Raises if it cannot be stored."""
    try:
        if _is_plain_json(value):
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: keep them as \\u escapes
                text = json.dumps(value, separators=(",", ":"), allow_nan=False)
            return "json", text
    except (RecursionError, ValueError):
        # Too deep for json, or an int too long for str(): fall through to pickle.
        pass
    data = pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    return "pickle", '"' + base64.b64encode(data).decode("ascii") + '"'


def _make_line(key: str, kind: str, name: str, deps: list[str], t: float,
               enc: str, value_text: str) -> bytes:
    rest = ('"key":' + json.dumps(key) + ',"kind":"' + kind + '","name":' + json.dumps(name)
            + ',"deps":' + json.dumps(deps, separators=(",", ":")) + ',"t":' + ("%.3f" % t)
            + ',"enc":"' + enc + '","value":' + value_text + "}").encode("utf-8")
    return b'%s%08x",%s\n' % (_PREFIX, binascii.crc32(rest), rest)


# ----------------------------------------------------------------- reading

def _classify(head: bytes) -> str:
    m = re.match(rb'\{\s*"v"\s*:\s*(-?\d+)', head)
    if m and int(m.group(1)) != FORMAT_VERSION:
        return (f"entry format version {int(m.group(1))} is not supported (this flowing reads "
                f"version {FORMAT_VERSION}); it was written by another flowing version")
    return "corrupt line (not a journal entry)"


def _check(head, crc_rest: int | None, last: int | None) -> tuple[dict | None, int, str | None]:
    """Validate one complete line (without its newline).

    ``head`` is the whole line, or for a streamed long line its first
    _HEAD_MAX bytes together with ``crc_rest`` (checksum of bytes _HEAD.. end)
    and ``last`` (its final byte). Returns (header, value start, None) or
    (None, 0, reason).
    """
    if not head.startswith(_PREFIX) or head[_HEAD - 2:_HEAD] != b'",':
        return None, 0, _classify(bytes(head[:64]))
    try:
        want = int(head[len(_PREFIX):_HEAD - 2], 16)
    except ValueError:
        return None, 0, "corrupt line (bad checksum field)"
    if crc_rest is None:
        last = head[-1]
        crc_rest = binascii.crc32(memoryview(head)[_HEAD:])
    if crc_rest != want or last != 0x7D:  # 0x7D == '}'
        return None, 0, "corrupt line (checksum mismatch: damaged or partly written)"
    i = head.find(_VALUE_TAG, _HEAD)
    if i < 0:
        return None, 0, "corrupt line (no value field)"
    try:
        hdr = json.loads(b"{" + head[_HEAD:i] + b"}")
    except ValueError:
        return None, 0, "corrupt line (unreadable header)"
    kind = hdr.get("kind")
    if kind not in KINDS:
        return None, 0, f"unknown entry kind {kind!r} (written by another flowing version?)"
    key, deps = hdr.get("key"), hdr.get("deps")
    if (type(key) is not str or not key or type(hdr.get("name")) is not str
            or type(deps) is not list or not all(type(d) is str for d in deps)
            or type(hdr.get("t")) not in (int, float)):
        return None, 0, "corrupt line (bad header fields)"
    if hdr.get("enc") not in ("json", "pickle", "none"):
        return None, 0, f"unknown value encoding {hdr.get('enc')!r} (written by another flowing version?)"
    return hdr, i + len(_VALUE_TAG), None


# One scanned line: (line number, byte offset, byte length incl. newline,
# header or None, value start offset within the line, head bytes, problem or None)
_Scanned = tuple[int, int, int, "dict | None", int, bytes, "str | None"]


def _scan(fd: int, end: int | None = None) -> Iterator[_Scanned]:
    """Yield every non-blank line of the file in order, validated.

    Reads with pread (the descriptor's offset is shared and untouched) in
    _CHUNK pieces; a line longer than _HEAD_MAX is checksummed while streaming
    so memory stays bounded whatever the file holds.
    """
    pos = 0            # file offset of the next read
    line_off = 0       # file offset where the current line starts
    lineno = 0
    part: bytearray | None = None   # head of a line that spans chunks
    part_len = 0       # bytes of that line seen so far
    crc: int | None = None          # running checksum once the line outgrew _HEAD_MAX
    last = None

    def finish(complete: bool) -> _Scanned:
        if not complete:
            return (lineno, line_off, part_len, None, 0, bytes(part[:_PREVIEW_BYTES]),
                    "torn write (the last line is incomplete: the process writing it "
                    "probably died mid-write)")
        hdr, vstart, problem = _check(part, crc, last if crc is not None else None)
        return lineno, line_off, part_len + 1, hdr, vstart, bytes(part[:vstart + _PREVIEW_BYTES]), problem

    while True:
        want = _CHUNK if end is None else min(_CHUNK, end - pos)
        if want <= 0:
            break
        chunk = os.pread(fd, want, pos)
        if not chunk:
            break
        pos += len(chunk)
        i = 0
        if part is not None:
            j = chunk.find(b"\n")
            piece = memoryview(chunk)[:j if j >= 0 else len(chunk)]
            if piece:
                part_len += len(piece)
                last = piece[-1]
                if crc is None and len(part) + len(piece) <= _HEAD_MAX:
                    part += piece
                else:
                    if crc is None:
                        room = _HEAD_MAX - len(part)
                        part += piece[:room]
                        piece = piece[room:]
                        crc = binascii.crc32(memoryview(part)[_HEAD:])
                    crc = binascii.crc32(piece, crc)
            if j < 0:
                continue
            lineno += 1
            if part_len and not part.isspace():
                yield finish(True)
            line_off += part_len + 1
            part, crc, i = None, None, j + 1
        find = chunk.find
        while True:
            j = find(b"\n", i)
            if j < 0:
                break
            lineno += 1
            line = chunk[i:j]
            if line and not line.isspace():
                hdr, vstart, problem = _check(line, None, None)
                yield lineno, line_off, j + 1 - i, hdr, vstart, line, problem
            line_off += j + 1 - i
            i = j + 1
        if i < len(chunk):  # a line continues in the next chunk (_CHUNK < _HEAD_MAX)
            part = bytearray(chunk[i:])
            part_len = len(chunk) - i
            last = chunk[-1]
            crc = None
    if part is not None and not part.isspace():
        lineno += 1
        yield finish(False)


class _Warner:
    """Emits one warning per skipped line, then a single summary past a cap."""

    def __init__(self, logger: logging.Logger, path: str):
        self.logger, self.path, self.count = logger, path, 0

    def skip(self, lineno: int, offset: int, problem: str) -> None:
        self.count += 1
        if self.count <= _MAX_LINE_WARNINGS:
            self.logger.warning("journal %r: line %d (byte %d) skipped: %s; its task will run again",
                                self.path, lineno, offset, problem)

    def done(self) -> None:
        if self.count > _MAX_LINE_WARNINGS:
            self.logger.warning("journal %r: %d more unreadable lines skipped (%d in all); "
                                "`flowing journal compact %s` drops them",
                                self.path, self.count - _MAX_LINE_WARNINGS, self.count, self.path)


@dataclass(frozen=True, slots=True)
class Entry:
    """One valid journal line, as shown by ``flowing journal show``."""

    key: str
    name: str
    kind: str
    dep_keys: tuple[str, ...]
    time: float
    size: int          # bytes the line takes in the file, newline included
    enc: str           # "json" or "pickle"
    preview: str       # single-line start of the value (JSON text, or "<pickle, N B>")
    offset: int        # byte offset of the line in the file
    line: int          # 1-based line number

    @property
    def task(self) -> str:
        """The task an entry belongs to: ``fetch`` for ``fetch`` and for item ``fetch[3]``."""
        return _base_name(self.name) if self.kind == "item" else self.name


def _base_name(name: str) -> str:
    if name.endswith("]"):
        i = name.rfind("[")
        if i > 0:
            return name[:i]
    return name


def _human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _preview(head: bytes, vstart: int, length: int, enc: str, width: int = 60) -> str:
    vend = length - 2  # strip '}' and newline
    if enc == "none":
        return "<value not stored>"
    if enc == "pickle":
        n = max(0, vend - vstart - 2) * 3 // 4
        return f"<pickle, {_human_size(n)}>"
    text = head[vstart:min(vend, vstart + _PREVIEW_BYTES)].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    truncated = vend - vstart > _PREVIEW_BYTES
    if len(text) > width or truncated:
        text = text[:width - 3] + "..."
    return text


def _entry(s: _Scanned) -> Entry:
    lineno, off, length, hdr, vstart, head, _ = s
    return Entry(key=hdr["key"], name=hdr["name"], kind=hdr["kind"], dep_keys=tuple(hdr["deps"]),
                 time=float(hdr["t"]), size=length, enc=hdr["enc"],
                 preview=_preview(head, vstart, length, hdr["enc"]), offset=off, line=lineno)


def _iter_fd_entries(fd: int, path: str, logger: logging.Logger, end: int | None) -> Iterator[Entry]:
    warner = _Warner(logger, path)
    for s in _scan(fd, end):
        if s[6] is not None:
            warner.skip(s[0], s[1], s[6])
        else:
            yield _entry(s)
    warner.done()


def iter_entries(path, logger: logging.Logger) -> Iterator[Entry]:
    """Every valid entry of the journal at ``path`` in file order (read-only; never creates it)."""
    shown = os.fspath(path)
    fd = _open_existing(shown, os.O_RDONLY)
    try:
        # Snapshot the end under a shared lock: bytes before it are whole lines
        # (writers hold the exclusive lock for their whole write).
        fcntl.flock(fd, fcntl.LOCK_SH)
        end = os.fstat(fd).st_size
        fcntl.flock(fd, fcntl.LOCK_UN)
        yield from _iter_fd_entries(fd, shown, logger, end)
    finally:
        os.close(fd)


# ------------------------------------------------------------ open helpers

def _open_error(path: str, e: OSError, creating: bool) -> JournalError:
    d = os.path.dirname(path) or "."
    if isinstance(e, FileNotFoundError):
        if not os.path.isdir(d):
            return JournalError(f"journal {path!r}: directory {d!r} does not exist; "
                                f"create it or choose another journal_path")
        return JournalError(f"journal {path!r} does not exist; check the path")
    if isinstance(e, IsADirectoryError):
        return JournalError(f"journal {path!r} is a directory; journal_path must name a file "
                            f"inside it, e.g. {os.path.join(path, 'run.jsonl')!r}")
    if isinstance(e, NotADirectoryError):
        return JournalError(f"journal {path!r}: {d!r} is not a directory; choose another journal_path")
    if isinstance(e, PermissionError):
        what = "read and written" if creating else "read"
        return JournalError(f"journal {path!r} cannot be {what} ({e.strerror}); fix the permissions "
                            f"of the file or of {d!r}, or choose another journal_path")
    return JournalError(f"journal {path!r} cannot be opened ({e.strerror or e}); "
                        f"choose another journal_path")


def _open_existing(path: str, flags: int) -> int:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise _open_error(path, e, creating=False) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise JournalError(f"journal {path!r} is {what}; give the path of a journal file")
    return fd


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    """True if ``path`` still names the file open on ``fd`` (not replaced or removed)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _trust_problem(st: os.stat_result) -> str | None:
    """Why pickles in a file with this stat must not be loaded, or None if they may be."""
    me = os.geteuid()
    if st.st_uid != me:
        return f"the file is owned by uid {st.st_uid}, not by you (uid {me})"
    if st.st_mode & 0o022:
        return f"the file is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


# ------------------------------------------------------------------ Journal

class Journal:
    """An open journal: an index of the file plus an appender. See the module docstring.

    ``record`` may be called from many threads at once and from many
    processes on the same file; ``lookup`` and ``__contains__`` from any
    thread. ``close`` must not race with them.
    """

    def __init__(self, path: str, fd: int, logger: logging.Logger):
        self.path = path
        self._abspath = os.path.abspath(path)
        self._fd = fd
        self._logger = logger
        # key -> (offset, length, value start in line, pickled?) of the latest valid entry.
        self._index: dict[str, tuple[int, int, int, bool]] = {}
        self._old_fds: list[int] = []      # replaced descriptors: an fsync may still use them
        self._pid = os.getpid()
        # Serialises appends among this process's threads (flock can't: threads share the descriptor).
        self._lock = threading.Lock()
        # Guards the group-commit state below and wakes writers waiting for an fsync.
        self._sync_cond = threading.Condition(threading.Lock())
        self._written = 0                  # appends done (sequence numbers handed out under _lock)
        self._synced = 0                   # every append <= this has been fsynced
        self._syncing = False              # one thread is in fsync; others wait for it
        self._known_end = -1               # size after our last append: unchanged -> no tail check
        self._disabled: str | None = None  # set after a write error: later records are no-ops
        self._closed = False
        self._trust: str | None = None     # why pickles are refused, or None
        self._trust_warned = False
        self._warned_keys: set[str] = set()

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(cls, path, logger: logging.Logger) -> Journal:
        """Open (creating with mode 0600 if missing) and index the journal.

        Raises JournalError, naming the path and the fix, if it can't be used.
        """
        path = os.fspath(path)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        created = False
        try:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(path, flags)
        except OSError as e:
            raise _open_error(path, e, creating=True) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise JournalError(f"journal {path!r} is not a regular file; choose another journal_path")
            if created:
                _fsync_dir(path)  # make the new file's name durable too
            self = cls(path, fd, logger)
        except BaseException:
            os.close(fd)
            raise
        try:
            self._lock_shared_current()
            try:
                self._load()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(self._fd)
            raise
        return self

    def _lock_shared_current(self) -> None:
        """Take a shared flock on a descriptor that still names the path.

        The shared lock keeps writers out so the scan never meets a half-written
        line; the loop follows a rewrite that replaced the file before we locked it.
        """
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            if _same_file(self._fd, self._abspath):
                return
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            try:
                new = os.open(self._abspath, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except OSError as e:
                raise _open_error(self.path, e, creating=False) from None
            os.close(self._fd)
            self._fd = new

    def _load(self) -> None:
        """(Re)build the index; the caller holds a flock on a verified descriptor."""
        st = os.fstat(self._fd)
        self._trust = _trust_problem(st)
        index: dict[str, tuple[int, int, int, bool]] = {}
        warner = _Warner(self._logger, self.path)
        for lineno, off, length, hdr, vstart, _head, problem in _scan(self._fd, st.st_size):
            if problem is not None:
                warner.skip(lineno, off, problem)
            elif hdr["enc"] != "none":  # a marker without a value never replays
                index[hdr["key"]] = (off, length, vstart, hdr["enc"] == "pickle")
        warner.done()
        self._index = index

    # -- reading ---------------------------------------------------------

    def __contains__(self, key) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, key: str) -> tuple[bool, Any]:
        """(True, value) if ``key`` is journaled and its value loads, else (False, None)."""
        where = self._index.get(key)
        if where is None or self._closed:
            return False, None
        off, length, vstart, pickled = where
        if pickled and self._trust is not None:
            if not self._trust_warned:
                self._trust_warned = True
                self._logger.warning(
                    "journal %r: pickled results are not loaded because %s, so anyone who can "
                    "change it could run code in this process; those tasks will run again "
                    "(JSON results are still used). Fix: chmod 600 %s (and make sure you own it)",
                    self.path, self._trust, self.path)
            return False, None
        try:
            line = os.pread(self._fd, length, off)
            raw = line[vstart:length - 2]  # the value field, without '}' and newline
            if pickled:
                return True, pickle.loads(base64.b64decode(raw[1:-1], validate=True))
            return True, json.loads(raw)
        except Exception as e:  # noqa: BLE001 - any failure to load means "not journaled"
            if key not in self._warned_keys:
                self._warned_keys.add(key)
                self._logger.warning("journal %r: task %r: journaled result could not be loaded "
                                     "(%s: %s); it will run again",
                                     self.path, self._name_at(off, length, vstart), type(e).__name__, e)
            return False, None

    def _name_at(self, off: int, length: int, vstart: int) -> str:
        try:
            head = os.pread(self._fd, vstart, off)
            return json.loads(b"{" + head[_HEAD:vstart - len(_VALUE_TAG)] + b"}")["name"]
        except Exception:  # noqa: BLE001 - only used to word a warning
            return "?"

    def entries(self) -> Iterator[Entry]:
        """Every valid entry of the file in file order (duplicates included)."""
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_SH)
        end = os.fstat(fd).st_size
        fcntl.flock(fd, fcntl.LOCK_UN)
        return _iter_fd_entries(fd, self.path, self._logger, end)

    # -- writing ---------------------------------------------------------

    def record(self, key: str, name: str, dep_keys: list[str], value: Any, kind: str = "task") -> bool:
        """Append one entry and fsync it. True if it was written.

        Never raises for runtime problems: an unstorable value or a write
        error gives one warning and False. Passing an unknown ``kind`` or a
        non-str key is a programming error and raises ValueError/TypeError.
        """
        if kind not in KINDS:
            raise ValueError(f"journal entry kind must be one of {sorted(KINDS)}, not {kind!r}")
        if type(key) is not str or not key:
            raise TypeError(f"journal key must be a non-empty str, not {key!r}")
        if self._disabled is not None or self._closed:
            return False
        if self._pid != os.getpid():
            self._after_fork()
        stored = True
        try:
            enc, text = _encode_value(value)
        except Exception as e:  # noqa: BLE001 - any pickling failure means "can't store"
            self._logger.warning("task %r: result not journaled (%s: %s); it will run again next time",
                                 name, type(e).__name__, e)
            # Still write a value-less marker: it never replays, but it keeps the
            # chain of dependency keys whole, so ``journal forget`` can reach past it.
            stored, enc, text = False, "none", "null"
        line = _make_line(key, kind, str(name), [str(d) for d in dep_keys], time.time(), enc, text)
        vstart = line.find(_VALUE_TAG, _HEAD) + len(_VALUE_TAG)
        with self._lock:
            if self._disabled is not None or self._closed:
                return False
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    if not _same_file(self._fd, self._abspath):
                        self._reopen()
                    off = self._append(line)
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError as e:
                self._disable(e)
                return False
            if stored:
                self._index[key] = (off, len(line), vstart, enc == "pickle")
            self._written += 1
            seq = self._written
        return self._sync(seq) and stored

    def _append(self, line: bytes) -> int:
        """Write ``line`` at the end (exclusive flock held); return its offset."""
        fd = self._fd
        size = os.fstat(fd).st_size
        if size != self._known_end and size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            # A writer died mid-line. Only whole lines are written under this lock,
            # so the bytes after the last newline can never be completed: drop them
            # rather than glue our line onto them.
            size = self._last_newline_end(size)
            os.ftruncate(fd, size)
        n = os.write(fd, line)
        while n < len(line):  # short write (e.g. huge line, disk nearly full): finish it under the lock
            w = os.write(fd, memoryview(line)[n:])
            if w <= 0:
                raise OSError(errno.EIO, "short write to journal")
            n += w
        self._known_end = size + len(line)
        return size

    def _last_newline_end(self, size: int) -> int:
        pos = size
        while pos > 0:
            start = max(0, pos - _CHUNK)
            buf = os.pread(self._fd, pos - start, start)
            j = buf.rfind(b"\n")
            if j >= 0:
                return start + j + 1
            pos = start
        return 0

    def _reopen(self) -> None:
        """The path was replaced (forget/compact) or removed: follow it and re-index.

        Called with _lock and the exclusive flock held on the current fd; returns
        with the exclusive flock held on the new one. Raises OSError if the file is gone.
        """
        while True:
            try:
                new = os.open(self._abspath, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                raise OSError(errno.ENOENT, "the journal file was removed or renamed") from None
            fcntl.flock(new, fcntl.LOCK_EX)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._old_fds.append(self._fd)
            self._fd = new
            if _same_file(new, self._abspath):
                break
        self._known_end = -1
        self._load()
        self._logger.info("journal %r was rewritten by another process; re-read it", self.path)

    def _after_fork(self) -> None:
        # A forked child shares the parent's open file description, and with it the
        # flock: give the child its own so the lock excludes parent and child. The
        # thread locks may have been held by a parent thread at fork time: renew them.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._sync_cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._known_end = -1
        try:
            before = os.fstat(self._fd)
            fd = os.open(self._abspath, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            self._old_fds.append(self._fd)
            self._fd = fd
            self._lock_shared_current()
            try:
                now = os.fstat(self._fd)
                if (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev):
                    self._load()  # the file was rewritten meanwhile: offsets changed
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except (OSError, JournalError) as e:
            self._disable(e if isinstance(e, OSError) else OSError(str(e)))

    def _sync(self, seq: int) -> bool:
        """fsync until append ``seq`` is durable; concurrent callers share one fsync."""
        cond = self._sync_cond
        with cond:
            while self._synced < seq:
                if self._disabled is not None:
                    return False
                if not self._syncing:
                    self._syncing = True
                    break
                cond.wait()
            else:
                return True
        # Every append numbered <= target finished its write before this read.
        target = self._written
        ok = False
        try:
            os.fsync(self._fd)
            ok = True
        except OSError as e:
            self._disable(e)
        finally:
            with cond:
                if ok:
                    self._synced = max(self._synced, target)
                self._syncing = False
                cond.notify_all()
        return ok

    def _disable(self, e: OSError) -> None:
        with self._sync_cond:
            if self._disabled is not None:
                return
            self._disabled = f"{type(e).__name__}: {e}"
        self._logger.warning("journal %r disabled for the rest of this run: %s; finished results "
                             "are kept in memory", self.path, self._disabled)

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Wait for pending fsyncs, then release the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            with self._sync_cond:
                while self._syncing:
                    self._sync_cond.wait()
                self._closed = True
            for fd in [self._fd, *self._old_fds]:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._old_fds.clear()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({self.path!r}, {len(self._index)} keys{', closed' if self._closed else ''})"


# ---------------------------------------------------------------- rewrites

@dataclass(frozen=True, slots=True)
class CompactResult:
    lines_before: int      # non-blank lines, unreadable ones included
    bytes_before: int
    entries_after: int
    bytes_after: int
    unreadable: int        # lines dropped because they could not be read


@dataclass(frozen=True, slots=True)
class ForgetResult:
    requested: dict[str, list[Entry]]   # task name asked for -> its removed entries
    downstream: dict[str, list[Entry]]  # other task -> removed entries (they used a forgotten result)
    removed: int                        # lines removed (all versions of every forgotten key)
    kept: int                           # entries left in the file


class _Exclusive:
    """The journal file opened and exclusively flocked, following any replacement."""

    def __init__(self, path: str):
        self.path = path
        self.real = os.path.realpath(path)
        self.fd = -1

    def __enter__(self) -> _Exclusive:
        while True:
            fd = _open_existing(self.path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, self.real):
                self.fd = fd
                return self
            os.close(fd)  # replaced while we waited: lock the new file instead

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the flock

    def replace_with(self, spans: list[tuple[int, int]]) -> int:
        """Atomically replace the file by the byte ranges ``spans`` of the current one."""
        d = os.path.dirname(self.real)
        tfd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(self.real) + ".", suffix=".tmp")
        try:
            st = os.fstat(self.fd)
            if st.st_uid != os.geteuid() or st.st_gid != os.getegid():
                try:  # keep the owner so its user can still write (and trust) the journal
                    os.fchown(tfd, st.st_uid, st.st_gid)
                except OSError:
                    pass
            total = 0
            with os.fdopen(tfd, "wb", buffering=_CHUNK) as out:
                for off, length in spans:
                    while length > 0:
                        buf = os.pread(self.fd, min(length, _CHUNK), off)
                        if not buf:
                            raise OSError(errno.EIO, f"journal {self.path!r} shrank while being rewritten")
                        out.write(buf)
                        off += len(buf)
                        length -= len(buf)
                        total += len(buf)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.real)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.real)
        return total


def _scan_all(ex: _Exclusive, logger: logging.Logger) -> tuple[list[Entry], int, int]:
    """Valid entries in file order, the count of unreadable lines, the file size."""
    entries: list[Entry] = []
    warner = _Warner(logger, ex.path)
    size = os.fstat(ex.fd).st_size
    for s in _scan(ex.fd, size):
        if s[6] is not None:
            warner.skip(s[0], s[1], s[6])
        else:
            entries.append(_entry(s))
    warner.done()
    return entries, warner.count, size


def compact(path, logger: logging.Logger) -> CompactResult:
    """Atomically rewrite the journal keeping only the latest valid entry per key."""
    path = os.fspath(path)
    with _Exclusive(path) as ex:
        entries, bad, size = _scan_all(ex, logger)
        latest = {e.key: e for e in entries}
        keep = sorted((e.offset, e.size) for e in latest.values())
        after = ex.replace_with(keep)
    return CompactResult(lines_before=len(entries) + bad, bytes_before=size,
                         entries_after=len(keep), bytes_after=after, unreadable=bad)


def forget(path, tasks: list[str], logger: logging.Logger) -> ForgetResult:
    """Atomically remove the named tasks (with their items) and everything downstream.

    A name matches entries named exactly so and, for ``for_each`` tasks, its
    items ``name[i]``. Every entry that lists a removed key among its
    dependencies is removed too, transitively. Unreadable lines are dropped.
    Raises JournalError (with close matches) if a name matches nothing.
    """
    path = os.fspath(path)
    with _Exclusive(path) as ex:
        entries, _bad, _size = _scan_all(ex, logger)
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
        gone = set(seeds)
        todo = list(seeds)
        while todo:
            for k in users.get(todo.pop(), ()):
                if k not in gone:
                    gone.add(k)
                    todo.append(k)
        downstream: dict[str, list[Entry]] = {}
        keep: list[tuple[int, int]] = []
        for e in entries:
            if e.key in seeds:
                requested[seeds[e.key]].append(e)
            elif e.key in gone:
                downstream.setdefault(e.task, []).append(e)
            else:
                keep.append((e.offset, e.size))
        ex.replace_with(keep)
    removed = sum(map(len, requested.values())) + sum(map(len, downstream.values()))
    return ForgetResult(requested=requested, downstream=downstream, removed=removed, kept=len(keep))
