"""Big journaled values, stored beside the journal as raw bytes.

Policy
------
A value whose pickle (protocol 5, out-of-band buffers counted) is larger
than ``THRESHOLD`` bytes is not put in its journal line: it is written to a
file in the folder ``<journal>.values/`` next to the journal (``run.jsonl``
-> ``run.jsonl.values/``), and the line names the file by the sha256 of its
bytes (content addressed: equal values share one file). Smaller values stay
in the line, readable (see flowing.journal.format).

File format (``<sha256 of the whole file>.pkl``)::

    b"FLOWVAL1"  u32 n  u64 frame_len  n x u64 buffer_len   (little endian)
    frame (pickle protocol 5)  buffer 0  buffer 1 ...

The buffers are the out-of-band ``PickleBuffer``s of the value (numpy
arrays, pandas columns, bytes-like data) written as they are, with no
base64 and no whole extra copy: ``os.writev`` of the frame, then of each
buffer's memory. A value pickled elsewhere by ``dumps`` (on the Dask worker
that holds it) arrives as a ``Pickled`` frame and buffers and is written the
same way, never unpickled here. Reading allocates each buffer once and ``readinto``s it,
so arrays come back writeable without a copy.

Durability: the file is written to ``.<16 hex>.tmp`` in the folder, fsynced,
renamed to its final name and the folder fsynced, all before the journal
line that names it is written. A writer holds an exclusive ``flock`` on its
temporary file for as long as it exists, so a temporary file whose lock can
be taken was left by a killed writer: the next opener (and ``compact`` and
``forget``) removes it. A torn value can never be replayed: a file is only
read if its size and the sha256 of its bytes match what its entry says.

Safety (the journal's rules, applied to each stored file and the folder):
the folder is created with the journal's permission bits (plus the matching
search bits: 0700 for a 0600 journal) and owner where allowed; its files
with the journal's bits. Nothing is followed (``O_NOFOLLOW``, ``dir_fd``
operations), and pickles are loaded only when both the folder and the file
are regular, owned by the current user and not writable by group or others.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pickle
import re
import stat
import struct
from typing import Any, NamedTuple

from ..beside import Beside

THRESHOLD = 64 * 1024              # pickles larger than this go to a file
SUFFIX = ".values"                 # run.jsonl -> run.jsonl.values/
MAGIC = b"FLOWVAL1"
_FIXED = struct.Struct("<8sIQ")    # magic, buffer count, frame length
_NAME = re.compile(r"[0-9a-f]{64}\.pkl")
_TEMP = re.compile(r"\.[0-9a-f]{16}\.tmp")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_WRITEV_MAX = 1 << 30              # bytes per writev call (below every platform's limit)


class StoreError(Exception):
    """A stored value cannot be written or read; the message says why."""


def store_dir(journal_abspath: str) -> str:
    return journal_abspath + SUFFIX


def file_name(sha: str) -> str:
    return sha + ".pkl"


def trust_problem(st: os.stat_result, what: str) -> str | None:
    """Why pickles guarded by ``st`` (the folder or a file) must not be loaded, or None."""
    me = os.geteuid()
    if st.st_uid != me:
        return f"{what} is owned by uid {st.st_uid}, not by you (uid {me})"
    if st.st_mode & 0o022:
        return f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def dumps(value: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``value`` (protocol 5): the frame and the out-of-band buffers, uncopied."""
    bufs: list[pickle.PickleBuffer] = []
    frame = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
    try:
        return frame, [b.raw() for b in bufs]
    except BufferError:  # a non-contiguous buffer: keep it in the frame instead
        return pickle.dumps(value, protocol=5), []


def take_owner_and_mode(fd: int, like: os.stat_result, mode: int | None = None) -> None:
    """Give the new file ``fd`` the owner (where allowed) and permission bits of ``like``
    (or ``mode``), so its user can still write and trust it. Best effort: a file we
    cannot chown stays ours, one we cannot chmod keeps its creation mode (0600/0700)."""
    if like.st_uid != os.geteuid() or like.st_gid != os.getegid():
        try:
            os.fchown(fd, like.st_uid, like.st_gid)
        except OSError:
            pass
    try:  # (after fchown, which may clear some bits)
        os.fchmod(fd, stat.S_IMODE(like.st_mode) & 0o777 if mode is None else mode)
    except OSError:
        pass


class Pickled(NamedTuple):
    """A value pickled elsewhere in this module's form (``dumps``: a Dask worker's,
    see ``flowing.runners.worker.store_form``): the journal stores these bytes as
    they are, without unpickling them."""

    frame: memoryview
    buffers: list[memoryview]


def pickled_size(frame: bytes | memoryview, bufs: list[memoryview]) -> int:
    return len(frame) + sum(b.nbytes for b in bufs)


# ---------------------------------------------------------------- the folder

def _open_dir(path: str) -> int:
    """The folder, opened without following a link, if it is ours and safe; else StoreError."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError(f"{path!r} is not a directory (a link or a file)") from None
        raise StoreError(f"{path!r} cannot be opened ({e.strerror or e})") from None
    problem = trust_problem(os.fstat(fd), "the value folder")
    if problem is not None:
        os.close(fd)
        raise StoreError(f"{path!r}: {problem}")
    return fd


def make_dir(path: str, journal_st: os.stat_result) -> int:
    """Open the folder, creating it with the journal's mode and owner if it is missing."""
    mode = stat.S_IMODE(journal_st.st_mode) & 0o777
    dmode = (mode | ((mode & 0o444) >> 2)) & 0o755  # search bits for readers; never g/o-writable
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"cannot create {path!r} ({e.strerror or e})") from None
    fd = _open_dir(path)
    if created:
        take_owner_and_mode(fd, journal_st, dmode)
        _fsync_parent(path)
    return fd


def _fsync_parent(path: str) -> None:
    try:
        pfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(pfd)
    except OSError:
        pass
    finally:
        os.close(pfd)


# ------------------------------------------------------------------- writing

def _writev_all(fd: int, pieces: list[memoryview]) -> None:
    todo = [p for p in pieces if p.nbytes]
    while todo:
        batch: list[memoryview] = []
        size = 0
        for p in todo:
            if size + p.nbytes > _WRITEV_MAX and batch:
                break
            batch.append(p)
            size += p.nbytes
        n = os.writev(fd, batch)
        if n <= 0:
            raise OSError(errno.EIO, "short write of a stored value")
        while n:
            head = todo[0]
            if n >= head.nbytes:
                n -= head.nbytes
                todo.pop(0)
            else:
                todo[0] = head[n:]
                n = 0


_PARALLEL_HASH = 8 << 20           # bytes from which a file's sha256 runs beside its write


def _sha256_hex(pieces: list[memoryview]) -> str:
    h = hashlib.sha256()
    for p in pieces:
        h.update(p)
    return h.hexdigest()


def write(journal_abspath: str, journal_st: os.stat_result, frame: bytes | memoryview,
          bufs: list[memoryview]) -> tuple[str, int, int]:
    """Store a pickled value durably; return (sha256 hex of the file, its size, lock fd).

    The file stays exclusively flocked through the returned descriptor: close
    it once the journal line naming the file is written (until then ``clean``
    leaves the file alone). Raises StoreError or OSError; nothing is left
    behind then but, at worst, a temporary file the next opener removes.
    """
    d = store_dir(journal_abspath)
    dfd = make_dir(d, journal_st)
    try:
        head = _FIXED.pack(MAGIC, len(bufs), len(frame)) + b"".join(
            struct.pack("<Q", b.nbytes) for b in bufs)
        pieces = [memoryview(head), memoryview(frame), *(b.cast("B") for b in bufs)]
        size = sum(p.nbytes for p in pieces)
        # A big value's sha256 (its file's name) is taken beside its write and fsync
        # (hashlib releases the GIL); the file is named only once both are done.
        hashing = (Beside(lambda: _sha256_hex(pieces), "flowing-store-sha256")
                   if size >= _PARALLEL_HASH else None)
        while True:
            tmp = f".{os.urandom(8).hex()}.tmp"
            try:
                tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            except FileExistsError:
                continue
            # held while the file exists under its temporary name: see the module docstring
            fcntl.flock(tfd, fcntl.LOCK_EX)
            if os.fstat(tfd).st_nlink:
                break
            os.close(tfd)  # removed by a cleaner between create and lock: take another name
        try:
            take_owner_and_mode(tfd, journal_st)
            _writev_all(tfd, pieces)
            os.fsync(tfd)
            sha = hashing.result() if hashing is not None else _sha256_hex(pieces)
            os.rename(tmp, file_name(sha), src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            os.close(tfd)
            raise
        return sha, size, tfd
    finally:
        os.close(dfd)


# ------------------------------------------------------------------- reading

def check(journal_abspath: str, sha: str, size: int) -> str | None:
    """Cheap check (two lstat calls) that the stored file may be loaded: None, or why not."""
    d = store_dir(journal_abspath)
    try:
        dst = os.lstat(d)
        st = os.lstat(os.path.join(d, file_name(sha)))
    except FileNotFoundError:
        return "its stored value file is missing"
    except OSError as e:
        return f"its stored value file cannot be read ({e.strerror or e})"
    if not stat.S_ISDIR(dst.st_mode):
        return f"{d!r} is not a directory"
    if not stat.S_ISREG(st.st_mode):
        return "its stored value file is not a regular file"
    problem = trust_problem(dst, "the value folder") or trust_problem(st, "its stored value file")
    if problem is not None:
        return problem
    if st.st_size != size:
        return f"its stored value file has {st.st_size} bytes, not {size} (damaged)"
    return None


def _read_into(fd: int, buf: bytearray | memoryview, h: Any) -> None:
    view = memoryview(buf)
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n <= 0:
            raise StoreError("the stored value file is shorter than its header says (damaged)")
        got += n
    h.update(view)


def load(journal_abspath: str, sha: str, size: int) -> Any:
    """Read, verify (size, sha256, trust) and unpickle a stored value. Raises StoreError."""
    d = store_dir(journal_abspath)
    dfd = _open_dir(d)
    try:
        try:
            fd = os.open(file_name(sha), _FILE_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            raise StoreError("its stored value file is missing") from None
        except OSError as e:
            raise StoreError(f"its stored value file cannot be opened ({e.strerror or e})") from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError("its stored value file is not a regular file")
        problem = trust_problem(st, "its stored value file")
        if problem is not None:
            raise StoreError(problem)
        if st.st_size != size:
            raise StoreError(f"its stored value file has {st.st_size} bytes, not {size} (damaged)")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        h = hashlib.sha256()
        fixed = bytearray(_FIXED.size)
        _read_into(fd, fixed, h)
        magic, n, frame_len = _FIXED.unpack(fixed)
        if magic != MAGIC or _FIXED.size + 8 * n + frame_len > size:
            raise StoreError("its stored value file has a bad header (damaged)")
        lens_raw = bytearray(8 * n)
        _read_into(fd, lens_raw, h)
        lens = struct.unpack(f"<{n}Q", lens_raw)
        if _FIXED.size + 8 * n + frame_len + sum(lens) != size:
            raise StoreError("its stored value file has a bad header (damaged)")
        frame = bytearray(frame_len)
        _read_into(fd, frame, h)
        bufs = []
        for length in lens:
            b = bytearray(length)
            _read_into(fd, b, h)
            bufs.append(b)
        if h.hexdigest() != sha:
            raise StoreError("its stored value file does not match its checksum (damaged)")
    finally:
        os.close(fd)
    try:
        return pickle.loads(frame, buffers=bufs)
    except Exception as e:  # noqa: BLE001 - a verified file that cannot be unpickled (class gone)
        raise StoreError(f"its stored value cannot be unpickled ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------ cleaning

def clean(journal_abspath: str, keep: set[str] | None) -> tuple[int, int]:
    """Remove temporary files of killed writers and, if ``keep`` is given, every stored
    value not named in it. Returns (files removed, bytes freed). Pass ``keep`` only
    with the journal's exclusive lock held. A file a live writer still holds
    flocked (its line is not written yet) is left alone."""
    d = store_dir(journal_abspath)
    try:
        dfd = _open_dir(d)
    except StoreError:
        return 0, 0
    removed = freed = 0
    me = os.geteuid()
    try:
        for name in os.listdir(dfd):
            is_temp = _TEMP.fullmatch(name) is not None
            if not is_temp and not (keep is not None and _NAME.fullmatch(name)
                                    and name[:64] not in keep):
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != me:
                    continue
                if _remove_unlocked(dfd, name, is_temp):
                    removed += 1
                    freed += st.st_size
            except OSError:
                pass
        if removed:
            os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
    return removed, freed


def _remove_unlocked(dfd: int, name: str, is_temp: bool) -> bool:
    """Remove ``name`` unless a live writer holds it flocked; True if removed.

    The lock is taken on the file opened, but a writer storing the same
    content renames its own (flocked) file onto the same name at any time: so
    a stored value is first renamed aside, and removed only if what was moved
    is the very file locked here; a writer's file moved by that rename is put
    back (any file under the name has the same bytes: replacing is harmless).
    A temporary name is never renamed onto, so one is removed directly.
    """
    fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it
        if is_temp:
            os.unlink(name, dir_fd=dfd)
            return True
        aside = f".{os.urandom(8).hex()}.tmp"  # (a temporary name: swept if we die here)
        os.rename(name, aside, src_dir_fd=dfd, dst_dir_fd=dfd)
        moved, mine = os.stat(aside, dir_fd=dfd, follow_symlinks=False), os.fstat(fd)
        if (moved.st_dev, moved.st_ino) != (mine.st_dev, mine.st_ino):
            os.rename(aside, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # a writer's: put back
            return False
        os.unlink(aside, dir_fd=dfd)
        return True
    finally:
        os.close(fd)
