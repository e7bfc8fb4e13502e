"""``Replayer``: a journaled run's replay decisions and journal writes, asked by
the scheduler at the few points where a step meets the journal.

The scheduler owns the order of things (what is released, what starts, what
finishes); the Replayer owns, for one run, everything between a step and the
journal. It is built from the run's ``JournalPlan`` and the scheduler's
results list (it reads finished dependencies' values from it), and asked:

=====================  ==================================================
when                   what it answers or does
=====================  ==================================================
a task is released     ``released(i)``: settles the step key (``JournalPlan
                       .settle``) and either finishes the task from the
                       journal (a cached ``StepResult``), fails it (a
                       replayed value it needs cannot be loaded), or lets
                       it run (None), noting why in ``why``
its first job is made  ``job_inputs(i)``: the dependencies' digest the job
                       carries and whether its value may be stored
a task succeeded       ``succeeded(outcome)``: journal it (if the worker
                       did not already) and keep its value's digest
an item succeeded      ``record(outcome)``: journal it
a fan-out starts       ``items(i)``: an ``ItemKeys`` giving each item its
                       key and, when the journal holds it, its replay
a fan-out completes    ``flush()`` (its items' lines become durable), then
                       ``fan_succeeded(...)`` journals the list
the run closes         ``close()``: the journal's checkpoint
=====================  ==================================================

Policy (what replays, and why not) is ``JournalPlan``'s (``policy.py``); the
words of a reason are ``Why``'s (``why.py``). The journal write of one
outcome (and its in-place check) is the ``record`` callable the scheduler
passes in; a journal write that raises is a warning, never a lost result.

Value digests (``digests[i]``) are computed lazily, once per run, the first
time a dependent's key needs them; a replayed task keeps the digest its
entry recorded, a task that ran the one its worker computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import JournalError
from ..interrupts import guarded
from ..keys.digest import inputs_digest
from ..results import Deferred, ItemResult, StepResult, StepState
from ..text import safe_str
from .inplace import RunDigests
from .why import Why, WhyKind

if TYPE_CHECKING:
    from ..graph import Graph
    from ..keys.stepkey import Behaviour
    from .policy import JournalPlan
    from .record import Outcome as Finished  # the outcome of an attempt, as read here

__all__ = ["ItemKeys", "Replayer"]

SUCCEEDED, FAILED = StepState.SUCCEEDED, StepState.FAILED

_UNKNOWN: Any = object()  # a digest not computed yet


class _ReplayedItems(Deferred):
    """The items of a replayed ``for_each`` task whose value is not read yet."""

    __slots__ = ("replayer", "task", "values")

    def __init__(self, replayer: Replayer, task: int, values: Deferred) -> None:
        self.replayer, self.task, self.values = replayer, task, values

    def load(self) -> Any:
        return self.replayer.replayed_items(self.task, self.values.load())


class Replayer:
    """One journaled run's replay decisions and journal writes (see the module doc).

    ``plan``     the run's JournalPlan (its ``keys`` list is settled here)
    ``graph``    the run's graph
    ``results``  the scheduler's results list, read (never written) for values
    ``inputs``   ``Flow(inputs=...)``, whose digests the in-place check compares
    ``parts``    per task, what its key is made of: set here when the task is
                 released, read by ``record`` when it journals the task
    ``record``   journals one succeeded outcome (``runners.Shared.record``)
    ``warn``     logs a warning once
    """

    def __init__(self, plan: JournalPlan, graph: Graph, results: list[StepResult | None], *,
                 inputs: Mapping[str, Any], parts: list[Mapping[str, str] | None],
                 record: Callable[[Any], None], warn: Callable[[str], None]) -> None:
        self.plan = plan
        self.journal = plan.journal
        self.keys = plan.keys
        self.graph = graph
        self.results = results
        self.parts = parts
        self._record = record
        self._warn = warn
        self.digest = RunDigests(inputs, plan.behaviours)  # value digests, in-place checks
        self.digests: list[Any] = [_UNKNOWN] * len(graph)
        self.why: dict[int, Why] = {}  # why a journaled task ran again
        self._in_digests: dict[int, str] = {}  # released, not started: their inputs digest

    # ----- a task is released -----------------------------------------------------

    def released(self, i: int) -> StepResult | None:
        """Task i's dependencies all succeeded: settle its key, then its result if it
        is finished without running (replayed from the journal, ``cached``; or
        FAILED because a replayed value it needs cannot be loaded), else None: it
        runs, and ``why`` says why when the journal knew it."""
        key, in_digest, parts = self.plan.settle(i, self._dep_digests(i))
        self.keys[i] = key
        self.parts[i] = parts if self.plan.behaviours[i] is not None else None
        replayed = self._replay(i, in_digest)
        if replayed is not None:
            return replayed
        failed = self._load_deps(i)
        if failed is not None:
            return failed
        if in_digest is not None:
            self._in_digests[i] = in_digest
        return None

    def job_inputs(self, i: int) -> tuple[str | None, bool]:
        """For task i's first job: the digest of the dependency values it runs on,
        and whether its value may be stored in the journal."""
        in_digest = self._in_digests.pop(i, None)
        return in_digest, self._storable(i, in_digest)

    def _digest_of(self, i: int) -> str | None:
        d = self.digests[i]
        if d is _UNKNOWN:
            r = self.results[i]
            try:
                d = self.digests[i] = self.digest(_as_passed(r)) if r is not None else None
            except JournalError:  # a replayed value that cannot be loaded: no stable content
                d = self.digests[i] = None
        return d  # type: ignore[no-any-return]

    def _dep_digests(self, i: int, skip: int = -1) -> list[tuple[str, str | None]]:
        g = self.graph
        return [(g.tasks[d].name, self._digest_of(d)) for d in g.deps[i] if d != skip]

    def _in_digest(self, i: int, skip: int = -1) -> str | None:
        """Digest of the dependency values task i is about to be computed from
        (without dependency ``skip``: a for_each source, whose items count one by one)."""
        return inputs_digest(self._dep_digests(i, skip))

    def _storable(self, i: int, in_digest: str | None) -> bool:
        return self.plan.cacheable[i] and in_digest is not None and self.graph.tasks[i].cache

    def _usable(self, i: int, key: str, in_digest: str | None, item: bool = False) -> bool:
        """Whether the journal entry under ``key`` may replay task i (or one of its
        items). When it may not and the journal knows the task from an earlier run,
        ``why`` says why it runs again (a first run needs no explaining)."""
        td = self.graph.tasks[i]
        parts = self.parts[i] or {}
        if self.plan.verdict(i, td, key, in_digest, parts, explain=False) is None:
            return True
        # (asked only now: a replay needs no explaining, and asking costs a lookup)
        if not item and self.journal.has_task(td.name):
            why = self.plan.verdict(i, td, key, in_digest, parts, explain=True)
            if why is not None:
                self.why[i] = why
        return False

    def _replay(self, i: int, in_digest: str | None) -> StepResult | None:
        """Task i's result from the journal, if its entry may be used."""
        key = self.keys[i]
        td = self.graph.tasks[i]
        okey = self.plan.override_entry(i, td, key)
        hit = None
        if okey is not None:
            hit = self.journal.get(okey, lazy=True)
            if hit is not None:
                self.keys[i] = okey  # its dependents' entries name the entry they used
        if hit is None:
            if not self._usable(i, key, in_digest):
                return None
            # a value stored beside the journal is read when something needs it
            hit = self.journal.get(key, lazy=True)
        if hit is None:
            self.why[i] = Why(WhyKind.UNLOADABLE)
            return None
        now = time.time()
        items: Any = None
        if td.for_each is not None:
            if isinstance(hit.value, Deferred):
                items = _ReplayedItems(self, i, hit.value)
            else:
                items = self.replayed_items(i, hit.value)
        self.digests[i] = hit.digest if hit.digest is not None else _UNKNOWN
        return StepResult(td.name, SUCCEEDED, hit.value, step_key=key, cached=True,
                          started_at=now, finished_at=now, items=items,
                          detached=bool(self.graph.detached[i]))

    def replayed_items(self, i: int, values: Any) -> list[ItemResult] | None:
        """The ItemResults of replayed for_each task i (its journaled list ``values``),
        each with its input when the source's value is a list of the same length."""
        if not isinstance(values, list):
            return None
        source = None
        td = self.graph.tasks[i]
        try:
            for d in self.graph.deps[i]:
                if self.graph.tasks[d].name == td.for_each:
                    r = self.results[d]
                    source = r.value if r is not None else None
            items = list(source) if isinstance(source, (list, tuple)) else None
        except Exception:  # (a source value that cannot be loaded: items without their input)
            items = None
        if items is not None and len(items) != len(values):
            items = None
        return [ItemResult(k, SUCCEEDED, v, cached=True,
                           item=items[k] if items is not None else None)
                for k, v in enumerate(values)]

    def _load_deps(self, i: int) -> StepResult | None:
        """Read the replayed values task i is about to run on (they are loaded on first
        use). A value that cannot be loaded fails task i, saying the next run recomputes
        it (the journal no longer replays that entry): that FAILED result, else None."""
        for d in self.graph.deps[i]:
            r = self.results[d]
            # a replayed value not read yet (one kept on the cluster, never replayed,
            # is fetched only where needed)
            if r is None or not r.cached or not isinstance(r._value, Deferred):
                continue
            try:
                r.value  # noqa: B018 - loads it
            except JournalError as e:
                now = time.time()
                return StepResult(
                    self.graph.tasks[i].name, FAILED, None, e, None, 0, self.keys[i], False,
                    f"dependency '{r.name}': its journaled value could not be loaded; the next "
                    f"run computes it again", None, now, now, None, bool(self.graph.detached[i]))
        return None

    # ----- a job succeeded --------------------------------------------------------

    def record(self, outcome: Finished) -> None:
        """Journal a succeeded job (if its worker did not); a write that raises is a
        warning: it never loses the result."""
        try:
            self._record(outcome)
        except Exception as exc:  # a journal write must never lose the result
            self._warn(f"{outcome.job.label()}: could not journal its result ({safe_str(exc)})")

    def succeeded(self, outcome: Finished) -> None:
        """A task (not an item) succeeded: journal it, and keep its value's digest."""
        self.record(outcome)
        self.digests[outcome.job.task] = (outcome.digest if outcome.journaled
                                          and outcome.digest is not None else _UNKNOWN)

    # ----- for_each -----------------------------------------------------------

    def items(self, i: int) -> ItemKeys:
        """The keys of for_each task i's items, whose list was just made."""
        g = self.graph
        source = g.tasks[i].for_each
        source_index = next(d for d in g.deps[i] if g.tasks[d].name == source)
        others = self._in_digest(i, skip=source_index)
        behaviour = self.plan.behaviours[i]
        base = None  # the items' common part of their keys: behaviour and other dependencies
        if behaviour is not None and others is not None:
            base = behaviour.key(others)
        store = self._storable(i, others)
        if store and base is not None:
            # What the items share, written once: their lines name only the task's key
            # (replay/record.py), this marker names its dependencies' for ``journal
            # forget``, whether or not the task completes.
            td = g.tasks[i]
            try:
                self.journal.record(self.keys[i], td.name, [self.keys[d] for d in g.deps[i]],
                                    None, "task", store=False, parts=self.parts[i],
                                    durable=False)
            except Exception as exc:
                self._warn(f"task '{td.name}': could not journal its items ({safe_str(exc)})")
                store = False
        return ItemKeys(self, i, others, store, base, behaviour)

    def flush(self) -> None:
        """A fan-out's items are done: their lines (group commit) are acknowledged
        from here on."""
        self.journal.flush()

    def fan_succeeded(self, i: int, values: list[Any], items: list[ItemResult],
                      stopped: bool) -> None:
        """Journal the list of for_each task i, whose items all succeeded (not as a
        value that replays when an item ended while told to stop)."""
        key = self.keys[i]
        td = self.graph.tasks[i]
        digests = self.digest
        in_digest = self._in_digest(i)
        if in_digest is not None and not digests.fan_out_unchanged(
                i, ((r.name, _as_passed(r)) for d in self.graph.deps[i]
                    if (r := self.results[d]) is not None), in_digest):
            in_digest = None  # a dependency changed in place meanwhile: not stored
        digest = digests(values)
        self.digests[i] = digest
        try:
            self.journal.record(key, td.name, [self.keys[d] for d in self.graph.deps[i]],
                                values, "task", digest=digest, inputs=in_digest,
                                parts=self.parts[i],
                                # with cache_ttl_s, a list holding replayed
                                # items must not look fresh as a whole
                                store=self._storable(i, in_digest) and not stopped and (
                                    td.cache_ttl_s is None or not any(r.cached for r in items)))
        except Exception as exc:
            self._warn(f"task '{td.name}': could not journal its result ({safe_str(exc)})")

    # ----- the run closes ---------------------------------------------------------

    def close(self) -> None:
        """Item lines still held (group commit), and the index."""
        self.journal.checkpoint()


class ItemKeys:
    """The journal side of one fan-out: each item's key, and its replay.

    ``in_digest`` the digest of the task's dependencies but its source (each
                  item job carries it); ``store`` whether item values may be
                  stored (a job with a key only)
    """

    __slots__ = ("replayer", "task", "in_digest", "store", "base", "behaviour")

    def __init__(self, replayer: Replayer, task: int, in_digest: str | None, store: bool,
                 base: str | None, behaviour: Behaviour | None) -> None:
        self.replayer = replayer
        self.task = task
        self.in_digest = in_digest
        self.store = store
        self.base = base
        self.behaviour = behaviour

    def lookup(self, index: int, item: Any) -> tuple[str | None, ItemResult | None]:
        """Item ``index`` (value ``item``): its key (None: not journaled), and its
        replayed result when the journal holds one that may be used."""
        behaviour, base = self.behaviour, self.base
        if base is None or behaviour is None:
            return None, None
        r = self.replayer
        # the item's content as it is now (never a memo: a source may refresh
        # an object in place), and its index when the body can read it
        key: str | None = guarded(r.plan.keyer.item_key, base, item,
                                  index if behaviour.current else None, fallback=None)
        # (a first run knows none of its items' keys: no verdict to reach)
        if key is not None and key in r.journal and r._usable(self.task, key, self.in_digest,
                                                              item=True):
            hit = r.journal.get(key)
            if hit is not None:
                return key, ItemResult(index, SUCCEEDED, hit.value, cached=True, item=item)
        return key, None


def _as_passed(r: StepResult) -> Any:
    """A result's value as its dependents received it: one kept where it was made
    (a Dask worker) stays there (its digest is known without fetching it)."""
    value = r._value
    return value if isinstance(value, Deferred) and value.passed_as_is else r.value
