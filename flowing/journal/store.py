"""The durable journal: an append-only JSONL file of finished steps.

Every task that succeeds (every ``for_each`` item, every manual override)
appends one line. A later run, in this process or a fresh one, opens the
journal, replays each task whose step key is in it and runs only the rest.

File format
-----------
UTF-8, one JSON object per line. The first line is the header, written and
fsynced when the journal is created::

    {"format":"flowing-journal","version":2}

Every other line is one entry, whose fields always come in this order::

    {"v":2,"crc":"1a2b3c4d","key":"<step key>","kind":"task","name":"fetch",
     "deps":["<dep key>",...],"t":1763850000.123,"digest":"<hex>","inputs":null,
     "enc":"json","value":<value>}

(one line in the file; wrapped here). Fields:

``v``       entry version: 2 (written now) or 1 (written by flowing 0.1.0,
            which has no ``digest``/``inputs`` fields: they read as None).
            Lines of other versions are skipped with a warning.
``crc``     CRC-32 (8 lowercase hex digits) of every byte after ``"crc":"…",``
            up to and including the closing ``}`` (the newline excluded). It
            lets a reader reject a torn or damaged line without parsing its
            value.
``key``     the step key (sha256 hex, chained from the dependencies' keys).
``kind``    ``task`` | ``item`` (one ``for_each`` item, named ``task[i]``) |
            ``override`` (a value set by hand).
``name``    the task name, for people and for ``flowing journal forget``.
``deps``    the step keys this entry was computed from, so the journal alone
            knows what is downstream of what.
``t``       wall-clock time of the write (seconds since the epoch); a line
            whose ``t`` is not a finite number is skipped as corrupt.
``digest``  content digest of the value (hex), or null when unknown.
``inputs``  digest of the dependency values the entry was computed from, or
            null. With ``digest`` it lets a run replay an entry only when its
            dependencies still hold the same values (early cutoff).
``enc``     ``json``: ``value`` is the result itself, readable in the file;
            used only when the result is plain JSON that round-trips exactly
            (dict with str keys, list, str, int, finite float, bool, None; no
            tuples, no subclasses).
            ``pickle``: ``value`` is a base64 string of a pickle (protocol 5).
            ``file``: the value is stored beside the journal (see below);
            ``value`` is ``{"sha256":"<hex of the file's bytes>","size":N}``.
            ``none``: no value (``null``): a marker that never replays but
            keeps the chain of dependency keys whole for ``journal forget``.
            ``gone``: no value (``null``): the value of the entries before it
            under this key could not be loaded when it was needed (damaged
            or missing): they never replay again. Name, deps and digests are
            copied from the entry it retires.
``parts``   optional, before ``value`` (written since 0.3.0 for tasks and
            overrides): ``{"code:scale":"1a2b…",…}``, short fingerprints of
            what the key was computed from, so a later run can say what
            changed (``flowing.replay.why``). Never used to replay.
``value``   always the last field, so a reader finds where the header ends
            by searching for ``,"value":`` (that byte sequence cannot occur
            earlier: a quote inside a JSON string is escaped).

A key may appear several times; the latest valid line with a value wins
(a later ``gone`` line retires it).
Blank lines are ignored; any other line that fails these checks is skipped
with one warning (past 20 such lines, the rest are counted in one summary
warning). Opening reads the file in 1 MiB pieces, checks each line's checksum and
parses only its header: the index keeps offsets and a few small fields per
key (time, digests), never values; ``get`` reads the one line it needs and
checks it is the line the index describes. A journal over 1 MiB keeps its
index in SQLite beside it (flowing.journal.index), so a later open reads only
the lines appended since; the file stays the source of truth. At the end of
a run, ``checkpoint()`` writes held lines and saves the index when this
process knows every line of the file (no other writer appended meanwhile).

Values: in the line or beside it
--------------------------------
A value whose pickle (protocol 5, out-of-band buffers counted) is at most
``valuestore.THRESHOLD`` (64 KiB) stays in its line: as JSON when it is
plain JSON, else as a base64 pickle. A bigger one is written first to the
folder ``<journal>.values/`` as raw bytes (pickle protocol 5, out-of-band
buffers as they are; see flowing.journal.values for the file format, its
durability and its cleanup), and the line, written after the file is
durable, names it by the sha256 of its bytes.

A value read back is checked before it is used: a line value is decoded and
its content digest (``flowing.keys.digest.value_digest``) must equal the entry's
``digest`` (when one is recorded), so a value edited by hand, even with its
checksum fixed up, is not replayed; a stored file must have the size and
sha256 its line names. ``get(key, lazy=True)`` (what replay uses) checks a
stored file cheaply (present, trusted, right size) and returns a
``StoredValue`` that reads and verifies it on first use; if that fails, the
entry is retired with a ``gone`` line and ``ValueUnavailable`` (a
``JournalError``) names the task and says the next run computes it again.
``compact`` and ``forget`` remove the stored files no kept entry names.

Which files are journals (file safety)
--------------------------------------
SQLite is the model. It checks a magic header before touching a file and
answers "file is not a database" otherwise; it treats an empty file as a new
database; it can refuse to follow a symbolic link (``SQLITE_OPEN_NOFOLLOW``);
its side files get the database's permissions; and a side file left by a
crashed writer is dealt with by the next opener. flowing does the same:

- A file is a flowing journal when its first line is a whole header (any
  version this flowing knows), or a valid entry (a journal written by 0.1.0,
  which had no header). An empty file is a new journal. Anything else, a
  one-line file without a newline included (``{"format":"flowing-journal"``
  or a lone ``{``), is not ours. flowing never leaves a torn header: a new
  journal's header is written and fsynced in a temporary file first, which is
  then hard-linked to the path (failing, like ``O_EXCL``, if the path
  exists); an empty file gets its header the same way, by a rename over it.
  So a crash during creation leaves no file, or an empty one, or a whole
  header.
- flowing never appends to, compacts or rewrites any other non-empty file:
  it raises ``JournalError`` naming the path and the fix, and leaves the file
  byte-for-byte untouched (nor its mtime). A header of a newer format version
  is refused the same way. ``flowing journal show`` is read-only and lists
  the valid entries of a damaged journal, but refuses a file that holds none
  and does not start like a journal.
- The journal path is opened with ``O_NOFOLLOW``: a symbolic link there is
  refused (a link planted in a shared directory would otherwise redirect
  writes); so is anything but a regular file (a FIFO is opened non-blocking,
  then refused, so nothing hangs).
- ``compact`` and ``forget`` write the new file next to the journal as
  ``.NAME.<16 hex digits>.tmp``, with the journal's permission bits (and
  owner, where allowed), fsync it, rename it over the journal and fsync the
  directory. A temporary file of exactly that pattern, owned by the current
  user, can only be left by a rewrite that was killed: every rewrite holds
  the journal's exclusive lock while its temporary file exists, so the next
  opener or rewrite, once it holds the lock, removes such leftovers.
- 0.1.0 journals open, read and append as they are; a ``compact`` or
  ``forget`` writes the header (upgrading the file).

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
and re-indexes before writing. ``fsync`` runs after both locks are released,
and writers that finished their append while another thread was in ``fsync``
share the next one (group commit). ``for_each`` items go further: their
lines are held in memory (``record(durable=False)``) and written with one
``os.write`` and one fsync with the lines that follow, at the latest when
the held lines pass 1 MiB or 0.2 s, when ``flush()`` is called (the
scheduler does so before a ``for_each`` task completes, and at the end of a
run) or at ``close``. An item counts as acknowledged only once its task
completes (only then may dependents start or the run report it), so the
SPEC's "lose at most what is being written" holds. A forked child reopens the file on its
first ``record``: it would otherwise share the parent's open file description
and so its flock.

Crash safety
------------
The file is only ever appended to (rewrites go to a new file that is fsynced
before it atomically replaces the old one, and the directory is fsynced
after). ``record`` returns only after ``fsync`` (items: see group commit
above), so a returned entry survives a crash or power cut. A stored value's
file is durable (file and folder fsynced) before the line naming it is
written, so no line can name a torn file; a killed writer leaves at most a
temporary file in the folder, removed by the next opener. A crash can
therefore damage only lines whose write or fsync had not finished: the
entries being written at that moment. Such a line is incomplete, has no
newline or fails its checksum, so readers skip it (one warning) and its
task simply re-runs; the lines before it were complete and are never
touched again. The next writer cuts an incomplete
tail off before appending (it holds the exclusive lock, so no live writer
can be in the middle of that line), so a new line never gets glued to it.

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import JournalError, ValueUnavailable
from ..journal import index as journalindex
from ..journal import values as valuestore
from ..results import Deferred

__all__ = ["Journal", "JournalError", "ValueUnavailable", "StoredValue", "Hit", "Entry",
           "iter_entries", "forget", "compact", "human_size",
           "ForgetResult", "CompactResult", "KINDS", "FORMAT_NAME", "FORMAT_VERSION", "HEADER"]

FORMAT_NAME = "flowing-journal"
FORMAT_VERSION = 2                 # version of the file format and of the entries written
HEADER = b'{"format":"%s","version":%d}\n' % (FORMAT_NAME.encode(), FORMAT_VERSION)
KINDS = frozenset({"task", "item", "override"})

_PREFIX = b'{"v":2,"crc":"'        # every entry written now starts with this
_PREFIX_V1 = b'{"v":1,"crc":"'     # entries written by 0.1.0
_HEAD = len(_PREFIX) + 10           # prefix + 8 hex digits + '",' : the checksum covers the rest
_HEADER_START = b'{"format":"' + FORMAT_NAME.encode() + b'",'
_VALUE_TAG = b',"value":'
_CHUNK = 1 << 20                    # read size when scanning
_HEAD_MAX = 4 << 20                 # longer lines are checksummed while streaming, not held whole
_MAX_LINE_WARNINGS = 20             # past this, skipped lines are summarised in one warning
_PICKLE_PROTOCOL = 5                # readable by every supported Python (>= 3.8)
_PREVIEW_BYTES = 256
_PENDING_BYTES = 1 << 20            # group commit: held item lines are written past this size
_PENDING_S = 0.2                    # ... or once the oldest has waited this long (seconds)
_MAX_TIME = float(2 ** 53)          # |t| beyond this is not a time any writer produced
_ENCODINGS = frozenset({"json", "pickle", "none", "file", "gone"})
_JSON, _PICKLE, _FILE = 0, 1, 2     # how an indexed entry holds its value
_MISSING = object()
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Opened without following a symlink at the path, without blocking on a FIFO, and
# without ever becoming a controlling terminal; only regular files are then kept.
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_TORN = ("torn write (the last line is incomplete: the process writing it "
         "probably died mid-write)")



class _Unusable(OSError):
    """The open journal's path no longer names a journal we may write (message says why)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A journaled value, with what its entry says about where it came from."""

    value: Any
    digest: str | None     # content digest of value (as recorded), None if unknown
    inputs: str | None     # digest of the dependency values the entry was computed from
    t: float               # epoch seconds the entry was written



_UNLOADED: Any = object()


class StoredValue(Deferred):
    """A replayed value not read yet: ``load()`` reads and verifies it on first use.

    A failed load (file missing, damaged, not trusted) invalidates the entry
    in the journal and raises ``ValueUnavailable``; so does every later call.
    """

    __slots__ = ("_journal", "key", "name", "sha256", "size", "_lock", "_error", "_value")

    def __init__(self, journal: Journal, key: str, name: str, sha256: str, size: int) -> None:
        self._journal = journal
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
            j = self._journal
            try:
                if not j._trusted():
                    raise valuestore.StoreError(f"journal {j.path!r} is not trusted for pickles")
                self._value = valuestore.load(j._abspath, self.sha256, self.size)
                return self._value
            except (valuestore.StoreError, OSError, MemoryError) as e:
                why = _safe_text(e)
            try:
                j.invalidate(self.key)
            except OSError:
                pass
            self._error = ValueUnavailable(
                f"task {self.name!r}: its journaled value could not be loaded ({why}); journal "
                f"{j.path!r} no longer replays it, so the next run computes it again")
            j._logger.warning("%s", self._error)
            raise self._error

    def __repr__(self) -> str:
        return f"<journaled value of {self.name!r}, {human_size(self.size)}, not loaded>"


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


# A plain JSON value of at most _SMALL_JSON_NODES strings, numbers and containers whose
# JSON text has at most _SMALL_JSON characters pickles (protocol 5) to at most
# 4 * _SMALL_JSON + 8 * _SMALL_JSON_NODES + 64 bytes, far below valuestore.THRESHOLD.
_SMALL_JSON = 4096
_SMALL_JSON_NODES = 512


def _small_plain_json(v: Any, budget: int) -> int:
    """The node budget left after walking ``v`` if it is plain JSON (see
    ``_is_plain_json``) within ``budget`` nodes, else -1 (not plain, or too big)."""
    budget -= 1
    if budget < 0:
        return -1
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return budget
    if t is float:
        return budget if math.isfinite(v) else -1
    if t is list:
        if len(v) > budget:
            return -1
        for x in v:
            budget = _small_plain_json(x, budget)
            if budget < 0:
                return -1
        return budget
    if t is dict:
        if len(v) > budget:
            return -1
        for k, x in v.items():
            if type(k) is not str:
                return -1
            budget = _small_plain_json(x, budget - 1)
            if budget < 0:
                return -1
        return budget
    return -1


def _encode_value(value: Any) -> tuple[str, str, tuple[bytes, list[memoryview]] | None]:
    """(enc, JSON text of the value field, big pickle to store beside the journal or None).

    Raises if the value cannot be stored.

    A small plain-JSON value (the usual ``for_each`` item) is written as JSON
    without being pickled first: its pickle cannot reach the store's
    threshold (pickle spends at most about as many bytes per plain JSON value
    as its JSON text, plus a few per string and container, all counted in
    ``_SMALL_JSON``'s margin).
    """
    if _small_plain_json(value, _SMALL_JSON_NODES) >= 0:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (RecursionError, ValueError):
            text = ""
        if text and len(text) <= _SMALL_JSON:
            try:
                text.encode("utf-8")
                return "json", text, None
            except UnicodeEncodeError:  # lone surrogates: the general path below
                pass
    try:
        frame, bufs = valuestore.dumps(value)
    except RecursionError:  # too deep for pickle: plain JSON may still hold it
        frame, bufs = b"", []
    if frame and valuestore.pickled_size(frame, bufs) > valuestore.THRESHOLD:
        return "file", "", (frame, bufs)
    try:
        if _is_plain_json(value):
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: keep them as \\u escapes
                text = json.dumps(value, separators=(",", ":"), allow_nan=False)
            return "json", text, None
    except (RecursionError, ValueError):
        # Too deep for json, or an int too long for str(): fall through to pickle.
        pass
    if not frame or bufs:  # (a small value with out-of-band buffers: pickle it in-band)
        frame = pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    return "pickle", '"' + base64.b64encode(frame).decode("ascii") + '"', None


# ASCII text that JSON-encodes as itself (no quote, backslash or control character)
_PLAIN_TEXT = re.compile(r'[ !#-\[\]-~]*')


def _json_str(s: str | None) -> str:
    if s is None:
        return "null"
    # (ASCII letters and digits, as keys and digests are, need no regex)
    return '"' + s + '"' if (s.isascii() and s.isalnum()) or _PLAIN_TEXT.fullmatch(s) else (
        json.dumps(s))


def _make_line(key: str, kind: str, name: str, deps: list[str], t: float, enc: str,
               value_text: str, digest: str | None = None, inputs: str | None = None,
               parts: Mapping[str, str] | None = None) -> bytes:
    rest = ('"key":' + _json_str(key) + ',"kind":"' + kind + '","name":' + _json_str(name)
            + ',"deps":[' + ",".join(map(_json_str, deps)) + '],"t":' + ("%.3f" % t)
            + ',"digest":' + _json_str(digest) + ',"inputs":' + _json_str(inputs)
            + ',"enc":"' + enc + '"'
            # (a part named "value" would read as the value field: never written)
            + ('' if parts is None else ',"parts":' + json.dumps(
                {k: v for k, v in parts.items() if k != "value"}, separators=(",", ":"),
                sort_keys=True))
            + ',"value":' + value_text + "}").encode("utf-8")
    return b'%s%08x",%s\n' % (_PREFIX, binascii.crc32(rest), rest)


# ----------------------------------------------------------------- reading

def _brief(x: object, width: int = 40) -> str:
    """repr() for a warning: control characters escaped, never longer than ``width``."""
    r = repr(x)
    return r if len(r) <= width else r[:width - 3] + "..."


def _classify(head: bytes) -> str:
    m = re.match(rb'\{\s*"v"\s*:\s*(-?\d{1,9})\D', head)
    if m and int(m.group(1)) not in (1, FORMAT_VERSION):
        return (f"entry format version {int(m.group(1))} is not supported (this flowing reads "
                f"versions 1 and {FORMAT_VERSION}); it was written by another flowing version")
    return "corrupt line (not a journal entry)"


# The header of an entry exactly as ``_make_line`` writes it (ASCII name, hex keys and
# digests, "%.3f" time): matched in one pass instead of parsed as JSON. Any other
# well-formed header takes the general path below, with the same result.
_FAST_HEADER = re.compile(
    rb'"key":"([0-9a-f]{64})","kind":"(task|item|override)",'
    rb'"name":"((?:[^"\\\x00-\x1f\x7f-\xff]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*)",'
    rb'"deps":\[((?:"[0-9a-f]{64}"(?:,"[0-9a-f]{64}")*)?)\],"t":([0-9]{1,15}\.[0-9]{3}),'
    rb'"digest":(null|"[0-9a-f]{64}"),"inputs":(null|"[0-9a-f]{64}"|"\*"),'
    rb'"enc":"(json|pickle|none|file|gone)"(,"parts":\{.*\})?')


def _fast_header(head: bytes | bytearray, end: int) -> dict[str, Any] | None:
    m = _FAST_HEADER.fullmatch(head, _HEAD, end)
    if m is None:
        return None
    key, kind, name, deps, t, digest, inputs, enc, parts = m.groups()
    text = name.decode("ascii")
    return {"key": key.decode("ascii"), "kind": kind.decode("ascii"),
            "name": json.loads(b'"' + name + b'"') if "\\" in text else text,
            "deps": [d.decode("ascii") for d in deps[1:-1].split(b'","')] if deps else [],
            "t": float(t), "digest": None if digest == b"null" else digest[1:-1].decode("ascii"),
            "inputs": None if inputs == b"null" else inputs[1:-1].decode("ascii"),
            "enc": enc.decode("ascii"), "v": 2, "parts": parts is not None}


def _check(head: bytes | bytearray, crc_rest: int | None,
           last: int | None) -> tuple[dict[str, Any] | None, int, str | None]:
    """Validate one complete line (without its newline).

    ``head`` is the whole line, or for a streamed long line its first
    _HEAD_MAX bytes together with ``crc_rest`` (checksum of bytes _HEAD.. end)
    and ``last`` (its final byte). Returns (header, value start, None) or
    (None, 0, reason). The header dict always has ``digest`` and ``inputs``
    (None for version-1 lines) and a float ``t``.
    """
    if head.startswith(_PREFIX):
        version = 2
    elif head.startswith(_PREFIX_V1):
        version = 1
    else:
        return None, 0, _classify(bytes(head[:64]))
    if head[_HEAD - 2:_HEAD] != b'",':
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
    if version == 2:
        fast = _fast_header(head, i)
        if fast is not None:
            return fast, i + len(_VALUE_TAG), None
    try:
        hdr = json.loads(b"{" + head[_HEAD:i] + b"}")
    except (ValueError, RecursionError):
        return None, 0, "corrupt line (unreadable header)"
    kind = hdr.get("kind")
    if kind not in KINDS:
        return None, 0, f"unknown entry kind {_brief(kind)} (written by another flowing version?)"
    key, deps, t = hdr.get("key"), hdr.get("deps"), hdr.get("t")
    tt = type(t)
    # (a chained comparison is False for NaN and for infinities)
    if (type(key) is not str or not key or type(hdr.get("name")) is not str
            or type(deps) is not list or not all(type(d) is str for d in deps)
            or (tt is not float and tt is not int) or not -_MAX_TIME <= t <= _MAX_TIME):
        return None, 0, "corrupt line (bad header fields)"
    digest, inputs = hdr.get("digest", _MISSING), hdr.get("inputs", _MISSING)
    if version == 2:
        if not ((digest is None or type(digest) is str) and (inputs is None or type(inputs) is str)):
            return None, 0, "corrupt line (bad header fields)"
    elif digest is not _MISSING or inputs is not _MISSING:
        # A version-1 line never had them: its version digit was damaged.
        return None, 0, "corrupt line (bad version field)"
    else:
        hdr["digest"] = hdr["inputs"] = None
    if hdr.get("enc") not in _ENCODINGS:
        return None, 0, (f"unknown value encoding {_brief(hdr.get('enc'))} "
                         f"(written by another flowing version?)")
    if tt is int:
        hdr["t"] = float(t)
    hdr["v"] = version
    found = hdr.get("parts")  # what "why" compares; not needed to replay: never fatal
    hdr["parts"] = type(found) is dict and all(type(v) is str for v in found.values())
    return hdr, i + len(_VALUE_TAG), None


# One scanned line: (line number, byte offset, byte length incl. newline,
# header or None, value start offset within the line, head bytes, problem or None)
_Scanned = tuple[int, int, int, "dict[str, Any] | None", int, bytes, "str | None"]


def _scan(fd: int, end: int | None = None, start: int = 0, lineno: int = 0) -> Iterator[_Scanned]:
    """Yield every non-blank line of the file in order, validated.

    Reads with pread (the descriptor's offset is shared and untouched) in
    _CHUNK pieces; a line longer than _HEAD_MAX is checksummed while streaming
    so memory stays bounded whatever the file holds. An incomplete last line
    (no newline) comes with the problem ``_TORN``. ``start`` (a line start)
    skips what comes before it, ``lineno`` lines.
    """
    pos = start        # file offset of the next read
    line_off = start   # file offset where the current line starts
    part = bytearray()  # head of a line that spans chunks
    spanning = False   # True while a line continues into the next chunk
    part_len = 0       # bytes of that line seen so far
    crc: int | None = None          # running checksum once the line outgrew _HEAD_MAX
    last = 0

    def finish(complete: bool) -> _Scanned:
        if not complete:
            return (lineno, line_off, part_len, None, 0, bytes(part[:_PREVIEW_BYTES]), _TORN)
        hdr, vstart, problem = _check(part, crc, last if crc is not None else None)
        return (lineno, line_off, part_len + 1, hdr, vstart, bytes(part[:vstart + _PREVIEW_BYTES]),
                problem)

    while True:
        want = _CHUNK if end is None else min(_CHUNK, end - pos)
        if want <= 0:
            break
        chunk = os.pread(fd, want, pos)
        if not chunk:
            break
        pos += len(chunk)
        i = 0
        if spanning:
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
            part, spanning, crc, i = bytearray(), False, None, j + 1
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
            spanning = True
            part_len = len(chunk) - i
            last = chunk[-1]
            crc = None
    if spanning and not part.isspace():
        lineno += 1
        yield finish(False)


def _header_version(line: bytes) -> int | None:
    """The version named by a header line, or None if ``line`` is not one."""
    if not line.startswith(_HEADER_START) or len(line) > 4096:
        return None
    try:
        d = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if type(d) is not dict or d.get("format") != FORMAT_NAME:
        return None
    v = d.get("version")
    return v if type(v) is int and v >= 1 else None


def _first_line(s: _Scanned) -> tuple[str, int]:
    """What the file's first non-blank line makes of the file.

    ("header", version), ("newer", version), ("entry", 0): a journal of 0.1.0,
    ("foreign", 0): anything else, a one-line file without a newline included.
    """
    lineno, _off, _length, _hdr, _vstart, head, problem = s
    if lineno != 1:
        return "foreign", 0         # flowing never writes leading blank lines
    if problem is None:
        return "entry", 0
    if problem is _TORN:
        # A journal is created whole (its header is renamed into place), so a first
        # line without a newline was never written by flowing: not ours to touch.
        return "foreign", 0
    v = _header_version(head)
    if v is None:
        return "foreign", 0
    return ("header" if v <= FORMAT_VERSION else "newer"), v


def _refusal(path: str, kind: str, version: int, doing: str, fix: str) -> JournalError:
    if kind == "newer":
        return JournalError(
            f"journal {path!r} was written by a newer flowing (journal format version {version}; "
            f"this flowing knows versions up to {FORMAT_VERSION}), so it will not {doing} it; "
            f"upgrade flowing, or {fix}")
    return JournalError(
        f"journal {path!r} is not a flowing journal (its first line is neither a journal header "
        f"nor a journal entry), so flowing will not {doing} it and left it untouched; {fix}")


class _Warner:
    """Emits one warning per skipped line, then a single summary past a cap."""

    def __init__(self, logger: logging.Logger, path: str) -> None:
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
    """One valid journal line, as shown by ``flowing journal show``.

    ``name``, ``key`` and ``dep_keys`` are as read from the file: they may hold
    any character. ``preview`` is printable (control characters escaped).
    """

    key: str
    name: str
    kind: str
    dep_keys: tuple[str, ...]
    time: float
    size: int          # bytes the line takes in the file, newline included
    enc: str           # "json", "pickle" or "none" (a marker without a value)
    preview: str       # single-line start of the value (JSON text, or "<pickle, N B>")
    offset: int        # byte offset of the line in the file
    line: int          # 1-based line number
    digest: str | None = None   # content digest of the value, if recorded
    inputs: str | None = None   # digest of the dependency values, if recorded
    version: int = FORMAT_VERSION  # entry version (1: written by flowing 0.1.0)
    stored: str | None = None   # enc "file": sha256 of the value's file beside the journal
    stored_size: int = 0        # enc "file": bytes of that file

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


def human_size(n: float) -> str:
    """``1.5 KiB``: a byte count for people (``journal show``, previews)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _escape_char(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _escape(text: str, width: int) -> str:
    """``text`` with non-printable characters escaped; past ``width``, cut to fit with "..."."""
    shown = "".join(c if c.isprintable() else _escape_char(c) for c in text[:width + 1])
    return shown if len(shown) <= width else shown[:width - 3] + "..."


def _preview(head: bytes, vstart: int, length: int, enc: str, width: int = 60) -> str:
    vend = length - 2  # strip '}' and newline
    if enc == "none":
        return "<value not stored>"
    if enc == "gone":
        return "<value dropped: it could not be loaded>"
    if enc == "file":
        ref = _stored_ref(head[vstart:vend])
        return "<damaged reference>" if ref is None else f"<stored value, {human_size(ref[1])}>"
    if enc == "pickle":
        n = max(0, vend - vstart - 2) * 3 // 4
        return f"<pickle, {human_size(n)}>"
    # A value cut at _PREVIEW_BYTES decodes to at least 64 characters (> width), so
    # _escape marks it cut too.
    text = head[vstart:min(vend, vstart + _PREVIEW_BYTES)].decode("utf-8", "replace")
    return _escape(text, width)


def _stored_ref(raw: bytes | bytearray) -> tuple[str, int] | None:
    """(sha256, size) from the value field of an ``enc: file`` entry, or None if malformed."""
    try:
        ref = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if type(ref) is not dict:
        return None
    sha, size = ref.get("sha256"), ref.get("size")
    if type(sha) is not str or not _HEX64.fullmatch(sha) or type(size) is not int or size < 0:
        return None
    return sha, size


def _entry(s: _Scanned) -> Entry:
    lineno, off, length, hdr, vstart, head, _ = s
    assert hdr is not None
    ref = _stored_ref(head[vstart:length - 2]) if hdr["enc"] == "file" else None
    return Entry(stored=None if ref is None else ref[0], stored_size=0 if ref is None else ref[1],
                 key=hdr["key"], name=hdr["name"], kind=hdr["kind"], dep_keys=tuple(hdr["deps"]),
                 time=hdr["t"], size=length, enc=hdr["enc"],
                 preview=_preview(head, vstart, length, hdr["enc"]), offset=off, line=lineno,
                 digest=hdr["digest"], inputs=hdr["inputs"], version=hdr["v"])


def _journal_entries(fd: int, path: str, logger: logging.Logger, end: int,
                     lenient: bool) -> Iterator[Entry]:
    """Valid entries of an already identified journal (``lenient``: any file, for show)."""
    warner = _Warner(logger, path)
    first = True
    for s in _scan(fd, end):
        if first:
            first = False
            kind, version = _first_line(s)
            if kind == "header":
                continue
            if kind == "newer":
                raise _refusal(path, kind, version, "read", "choose another file")
            if kind == "foreign":
                if not lenient:
                    raise _refusal(path, kind, version, "read", "check the path")
                # Read-only: list what a damaged journal still holds, but only if it holds any.
                if not any(t[6] is None for t in _scan(fd, end)):
                    raise _refusal(path, kind, version, "read", "check the path")
        if s[6] is not None:
            warner.skip(s[0], s[1], s[6])
        else:
            yield _entry(s)
    if first and end:  # nothing but blank lines
        raise _refusal(path, "foreign", 0, "read", "check the path")
    warner.done()


def iter_entries(path: str | os.PathLike[str], logger: logging.Logger) -> Iterator[Entry]:
    """Every valid entry of the journal at ``path`` in file order (read-only; never creates it).

    Raises JournalError for a path that is not a regular file, is a symbolic
    link, or is not a flowing journal (see the module docstring).
    """
    shown = os.fspath(path)
    fd = _open_regular(shown, os.O_RDONLY, creating=False)
    try:
        # Snapshot the end under a shared lock: bytes before it are whole lines
        # (writers hold the exclusive lock for their whole write).
        fcntl.flock(fd, fcntl.LOCK_SH)
        end = os.fstat(fd).st_size
        fcntl.flock(fd, fcntl.LOCK_UN)
        yield from _journal_entries(fd, shown, logger, end, lenient=True)
    finally:
        os.close(fd)


# ------------------------------------------------------------ open helpers

_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


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
    if e.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
        return JournalError(f"journal {path!r} is a symbolic link; flowing does not follow a link "
                            f"at the journal path (one planted in a shared directory could redirect "
                            f"its writes): give the real path of the journal instead")
    if e.errno == errno.ENXIO:
        return JournalError(f"journal {path!r} is not a regular file; give the path of a journal file")
    if isinstance(e, PermissionError):
        what = "read and written" if creating else "read"
        return JournalError(f"journal {path!r} cannot be {what} ({e.strerror}); fix the permissions "
                            f"of the file or of {d!r}, or choose another journal_path")
    return JournalError(f"journal {path!r} cannot be opened ({e.strerror or e}); "
                        f"choose another journal_path")


def _keep_regular(fd: int, shown: str) -> int:
    """Return ``fd`` (made blocking) if it is a regular file; else close it and raise JournalError."""
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")
            fix = ("journal_path must name a file inside it" if stat.S_ISDIR(mode)
                   else "give the path of a journal file")
            raise JournalError(f"journal {shown!r} is {what}; {fix}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_regular(path: str, flags: int, creating: bool, shown: str | None = None) -> int:
    """Open ``path`` (never following a symlink there, never blocking) if it is a regular file.

    Raises JournalError naming ``shown`` (default: ``path``) otherwise.
    """
    shown = path if shown is None else shown
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, 0o600)
    except OSError as e:
        raise _open_error(shown, e, creating) from None
    return _keep_regular(fd, shown)


def _header_file(abspath: str, like: os.stat_result | None) -> str:
    """A new temporary file next to the journal holding only the header, fsynced.

    It has the permission bits (and, where allowed, owner) of ``like``, or 0600.
    Its name follows the rewrite pattern, so a leftover is removed by the next opener.
    """
    d, base = os.path.split(abspath)
    while True:
        tmp = os.path.join(d, f".{base}.{os.urandom(8).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            break
        except FileExistsError:
            continue
    try:
        if like is not None:
            valuestore.take_owner_and_mode(fd, like)
        _write_all(fd, HEADER)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    os.close(fd)
    return tmp


def _open_or_create(path: str) -> tuple[int, bool]:
    """Open the journal for appending, creating it (mode 0600) if missing: (fd, created).

    A new journal is written whole before it appears: its header goes to a
    temporary file that is then hard-linked to the path (which, like
    ``O_EXCL``, fails if the path exists), so no crash can leave a journal
    with a torn header.
    """
    flags = os.O_RDWR | os.O_APPEND | _OPEN_FLAGS
    created = False
    try:
        for _ in range(100):
            try:
                fd = os.open(path, flags)
                break
            except FileNotFoundError:
                pass
            tmp = _header_file(os.path.abspath(path), None)
            try:
                os.link(tmp, path, follow_symlinks=False)
                created = True
            except FileExistsError:  # (also a symlink there: link never follows one)
                pass
            except FileNotFoundError:
                if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                    raise
                continue  # our temporary file was taken for a leftover: try again
            finally:
                _discard(tmp)
        else:
            raise OSError(errno.EAGAIN, "the journal keeps being removed while it is opened")
    except OSError as e:
        raise _open_error(path, e, creating=True) from None
    return _keep_regular(fd, path), created


def _fsync_dir(path: str) -> None:
    """Make a name change in ``path``'s directory durable (best effort where unsupported)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # an unreadable directory: the data itself is fsynced
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    """True if ``path`` itself (not a link there) still names the file open on ``fd``."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _trust_problem(st: os.stat_result) -> str | None:
    """Why pickles in a file with this stat must not be loaded, or None if they may be."""
    return valuestore.trust_problem(st, "the file")


def _temp_pattern(abspath: str) -> re.Pattern[str]:
    return re.compile(re.escape("." + os.path.basename(abspath) + ".") + r"[0-9a-f]{16}\.tmp")


def _remove_stale_temps(abspath: str, logger: logging.Logger) -> None:
    """Remove temporary files left by a killed ``compact``/``forget`` of this journal.

    Call with a flock held on the verified current journal file: every rewrite
    holds the exclusive lock while its temporary file exists, so any file of
    our exact pattern (``.NAME.<16 hex>.tmp``, regular, owned by us) is a leftover.
    """
    d = os.path.dirname(abspath)
    pattern = _temp_pattern(abspath)
    me = os.geteuid()
    try:
        with os.scandir(d) as it:
            names = [e.name for e in it if pattern.fullmatch(e.name)]
    except OSError:
        return
    for name in names:
        p = os.path.join(d, name)
        try:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_uid == me:
                os.unlink(p)
                logger.info("journal %r: removed %r, left by an interrupted compact or forget",
                            abspath, name)
        except OSError:
            pass


def _discard(path: str) -> None:
    """Remove our temporary file, if it is still there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    while n < len(data):  # short write (e.g. huge line, disk nearly full): finish it
        w = os.write(fd, memoryview(data)[n:])
        if w <= 0:
            raise OSError(errno.EIO, "short write to journal")
        n += w


# ------------------------------------------------------------------ Journal

# key -> (offset, length, value start in line, _JSON/_PICKLE/_FILE, t, digest, inputs) of
# the latest valid entry that holds a value; digests packed by _pack.
_Where = tuple[int, int, int, int, float, "bytes | str | None", "bytes | str | None"]
_CODES = {"json": _JSON, "pickle": _PICKLE, "file": _FILE}
# what indexing a written line needs: key, kind, name, enc, t, digest, inputs, value start,
# has parts
_Held = tuple[str, str, str, str, float, "str | None", "str | None", int, bool]
# A held line's last word (``record(check=...)``): None to write it, else a warning to
# log ("" for none) and the line is dropped.
Check = Callable[[], "str | None"]


def _safe_text(e: BaseException) -> str:
    from ..text import safe_str  # only a failing write pays for it

    return safe_str(e, 200)


def _pack(digest: str | None) -> bytes | str | None:
    """A 64-hex-digit digest as its 32 bytes (half the memory in the index); others as they are."""
    if digest is not None and len(digest) == 64 and _HEX64.fullmatch(digest):
        return bytes.fromhex(digest)
    return digest


def _unpack(d: bytes | str | None) -> str | None:
    return d.hex() if isinstance(d, bytes) else d


class Journal:
    """An open journal: an index of the file plus an appender. See the module docstring.

    ``record`` may be called from many threads at once and from many
    processes on the same file; ``peek``, ``get``, ``lookup`` and
    ``__contains__`` from any thread. ``close`` must not race with them.
    """

    def __init__(self, path: str, fd: int, logger: logging.Logger) -> None:
        self.path = path
        self._abspath = os.path.abspath(path)
        self._fd = fd
        self._logger = logger
        # key -> where its latest line with a value is; the names of the tasks (not
        # items) with an entry of any kind (a task that has one but not under its key
        # now ran with a new key: "why did it run again?"); task name -> (offset, value
        # start) of its newest entry when that has parts. See flowing.journal.index.
        self._idx = journalindex.Index()
        self._stale_dbs: list[Any] = []    # connections inherited over fork: never used again
        # The index describes every line up to this byte (and this many lines): -1 once
        # another process appended after it (then only the next open catches up).
        self._indexed_end = -1
        self._indexed_lines = 0
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
        # lines held by record(durable=False), each with its check (or None)
        self._pending: list[tuple[bytes, _Held, Check | None]] = []
        self._pending_bytes = 0
        self._pending_since = 0.0          # time.monotonic() of the oldest held line

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

        Returns False, with an empty index, if the file is empty. Raises
        JournalError if it is not a flowing journal or is of a newer format.
        With a usable persisted index (flowing.journal.index), only the lines
        past what it covers are read.
        """
        st = os.fstat(self._fd)
        self._trust = _trust_problem(st)
        self._idx.close()
        idx = journalindex.Index()
        start, lines = idx.attach(self._abspath, self._fd, st)
        warner = _Warner(self._logger, self.path)
        first = True
        covered = start  # end of the last whole line (a torn tail is cut by the next writer)
        if start:
            kind, version = _first_line(next(_scan(self._fd, st.st_size)))
            if kind in ("foreign", "newer"):
                idx.close()
                raise _refusal(self.path, kind, version, "write to", "choose another journal_path")
            first = False
        for s in _scan(self._fd, st.st_size, start, lines):
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
                kind, name, enc = hdr["kind"], hdr["name"], hdr["enc"]
                if kind != "item":
                    idx.names.add(name)
                if kind == "task" and enc != "gone":
                    idx.set_parts(name, (off, vstart) if hdr.get("parts") else None)
                if enc == "gone":  # the value before it could not be loaded: never replay it
                    idx.drop(hdr["key"])
                elif enc != "none":  # a marker without a value never replays
                    idx.put(hdr["key"], (off, length, vstart, _CODES[enc], hdr["t"],
                                         _pack(hdr["digest"]), _pack(hdr["inputs"])))
        if first and st.st_size:  # nothing but blank lines
            idx.close()
            raise _refusal(self.path, "foreign", 0, "write to", "choose another journal_path")
        warner.done()
        if idx.db is not None and covered and (start == 0 or start < covered):
            idx.save(self._fd, st, covered, lines, rebuild=start == 0)
        self._idx = idx
        self._indexed_end, self._indexed_lines = covered, lines
        return not first

    def _start_file(self) -> None:
        """Give an empty journal file its header (exclusive flock held on a verified fd).

        A file holding just the header (same mode and owner) is renamed over the
        empty one, so a crash leaves either the empty file or a whole header. Returns
        with the exclusive flock held on the new file.
        """
        try:
            tmp = _header_file(self._abspath, os.fstat(self._fd))
            try:
                os.replace(tmp, self._abspath)
            except BaseException:
                _discard(tmp)
                raise
            _fsync_dir(self._abspath)
            new = _open_regular(self._abspath, os.O_RDWR | os.O_APPEND, creating=False,
                                shown=self.path)
        except OSError as e:
            raise JournalError(f"journal {self.path!r}: cannot write the journal header "
                               f"({e.strerror or e}); check free space and permissions, or "
                               f"choose another journal_path") from None
        fcntl.flock(new, fcntl.LOCK_EX)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._old_fds.append(self._fd)
        self._fd = new
        self._known_end = len(HEADER)
        self._indexed_end, self._indexed_lines = len(HEADER), 1

    # -- reading ---------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return type(key) is str and self._idx.get(key) is not None

    def __len__(self) -> int:
        return len(self._idx)

    def has_task(self, name: str) -> bool:
        """Whether the file holds an entry (value or marker) for the task ``name``."""
        return self._idx.has_name(name)

    def latest_parts(self, name: str) -> dict[str, str] | None:
        """The ``parts`` of the newest task entry named ``name`` (what
        its key was computed from, as short fingerprints), or None if that entry
        has none (written by flowing 0.2.0, or no entry)."""
        where = self._idx.parts_at(name)
        if where is None or self._closed:
            return None
        off, vstart = where
        try:
            head = os.pread(self._fd, vstart, off)
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
        where = self._idx.get(key)
        if where is None or self._closed or (where[3] and not self._trusted()):
            return None
        return where[4], _unpack(where[5]), _unpack(where[6])

    def get(self, key: str, lazy: bool = False) -> Hit | None:
        """The latest journaled value of ``key`` with its digests, or None if absent or unloadable.

        A value stored beside the journal is checked cheaply (present, trusted,
        right size); with ``lazy`` it is not read: ``Hit.value`` is then a
        ``StoredValue`` whose ``load()`` reads and verifies it. A value in the
        line is read now and checked against its recorded digest.
        """
        where = self._idx.get(key)
        if where is None or self._closed:
            return None
        off, length, vstart, code, t, digest, inputs = where
        if code and not self._trusted():
            return None
        try:
            line = os.pread(self._fd, length, off)
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
                why = valuestore.check(self._abspath, *ref)
                if why is not None:
                    raise valuestore.StoreError(why)
                stored = StoredValue(self, key, self._name_at(off, vstart), ref[0], ref[1])
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
                self._logger.warning("journal %r: task %r: journaled result could not be loaded "
                                     "(%s); it will run again", self.path,
                                     self._name_at(off, vstart), _safe_text(e))
            return None
        return Hit(value, _unpack(digest), inputs=_unpack(inputs), t=t)

    def lookup(self, key: str) -> tuple[bool, Any]:
        """(True, value) if ``key`` is journaled and its value loads, else (False, None)."""
        hit = self.get(key)
        return (False, None) if hit is None else (True, hit.value)

    def _trusted(self) -> bool:
        if self._trust is None:
            return True
        if not self._trust_warned:
            self._trust_warned = True
            self._logger.warning(
                "journal %r: pickled results are not loaded because %s, so anyone who can "
                "change it could run code in this process; those tasks will run again "
                "(JSON results are still used). Fix: chmod 600 %s (and make sure you own it)",
                self.path, self._trust, self.path)
        return False

    def _name_at(self, off: int, vstart: int) -> str:
        try:
            head = os.pread(self._fd, vstart, off)
            name = json.loads(b"{" + head[_HEAD:vstart - len(_VALUE_TAG)] + b"}")["name"]
            return name if type(name) is str else "?"
        except Exception:  # noqa: BLE001 - only used to word a warning
            return "?"

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
               check: Check | None = None) -> bool:
        """Append one entry and fsync it. True if what was asked is durable.

        ``digest``: content digest of ``value``; ``inputs``: digest of the
        dependency values it was computed from (both stored as given, None
        when unknown). ``parts``: short fingerprints of what the key was
        computed from (``flowing.replay.why``), kept in the line for ``latest_parts``.
        ``store=False`` writes a value-less marker (``enc``
        ``none``) that never replays but keeps the chain of dependency keys
        for ``journal forget``; True then means the marker is durable.

        ``durable=False`` (``for_each`` items) may hold the line back to share
        one write and one fsync with the lines that follow it (group commit);
        it is written by the next durable ``record``, by ``flush`` or
        ``close``, or once the held lines pass _PENDING_BYTES or _PENDING_S.
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
        if self._disabled is not None or self._closed:
            return False
        if self._pid != os.getpid():
            self._after_fork()
        wanted = True   # what the caller asked for will be in the file
        enc, text = "none", "null"
        held = -1       # flock on a stored value file, kept until its line is written
        if store:
            try:
                enc, text, big = _encode_value(value)
                if big is not None:
                    sha, size, held = valuestore.write(self._abspath, os.fstat(self._fd), *big)
                    text = '{"sha256":"%s","size":%d}' % (sha, size)
                    durable = True
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # any pickling failure (a __reduce__ may even exit)
                self._logger.warning("task %r: result not journaled (%s: %s); it will run again "
                                     "next time", name, type(e).__name__, _safe_text(e))
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
            return self._write(line, entry, durable, check) and wanted
        finally:
            if held >= 0:
                os.close(held)

    def _write(self, line: bytes, entry: _Held, durable: bool = True,
               check: Check | None = None) -> bool:
        """Append ``line`` (with any held lines before it), then fsync unless it may wait."""
        with self._lock:
            if self._disabled is not None or self._closed:
                return False
            pending = self._pending
            pending.append((line, entry, check))
            self._pending_bytes += len(line)
            if not durable:
                if len(pending) == 1:
                    self._pending_since = time.monotonic()
                if (self._pending_bytes < _PENDING_BYTES
                        and time.monotonic() - self._pending_since < _PENDING_S):
                    return True
            if not self._write_pending():
                return False
            seq = self._written
        return self._sync(seq)

    def _write_pending(self) -> bool:
        """Write the held lines in one append (``_lock`` held); index them. False on error."""
        held, self._pending, self._pending_bytes = self._pending, [], 0
        if any(x[2] is not None for x in held):
            held = self._checked(held)
        if not held:
            return True
        data = held[0][0] if len(held) == 1 else b"".join([x[0] for x in held])
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if not _same_file(self._fd, self._abspath):
                    self._reopen()
                off = self._append(data)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as e:
            self._disable(e)
            return False
        if off == self._indexed_end:  # our lines follow what the index knows
            self._indexed_end = off + len(data)
            self._indexed_lines += len(held)
        else:
            self._indexed_end = -1
        idx = self._idx
        for line, (key, kind, name, enc, t, digest, inputs, vstart, has_parts), _ in held:
            if enc == "gone":
                idx.drop(key)
            elif enc != "none":
                idx.put(key, (off, len(line), vstart, _CODES[enc], t, _pack(digest), _pack(inputs)))
            if kind != "item":
                idx.names.add(name)
                if kind == "task" and enc != "gone":
                    idx.set_parts(name, (off, vstart) if has_parts else None)
            off += len(line)
        self._written += 1
        return True

    def _checked(self, held: list[tuple[bytes, _Held, Check | None]]
                 ) -> list[tuple[bytes, _Held, Check | None]]:
        """The held lines whose check lets them be written (``_lock`` held)."""
        verdicts: dict[int, str | None] = {}
        kept = []
        for x in held:
            check = x[2]
            if check is not None:
                k = id(check)  # (alive: ``held`` holds it)
                if k not in verdicts:
                    try:
                        verdicts[k] = check()
                    except Exception as e:  # noqa: BLE001 - cannot tell: not journaled
                        verdicts[k] = f"{x[1][2]}: not journaled ({_safe_text(e)})"
                    if verdicts[k]:
                        self._logger.warning("%s", verdicts[k])
                if verdicts[k] is not None:
                    continue
            kept.append(x)
        return kept

    def checkpoint(self) -> None:
        """Write held lines and, for a journal over 1 MiB whose every line this
        process has indexed, persist the index (flowing.journal.index), so the next
        open reads nothing it already knows. Called at the end of a run. Never raises."""
        if self._pid != os.getpid():
            return
        self.flush()
        with self._lock:
            if self._closed or self._disabled is not None or self._indexed_end <= 0:
                return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH)
                try:
                    st = os.fstat(self._fd)
                    if (not _same_file(self._fd, self._abspath)
                            or st.st_size != self._indexed_end):
                        return
                    idx = self._idx
                    if idx.db is None:
                        if st.st_size < journalindex.MIN_INDEXED:
                            return
                        idx.attach(self._abspath, self._fd, st)  # (the overlay holds it all)
                        rebuild = True
                    else:
                        rebuild = False
                    idx.save(self._fd, st, st.st_size, self._indexed_lines, rebuild)
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass

    def flush(self) -> bool:
        """Write and fsync the lines ``record(durable=False)`` held back. True if all are durable."""
        with self._lock:
            if not self._pending:
                return self._disabled is None
            if self._disabled is not None or self._closed or not self._write_pending():
                return False
            seq = self._written
        return self._sync(seq)

    def invalidate(self, key: str) -> None:
        """Never replay the current entry of ``key`` again (its value could not be loaded):
        append a ``gone`` marker with the entry's name and dependencies, so the chain
        ``journal forget`` follows stays whole."""
        where = self._idx.get(key)
        if where is None or self._closed or self._disabled is not None:
            return
        off, length, vstart = where[:3]
        try:
            hdr, _v, _p = _check(os.pread(self._fd, length, off)[:-1], None, None)
        except OSError:
            hdr = None
        if hdr is None:
            self._idx.drop(key)
            return
        t = time.time()
        line = _make_line(key, hdr["kind"], hdr["name"], hdr["deps"], t, "gone", "null",
                          hdr["digest"], hdr["inputs"])
        if self._pid != os.getpid():
            self._after_fork()
        self._write(line, (key, hdr["kind"], hdr["name"], "gone", t, None, None, 0, False))
        self._idx.drop(key)

    def _append(self, data: bytes) -> int:
        """Write ``data`` (whole lines) at the end (exclusive flock held); return its offset."""
        fd = self._fd
        size = os.fstat(fd).st_size
        if size != self._known_end and size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            # A writer died mid-line. Only whole lines are written under this lock,
            # so the bytes after the last newline can never be completed: drop them
            # rather than glue our line onto them.
            size = self._last_newline_end(size)
            os.ftruncate(fd, size)
        if size == 0:  # emptied since we opened it: a journal always starts with its header
            data = HEADER + data
        _write_all(fd, data)
        self._known_end = size + len(data)
        return self._known_end - len(data) + (len(HEADER) if size == 0 else 0)

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
        self._lock = threading.Lock()
        self._pending, self._pending_bytes = [], 0  # the parent's to write, not ours
        self._sync_cond = threading.Condition(threading.Lock())
        self._syncing = False
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
                if self._idx.db is not None:
                    # never use (nor close) a database connection across fork
                    self._stale_dbs.append(self._idx.db)
                    self._idx.db = None
                    self._load()
                elif (now.st_ino, now.st_dev) != (before.st_ino, before.st_dev):
                    self._load()  # the file was rewritten meanwhile: offsets changed
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except (OSError, JournalError) as e:
            self._disable(e if isinstance(e, OSError) else _Unusable(str(e)))

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
            self._disabled = str(e) if isinstance(e, _Unusable) else f"{type(e).__name__}: {e}"
        self._logger.warning("journal %r disabled for the rest of this run: %s; finished results "
                             "are kept in memory", self.path, self._disabled)

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
        if not self._closed and self._pid == os.getpid():
            self.flush()
        with self._lock:
            if self._closed:
                return
            with self._sync_cond:
                while self._syncing:
                    self._sync_cond.wait()
                self._closed = True
            self._close_fds()
            if self._pid == os.getpid():
                self._idx.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({self.path!r}, {len(self._idx)} keys{', closed' if self._closed else ''})"


# ---------------------------------------------------------------- rewrites

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

    def replace_with(self, spans: list[tuple[int, int]]) -> int:
        """Atomically replace the file by a header and the byte ranges ``spans`` of the current one.

        The new file keeps the journal's permission bits and, where allowed, its owner.
        """
        d, base = os.path.split(self.abspath)
        while True:
            tmp = os.path.join(d, f".{base}.{os.urandom(8).hex()}.tmp")
            try:
                tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:
                continue
        try:
            with os.fdopen(tfd, "wb", buffering=_CHUNK) as out:
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
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.abspath)
        except BaseException:
            _discard(tmp)
            raise
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
    dependencies is removed too, transitively. Unreadable lines are dropped.
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
        ex.replace_with([(e.offset, e.size) for e in keep])
        _removed, freed = valuestore.clean(ex.abspath, _stored_of(keep))
    removed = sum(map(len, requested.values())) + sum(map(len, downstream.values()))
    return ForgetResult(requested=requested, downstream=downstream, removed=removed,
                        kept=len(keep), values_freed=freed)


def _stored_of(entries: list[Entry]) -> set[str]:
    """The stored values these entries (in file order) refer to, unless a later
    ``gone`` marker of the same key says that value could not be loaded."""
    last_gone = {e.key: e.offset for e in entries if e.enc == "gone"}
    return {e.stored for e in entries
            if e.stored is not None and e.offset > last_gone.get(e.key, -1)}
