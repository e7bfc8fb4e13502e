"""Value digests for one journaled run, and the check that a body did not
change its dependencies' values in place.

A task's journal entry says which dependency values it was computed from
(their content digests, combined by ``digest.inputs_digest``). A body that
changes one of those values in place (``settings["n"] = 2`` on a dict it
received) would make that entry a lie: run again from the original value, it
would be replayed as if computed from it. So before a value is journaled, the
values it was computed from are digested again and compared (``check_job``,
called by ``replay.record.record_outcome`` for every journaled task and item).

What is checked, and when (the policy)
--------------------------------------
* A value made only of numbers, strings, bytes, None, tuples and frozensets
  (``digest.digest_info`` says so while digesting it) cannot change: it is
  never digested again. Its digest is kept, with the value, for the run.
* A task's other dependency values (lists, dicts, sets, arrays, frames,
  objects) are digested again after the task's body ran, before its entry is
  written: a change made by the body, or by any other body running meanwhile,
  is detected, and the entry is not journaled (one warning). So are the
  ``Flow(inputs=...)`` it receives (body and gates), against their digests
  taken when the run started (the key covers them as they were then).
* The side inputs of a ``for_each`` task (its dependencies other than the item
  source, which every item reads) are digested again just before each write
  of item lines (``item_check``, the ``check`` of ``Journal.record``): the
  journal holds item lines back and writes them together (group commit, at
  most every 0.2 s or 1 MiB, and at once for a value stored beside the
  journal), so one check covers every item line of that write, all of whose
  bodies had ended. Then once more when the whole task completes
  (``Replayer.fan_succeeded``). Once a change is seen, no item line still
  held or later of that fan-out, and not the task, is journaled (one
  warning): an item that read a changed side input is never journaled as
  computed from the original.
* The values a task's key read that can change (module-level values its
  body, gates and helpers read, closure variables, defaults, function and
  class attributes: ``stepkey.Behaviour.held``, with their digests when the
  key was made) are digested again, in the key's own encoding, before the
  task's entry and before each write of its item lines, and every name the
  key read from a namespace (``Behaviour.bound``: module globals, helper
  modules', classes' and functions' attributes, immutable values included)
  must still be bound to the same object (one dict lookup each); a change
  or a rebinding made by any body meanwhile means the result is not
  journaled (one warning naming the value). Only that task's values: one a task's key did not read never
  stops it. A task that read none costs nothing.
* Values shipped to another process (process pools, Dask) are copies: a body
  there cannot change the originals, and the check finds nothing. A value
  kept on a Dask worker (``runners.calls.RemoteValue``) is not: a body on that
  worker receives the very object. It is checked there, after each body that
  received it, against the digest made there (``worker.store_form``); a
  change comes back as the job's ``remote_change`` and stops the entry (and,
  for an item, its fan-out) as a change seen here does. Here it digests as
  that worker digest while the copy fetched here (for a local body, a gate)
  still digests as it did when it arrived (``content_digest``): digests made
  on a worker and here are never compared.
* A value changed and changed back between two checks is not detected.
* Cost: a check digests again what a mutable dependency holds, so for a big
  array or frame it costs what its first digest did. When a task's
  dependency took at least ``_SLOW_S`` to digest, the check runs on a thread
  of its own while the task's value is digested (``digest_and_check``): both
  hash buffers in place with the GIL released, so on two cores the check
  adds little to the journal write.

Digests are never cached by ``id()`` for values that can change: a mutable
value is digested afresh each time it is checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..beside import Beside
from ..interrupts import guarded
from ..keys.digest import digest_info, inputs_digest
from ..results import Deferred

if TYPE_CHECKING:
    from ..keys.stepkey import Behaviour
    from ..tasks import TaskDef

__all__ = ["RunDigests"]


class Job(Protocol):
    """What the checks read of a runner's job (``flowing.runners.attempt.Job``)."""

    task: int
    td: TaskDef
    kwargs: dict[str, Any]
    inputs: Any
    gate_inputs: Any
    in_digest: str | None
    remote_change: str | None  # a change its worker saw (a value kept on a Dask cluster)

    def label(self) -> str: ...

_SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex})
_SIZED = (str, bytes)
_SMALL = 4096  # scalars up to this length are digested again rather than remembered
_SLOW_S = 0.005  # a value whose digest took this much CPU (s) is checked beside the next digest
_NOT_SLOW: Any = object()  # (not a value: ``None`` is one)


class _Fan:
    """The in-place check of one for_each task's side inputs; called by the journal
    just before it writes item lines (see ``Journal.record``'s ``check``)."""

    __slots__ = ("digests", "task", "name", "side", "expected", "given", "changed", "remote")

    def __init__(self, digests: RunDigests, task: int, name: str, side: list[tuple[str, object]],
                 expected: str, given: Iterable[str]) -> None:
        self.digests = digests
        self.task = task
        self.name = name
        self.side = side          # the side inputs every item of the fan-out reads
        self.expected = expected  # their inputs_digest when the items were keyed
        self.given = tuple(given)  # the names of the Flow inputs the items receive
        self.changed = False
        self.remote = False  # an item's worker saw a side input change (Job.remote_change)

    def __call__(self) -> str | None:
        """None while the side inputs are unchanged, else why the lines are dropped."""
        if self.changed:
            return ""
        held = self.digests.held_change(self.task)
        if held is None and not self.remote and (self.digests.unchanged(self.side, self.expected)
                             and self.digests.inputs_unchanged(self.given)):
            return None
        self.changed = True
        return RunDigests._fan_warning(self.name, held)


class RunDigests:
    """Content digests of one run's values; call it like ``digest.value_digest``.

    Thread-safe: workers call it while they journal, the scheduler when it
    needs a dependency's digest.
    """

    def __init__(self, inputs: Mapping[str, object] | None = None,
                 behaviours: Iterable[Behaviour | None] = ()) -> None:
        self._lock = threading.Lock()
        self._immutable: dict[int, tuple[object, str]] = {}  # keeps the values alive
        # id -> value, of mutable values slow to digest (kept alive: their ids stay theirs)
        self._slow: dict[int, object] = {}
        self._fans: dict[int, _Fan] = {}
        # Flow(inputs=...) and their digests as the run's keys covered them (before
        # any body ran): a body may change an input in place too
        self._inputs = dict(inputs or {})
        self._given = {name: self(value) for name, value in self._inputs.items()}
        # per task, its behaviour when its key read values that can change or names
        # that can be rebound (else None)
        self._held = [b if b is not None and (b.held or b.bound) else None
                      for b in behaviours]

    def __call__(self, value: object) -> str | None:
        if isinstance(value, Deferred):  # kept where it was made, or not read yet
            return guarded(value.content_digest, self, fallback=None)
        small = type(value) in _SCALARS and (
            type(value) not in _SIZED or len(value) <= _SMALL)  # type: ignore[arg-type]
        if not small:
            hit = self._immutable.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
        # a KeyboardInterrupt raised by the value's own code is not the terminal's
        nothing: tuple[str | None, bool] = (None, False)
        began = time.thread_time()  # (CPU time: waiting for the GIL does not count)
        found, immutable = guarded(digest_info, value, fallback=nothing)
        if immutable and found is not None and not small:
            with self._lock:
                self._immutable[id(value)] = (value, found)
        elif not small and time.thread_time() - began >= _SLOW_S:
            with self._lock:
                self._slow[id(value)] = value
        return found

    def digest_and_check(self, job: Job, value: object) -> tuple[str | None, str | None]:
        """``(self(value), self.check_job(job))``: on two threads at once when one
        of the job's dependency values was slow to digest (see the module doc)."""
        slow = self._slow
        if not any(slow.get(id(v), _NOT_SLOW) is v for v in job.kwargs.values()):
            return self(value), self.check_job(job)
        check = Beside(lambda: self.check_job(job), "flowing-inplace-check")
        digest = self(value)  # (never raises)
        return digest, check.result()

    def unchanged(self, named: Iterable[tuple[str, object]], expected: str) -> bool:
        """Whether the (name, value) pairs still digest to ``expected`` (an
        ``inputs_digest``): values known to be immutable are not read again."""
        return inputs_digest((name, self(value)) for name, value in named) == expected

    def inputs_unchanged(self, names: Iterable[str]) -> bool:
        """Whether the Flow inputs ``names`` still digest as when the run started."""
        for name in names:
            if name in self._inputs:
                given = self._given[name]
                if given is None or self(self._inputs[name]) != given:
                    return False
        return True

    @staticmethod
    def _given_names(job: Job) -> list[str]:
        """The Flow inputs job's key covers and its body or gates receive."""
        names = list(job.inputs or ())
        if job.gate_inputs is not None:
            names.extend(job.gate_inputs[0])
            names.extend(job.gate_inputs[1])
        return names

    def held_change(self, task: int) -> str | None:
        """Where a value task's key read (a module-level dict...) was read, if it
        changed since the key was made; None if none did (or none can)."""
        held = self._held
        b = held[task] if task < len(held) else None
        if b is None:
            return None
        unknown: str | None = "a value its key read"  # its own code raised: changed
        return guarded(b.changed, fallback=unknown)

    def check_job(self, job: Job) -> str | None:
        """The in-place check for one journaled task (see the module docs): None
        when its entry may be written, else the warning to log."""
        if job.remote_change is not None:
            return job.remote_change
        held = self.held_change(job.task)
        if held is not None:
            return (f"{job.label()}: {held} (read by its key) changed or was rebound during the "
                    f"run: not journaled; {_HELD_FIX}")
        expected = job.in_digest
        if expected is None or (self.unchanged(job.kwargs.items(), expected)
                                and self.inputs_unchanged(self._given_names(job))):
            return None
        return (f"{job.label()}: a dependency's value or an input changed in place while it "
                f"ran, so its result is not journaled; build new values instead of changing "
                f"the ones a task received")

    def item_check(self, job: Job) -> _Fan | None:
        """The check of a journaled ``for_each`` item's line (one per fan-out, run
        by the journal before it writes item lines), or None if nothing to check."""
        expected = job.in_digest
        source = job.td.for_each
        if expected is None or source is None:
            return None
        fan = self._fans.get(job.task)  # (made once per fan-out: items find it without the lock)
        if fan is None:
            with self._lock:
                fan = self._fans.get(job.task)
                if fan is None:
                    side = [(name, value) for name, value in job.kwargs.items() if name != source]
                    fan = self._fans[job.task] = _Fan(self, job.task, job.td.name, side,
                                                      expected, self._given_names(job))
        if job.remote_change is not None:
            fan.remote = True
        return fan

    def fan_out_unchanged(self, task: int, named: Iterable[tuple[str, Any]],
                          expected: str) -> bool:
        """The check when a for_each task completes: no change seen while its items
        ran, and its dependency values (source and side inputs) still digest to
        ``expected``."""
        with self._lock:
            fan = self._fans.get(task)
            if fan is not None and (fan.changed or fan.remote):
                return False
        return self.held_change(task) is None and self.unchanged(named, expected)

    @staticmethod
    def _fan_warning(name: str, held: str | None = None) -> str:
        if held is not None:
            return (f"task '{name}': {held} (read by its key) changed or was rebound during the "
                    f"run: the items finished from then on and the task are not journaled; "
                    f"{_HELD_FIX}")
        return (f"task '{name}': a dependency's value changed in place while its items ran, "
                f"so the items finished from then on and the task are not journaled; build "
                f"new values instead of changing the ones a task received")


_HELD_FIX = ("for a cache or client filled lazily, @task(version=\"1\"); else return new "
             "values instead of changing module-level ones")
