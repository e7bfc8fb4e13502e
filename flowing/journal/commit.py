"""Group commit: the write side of an open journal, in order, with shared fsyncs.

Appends are serialised among this process's threads by one ``threading.Lock``
(flock does not exclude threads sharing a descriptor; the journal takes the
flock itself around each append). ``fsync`` runs after both locks are
released, and writers that finished their append while another thread was in
``fsync`` share the next one (group commit). ``for_each`` items go further:
their lines are held in memory (``record(durable=False)``) and written with
one ``os.write`` and one fsync with the lines that follow, at the latest when
the held lines pass 1 MiB or 0.2 s, when ``flush()`` is called (the
scheduler does so before a ``for_each`` task completes, and at the end of a
run) or at ``close``. An item counts as acknowledged only once its task
completes (only then may dependents start or the run report it), so the
SPEC's "lose at most what is being written" holds.

Holding a line takes no lock: it is appended to a ``collections.deque``
(``append`` and ``popleft`` are atomic), so workers finishing items at once
never queue behind each other; whoever writes next (under ``lock``) takes
every held line first, in the order they were held. The size and age that
trigger a write are read without the lock: a stale read only moves the
write by one line.

A write error disables the journal for the rest of the run (one warning):
later writes are no-ops that return False.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ..text import safe_str
from .files import _Unusable

_PENDING_BYTES = 1 << 20            # held item lines are written past this size
_PENDING_S = 0.2                    # ... or once the oldest has waited this long (seconds)

# what indexing a written line needs: key, kind, name, enc, t, digest, inputs, value start,
# has parts
_Held = tuple[str, str, str, str, float, "str | None", "str | None", int, bool]
# A held line's last word (``record(check=...)``): None to write it, else a warning to
# log ("" for none) and the line is dropped.
Check = Callable[[], "str | None"]
# A line to write: its bytes, what indexing it needs, its check (or None)
_Line = tuple[bytes, _Held, "Check | None"]


class GroupCommit:
    """Appends of one open journal: held lines, write order, shared fsyncs.

    ``emit(lines)`` appends whole lines to the file in one write (raising
    OSError); ``fsync()`` makes every append so far durable. ``lock``
    serialises appends (and the journal's close and checkpoint) among threads.
    """

    def __init__(self, emit: Callable[[list[_Line]], None], fsync: Callable[[], None],
                 logger: logging.Logger, path: str) -> None:
        self._emit, self._fsync, self._logger, self._path = emit, fsync, logger, path
        self.disabled: str | None = None   # set after a write error: later writes are no-ops
        self.closed = False
        self._written = 0                  # appends done (sequence numbers handed out under lock)
        self._synced = 0                   # every append <= this has been fsynced
        self.after_fork()

    def after_fork(self) -> None:
        """Fresh thread locks and no held lines (the parent's to write, not ours).

        The thread locks may have been held by a parent thread at fork time.
        """
        self.lock = threading.Lock()
        # Guards the fsync state below and wakes writers waiting for an fsync.
        self._cond = threading.Condition(threading.Lock())
        self._syncing = False              # one thread is in fsync; others wait for it
        self._held: deque[_Line] = deque()  # held lines, oldest first (taken under ``lock``)
        self._held_bytes = 0               # their size, about (updated without a lock)
        self._held_since = 0.0             # time.monotonic() when the oldest was held, about

    def write(self, line: bytes, entry: _Held, durable: bool = True,
              check: Check | None = None) -> bool:
        """Append ``line`` (with any held lines before it), then fsync unless it may wait."""
        if self.disabled is not None or self.closed:
            return False
        if not durable:
            held = self._held
            held.append((line, entry, check))
            self._held_bytes += len(line)
            now = time.monotonic()
            if len(held) == 1:
                self._held_since = now
            if self._held_bytes < _PENDING_BYTES and now - self._held_since < _PENDING_S:
                return True
            # Time to write them: unless another thread is writing already (it, or
            # the next writer, takes this line too).
            if not self.lock.acquire(blocking=False):
                return True
            try:
                if not self._write_held(None):
                    return False
                seq = self._written
            finally:
                self.lock.release()
            return self._sync(seq)
        with self.lock:
            if self.disabled is not None or self.closed:
                return False
            if not self._write_held((line, entry, check)):
                return False
            seq = self._written
        return self._sync(seq)

    def flush(self) -> bool:
        """Write and fsync the held lines. True if all are durable."""
        with self.lock:
            if self.disabled is not None or self.closed:
                return False
            # (with nothing held, the lines another writer took may still be in its
            # fsync: wait for that one too)
            if self._held and not self._write_held(None):
                return False
            seq = self._written
        return self._sync(seq)

    def _write_held(self, last: _Line | None) -> bool:
        """Write the held lines, then ``last``, in one append (``lock`` held). False on error."""
        queue = self._held
        self._held_bytes = 0
        # the lines held now (bounded: lines held meanwhile go with the next write)
        held: list[_Line] = [queue.popleft() for _ in range(len(queue))]
        if last is not None:
            held.append(last)
        if any(x[2] is not None for x in held):
            held = self._checked(held)
        if not held:
            return True
        try:
            self._emit(held)
        except OSError as e:
            self.disable(e)
            return False
        self._written += 1
        return True

    def _checked(self, held: list[_Line]) -> list[_Line]:
        """The held lines whose check lets them be written (``lock`` held)."""
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
                        verdicts[k] = f"{x[1][2]}: not journaled ({safe_str(e, 200)})"
                    if verdicts[k]:
                        self._logger.warning("%s", verdicts[k])
                if verdicts[k] is not None:
                    continue
            kept.append(x)
        return kept

    def _sync(self, seq: int) -> bool:
        """fsync until append ``seq`` is durable; concurrent callers share one fsync."""
        cond = self._cond
        with cond:
            while self._synced < seq:
                if self.disabled is not None:
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
            self._fsync()
            ok = True
        except OSError as e:
            self.disable(e)
        finally:
            with cond:
                if ok:
                    self._synced = max(self._synced, target)
                self._syncing = False
                cond.notify_all()
        return ok

    def disable(self, e: OSError) -> None:
        """Stop writing for the rest of the run (one warning)."""
        with self._cond:
            if self.disabled is not None:
                return
            self.disabled = str(e) if isinstance(e, _Unusable) else f"{type(e).__name__}: {e}"
        self._logger.warning("journal %r disabled for the rest of this run: %s; finished results "
                             "are kept in memory", self._path, self.disabled)

    def close(self) -> None:
        """Wait for a pending fsync, then refuse every later write (``lock`` held)."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self.closed = True
