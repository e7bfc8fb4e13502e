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

A write error disables the journal for the rest of the run (one warning):
later writes are no-ops that return False.
"""

from __future__ import annotations

import logging
import threading
import time
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
        self._pending: list[_Line] = []
        self._pending_bytes = 0
        self._pending_since = 0.0          # time.monotonic() of the oldest held line

    def write(self, line: bytes, entry: _Held, durable: bool = True,
              check: Check | None = None) -> bool:
        """Append ``line`` (with any held lines before it), then fsync unless it may wait."""
        with self.lock:
            if self.disabled is not None or self.closed:
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

    def flush(self) -> bool:
        """Write and fsync the held lines. True if all are durable."""
        with self.lock:
            if not self._pending:
                return self.disabled is None
            if self.disabled is not None or self.closed or not self._write_pending():
                return False
            seq = self._written
        return self._sync(seq)

    def _write_pending(self) -> bool:
        """Write the held lines in one append (``lock`` held). False on error."""
        held, self._pending, self._pending_bytes = self._pending, [], 0
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
