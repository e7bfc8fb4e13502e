"""Reading a journal: its lines in order, checked, and the entries they hold.

Opening reads the file in 1 MiB pieces (``pread``: the descriptor's offset
is untouched), checks each line's checksum and parses only its header; a
line longer than 4 MiB is checksummed while streaming, so memory stays
bounded whatever the file holds. Blank lines are ignored; any other line that
fails the checks of flowing.journal.format is skipped with one warning (past
20 such lines, the rest are counted in one summary warning) and its task
simply runs again. What the first line makes of the file (a journal, or not
ours) is decided by flowing.journal.files.
"""

from __future__ import annotations

import binascii
import fcntl
import logging
import os
from collections.abc import Iterator

from .files import _CHUNK, _first_line, _open_regular, _refusal
from .format import _HEAD, _PREVIEW_BYTES, _TORN, Entry, _check, _preview, _Scanned, _stored_ref

_HEAD_MAX = 4 << 20                 # longer lines are checksummed while streaming, not held whole
_MAX_LINE_WARNINGS = 20             # past this, skipped lines are summarised in one warning


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


