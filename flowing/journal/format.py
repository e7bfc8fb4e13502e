"""The journal's line format: the header, the entries, and how values are encoded.

The durable journal is an append-only JSONL file of finished steps. Every task
that succeeds (every ``for_each`` item, every manual override) appends one
line. A later run, in this process or a fresh one, opens the journal, replays
each task whose step key is in it and runs only the rest
(flowing.journal.store).

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
            knows what is downstream of what. An item names only its
            task's key: what a task's items share (dependency keys,
            ``parts``) is in a value-less task line written when its
            fan-out starts (flowing.replay.record), which ``forget`` follows.
``t``       wall-clock time of the write (seconds since the epoch); a line
            whose ``t`` is not a finite number is skipped as corrupt.
``digest``  content digest of the value (hex), or null when unknown (and
            for an item stored as JSON: nothing reads it, and its text is
            covered by ``crc``).
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
warning; flowing.journal.scan reads them).

Values: in the line or beside it
--------------------------------
A value whose pickle (protocol 5, out-of-band buffers counted) is at most
``valuestore.THRESHOLD`` (64 KiB) stays in its line: as JSON when it is
plain JSON, else as a base64 pickle. A bigger one is written first to the
folder ``<journal>.values/`` as raw bytes (pickle protocol 5, out-of-band
buffers as they are; see flowing.journal.values for the file format, its
durability and its cleanup), and the line, written after the file is
durable, names it by the sha256 of its bytes.

(flowing.journal.reader checks a value read back before it is used.)
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..journal import values as valuestore

FORMAT_NAME = "flowing-journal"
FORMAT_VERSION = 2                 # version of the file format and of the entries written
HEADER = b'{"format":"%s","version":%d}\n' % (FORMAT_NAME.encode(), FORMAT_VERSION)
KINDS = frozenset({"task", "item", "override"})

_PREFIX = b'{"v":2,"crc":"'        # every entry written now starts with this
_PREFIX_V1 = b'{"v":1,"crc":"'     # entries written by 0.1.0
_HEAD = len(_PREFIX) + 10           # prefix + 8 hex digits + '",' : the checksum covers the rest
_HEADER_START = b'{"format":"' + FORMAT_NAME.encode() + b'",'
_VALUE_TAG = b',"value":'
_PICKLE_PROTOCOL = 5                # readable by every supported Python (>= 3.8)
_PREVIEW_BYTES = 256
_MAX_TIME = float(2 ** 53)          # |t| beyond this is not a time any writer produced
_ENCODINGS = frozenset({"json", "pickle", "none", "file", "gone"})
_JSON, _PICKLE, _FILE = 0, 1, 2     # how an indexed entry holds its value
_MISSING = object()
_HEX64 = re.compile(r"[0-9a-f]{64}")


_TORN = ("torn write (the last line is incomplete: the process writing it "
         "probably died mid-write)")

# One scanned line: (line number, byte offset, byte length incl. newline,
# header or None, value start offset within the line, head bytes, problem or None)
_Scanned = tuple[int, int, int, "dict[str, Any] | None", int, bytes, "str | None"]


@dataclass(frozen=True, slots=True)
class Hit:
    """A journaled value, with what its entry says about where it came from."""

    value: Any
    digest: str | None     # content digest of value (as recorded), None if unknown
    inputs: str | None     # digest of the dependency values the entry was computed from
    t: float               # epoch seconds the entry was written




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


# The JSON text of a value in a line (made once: ``json.dumps`` with arguments
# builds an encoder per call)
_json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


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


def _encode_value(value: Any) -> tuple[str, str,
                                      tuple[bytes | memoryview, list[memoryview]] | None]:
    """(enc, JSON text of the value field, big pickle to store beside the journal or None).

    Raises if the value cannot be stored.

    A small plain-JSON value (the usual ``for_each`` item) is written as JSON
    without being pickled first: its pickle cannot reach the store's
    threshold (pickle spends at most about as many bytes per plain JSON value
    as its JSON text, plus a few per string and container, all counted in
    ``_SMALL_JSON``'s margin).
    """
    if type(value) is valuestore.Pickled:  # pickled where it was made: stored as it is
        return "file", "", (value.frame, value.buffers)
    if _small_plain_json(value, _SMALL_JSON_NODES) >= 0:
        try:
            text = _json_text(value)
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
            text = _json_text(value)
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


_LINE = '"key":%s,"kind":"%s","name":%s,"deps":[%s],"t":%.3f,"digest":%s,"inputs":%s,"enc":"%s"%s,"value":%s}'


def _make_line(key: str, kind: str, name: str, deps: list[str], t: float, enc: str,
               value_text: str, digest: str | None = None, inputs: str | None = None,
               parts: Mapping[str, str] | None = None) -> bytes:
    rest = (_LINE % (
        _json_str(key), kind, _json_str(name), ",".join(map(_json_str, deps)), t,
        _json_str(digest), _json_str(inputs), enc,
        # (a part named "value" would read as the value field: never written)
        '' if parts is None else ',"parts":' + json.dumps(
            {k: v for k, v in parts.items() if k != "value"}, separators=(",", ":"),
            sort_keys=True),
        value_text)).encode("utf-8")
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


