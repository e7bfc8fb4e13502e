"""Value digests for one journaled run, and the check that a body did not
change its dependencies' values in place.

A task's journal entry says which dependency values it was computed from
(their content digests, combined by ``digest.inputs_digest``). A body that
changes one of those values in place (``settings["n"] = 2`` on a dict it
received) would make that entry a lie: run again from the original value, it
would be replayed as if computed from it. So before a value is journaled, the
values it was computed from are digested again and compared (``check_job``,
called by ``runners.Shared.record`` for every journaled task and item).

What is checked, and when (the policy)
--------------------------------------
* A value made only of numbers, strings, bytes, None, tuples and frozensets
  (``digest.digest_info`` says so while digesting it) cannot change: it is
  never digested again. Its digest is kept, with the value, for the run.
* A task's other dependency values (lists, dicts, sets, arrays, frames,
  objects) are digested again after the task's body ran, before its entry is
  written: a change made by the body, or by any other body running meanwhile,
  is detected, and the entry is not journaled (one warning).
* The side inputs of a ``for_each`` task (its dependencies other than the item
  source, which every item reads) are digested again after the 1st, 2nd, 4th,
  8th... journaled item of the fan-out, and whenever the time since the last
  check exceeds 20 times what that check cost (at least 50 ms), then once more
  when the whole task completes (``Scheduler._complete_fan``). Once a change is
  seen, no later item of that fan-out and not the task is journaled (one
  warning). Not detected: items journaled before the first check that saw the
  change keep their entries (a fan-out whose items change a side input is
  found by the first or second item in practice: they all run the same body).
* Values shipped to another process (process pools, Dask) are copies: a body
  there cannot change the originals, and the check finds nothing.
* A value changed and changed back between two checks is not detected.

Digests are never cached by ``id()`` for values that can change: a mutable
value is digested afresh each time it is checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .digest import digest_info, inputs_digest
from .interrupts import guarded

if TYPE_CHECKING:
    from .attempt import Job

__all__ = ["RunDigests"]

_SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex})
_SIZED = (str, bytes)
_SMALL = 4096  # scalars up to this length are digested again rather than remembered
_RECHECK_FACTOR = 20     # items: re-check when idle time since the last check exceeds this x its cost
_RECHECK_FLOOR_S = 0.05  # ... and at least this long


class _Fan:
    """Check bookkeeping for the items of one for_each task."""

    __slots__ = ("journaled", "changed", "last_end", "last_cost")

    def __init__(self) -> None:
        self.journaled = 0
        self.changed = False
        self.last_end = 0.0
        self.last_cost = 0.0


class RunDigests:
    """Content digests of one run's values; call it like ``digest.value_digest``.

    Thread-safe: workers call it while they journal, the scheduler when it
    needs a dependency's digest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._immutable: dict[int, tuple[object, str]] = {}  # keeps the values alive
        self._fans: dict[int, _Fan] = {}

    def __call__(self, value: object) -> str | None:
        small = type(value) in _SCALARS and (
            type(value) not in _SIZED or len(value) <= _SMALL)  # type: ignore[arg-type]
        if not small:
            hit = self._immutable.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
        # a KeyboardInterrupt raised by the value's own code is not the terminal's
        nothing: tuple[str | None, bool] = (None, False)
        found, immutable = guarded(digest_info, value, fallback=nothing)
        if immutable and found is not None and not small:
            with self._lock:
                self._immutable[id(value)] = (value, found)
        return found

    def unchanged(self, named: Iterable[tuple[str, object]], expected: str) -> bool:
        """Whether the (name, value) pairs still digest to ``expected`` (an
        ``inputs_digest``): values known to be immutable are not read again."""
        return inputs_digest((name, self(value)) for name, value in named) == expected

    def check_job(self, job: Job) -> str | None:
        """The in-place check for one journaled task or item (see the module
        docs): None when its entry may be written, else the warning to log."""
        expected = job.in_digest
        if expected is None:
            return None
        source = job.td.for_each
        if job.item is None or source is None:
            if self.unchanged(job.kwargs.items(), expected):
                return None
            return (f"{job.label()}: a dependency's value changed in place while it ran, so "
                    f"its result is not journaled; build new values instead of changing the "
                    f"ones a task received")
        return self._check_item(job, source, expected)

    def _check_item(self, job: Job, source: str, expected: str) -> str | None:
        side = [(name, value) for name, value in job.kwargs.items() if name != source]
        with self._lock:
            fan = self._fans.get(job.task)
            if fan is None:
                fan = self._fans[job.task] = _Fan()
            fan.journaled += 1
            n = fan.journaled
            due = (n & (n - 1)) == 0 or (time.monotonic() - fan.last_end
                                         > max(_RECHECK_FLOOR_S, _RECHECK_FACTOR * fan.last_cost))
            changed = fan.changed
        if not changed and due:
            start = time.monotonic()
            changed = not self.unchanged(side, expected)
            end = time.monotonic()
            with self._lock:
                fan.last_end, fan.last_cost = end, end - start
                fan.changed = fan.changed or changed
        if not changed:
            return None
        return self._fan_warning(job.td.name)

    def fan_out_unchanged(self, task: int, named: Iterable[tuple[str, Any]],
                          expected: str) -> bool:
        """The check when a for_each task completes: no change seen while its items
        ran, and its dependency values (source and side inputs) still digest to
        ``expected``."""
        with self._lock:
            fan = self._fans.get(task)
            if fan is not None and fan.changed:
                return False
        return self.unchanged(named, expected)

    @staticmethod
    def _fan_warning(name: str) -> str:
        return (f"task '{name}': a dependency's value changed in place while its items ran, "
                f"so the items finished from then on and the task are not journaled; build "
                f"new values instead of changing the ones a task received")
