"""File safety: which files are journals, how the path is opened, locked and created.

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


Crash safety
------------
The file is only ever appended to (rewrites go to a new file that is fsynced
before it atomically replaces the old one, and the directory is fsynced
after). ``record`` returns only after ``fsync`` (items: see group commit in
flowing.journal.commit), so a returned entry survives a crash or power cut. A stored value's
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
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat

from ..errors import JournalError
from ..journal import values as valuestore
from .format import _TORN, FORMAT_VERSION, HEADER, _header_version, _Scanned

_CHUNK = 1 << 20                    # read size when scanning or copying
# Opened without following a symlink at the path, without blocking on a FIFO, and
# without ever becoming a controlling terminal; only regular files are then kept.
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


class _Unusable(OSError):
    """The open journal's path no longer names a journal we may write (message says why)."""


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


def _new_temp(abspath: str) -> tuple[int, str]:
    """(descriptor, path) of a new file (mode 0600) next to the journal, named by the
    rewrite pattern ``.NAME.<16 hex digits>.tmp`` (see ``_remove_stale_temps``)."""
    d, base = os.path.split(abspath)
    while True:
        tmp = os.path.join(d, f".{base}.{os.urandom(8).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue


def _header_file(abspath: str, like: os.stat_result | None) -> str:
    """A new temporary file next to the journal holding only the header, fsynced.

    It has the permission bits (and, where allowed, owner) of ``like``, or 0600.
    Its name follows the rewrite pattern, so a leftover is removed by the next opener.
    """
    fd, tmp = _new_temp(abspath)
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


def _append(fd: int, data: bytes, known_end: int) -> int:
    """Write ``data`` (whole lines) at the end (exclusive flock held); return its offset.

    ``known_end`` is the size after this process's last append: when the file
    still ends there, its last line is known to be whole.
    """
    size = os.fstat(fd).st_size
    if size != known_end and size > 0 and os.pread(fd, 1, size - 1) != b"\n":
        # A writer died mid-line. Only whole lines are written under this lock,
        # so the bytes after the last newline can never be completed: drop them
        # rather than glue our line onto them.
        size = _last_newline_end(fd, size)
        os.ftruncate(fd, size)
    if size == 0:  # emptied since we opened it: a journal always starts with its header
        _write_all(fd, HEADER + data)
        return len(HEADER)
    _write_all(fd, data)
    return size


def _last_newline_end(fd: int, size: int) -> int:
    pos = size
    while pos > 0:
        start = max(0, pos - _CHUNK)
        buf = os.pread(fd, pos - start, start)
        j = buf.rfind(b"\n")
        if j >= 0:
            return start + j + 1
        pos = start
    return 0
