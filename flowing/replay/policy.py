"""The replay policy: whether a step's journal entry may replay it, and why not.

``JournalPlan`` is made by the Flow before a journaled run starts (one
``Behaviour`` per task, from ``flowing.keys``: ``JournalPlan.build``) and
consulted by the run's ``Replayer`` (``replayer.py``) at one point per task:
when the task is released, ``settle`` turns its
behaviour and its dependencies' value digests into the step key, and
``verdict`` says whether the entry under that key may replay it, or why the
task runs (a ``Why`` record, turned into text only at the edge).

Policy, in the order it is checked (``blocked``, then ``verdict``):

* forced by ``resume(from_tasks=...)``, ``cache=False``, or a task whose key
  could not cover every value it reads: runs;
* a dependency value with no stable content: runs;
* no entry under the key: runs, and the newest entry of the task (if any)
  says what changed;
* an entry older than ``cache_ttl_s``: runs;
* otherwise: replays.

``JournalPlan.build`` fingerprints every task's behaviour once, when a
journaled run (or a dry run, or an override) starts; a task whose key cannot
cover a value it reads is uncacheable this run (one warning, and a
``NOT_CACHED`` ``Why`` naming the value). ``override_key`` is where
``Flow.override`` journals a value (``JournalPlan.record_override``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..interrupts import guarded
from ..text import error_line
from .why import Why, WhyKind, changed

if TYPE_CHECKING:
    from ..graph import Graph
    from ..journal.store import Journal
    from ..keys.stepkey import Behaviour
    from ..tasks import TaskDef


def override_key(key: str, name: str) -> str:
    """Where ``Flow.override`` journals a value: the step key AND the task's name, so
    an override never reaches another task that happens to share its step key."""
    import hashlib  # lazy: keeps import flowing fast

    return hashlib.sha256(f"flowing-override/{key}/{name}".encode("utf-8", "replace")).hexdigest()



class Parts(Mapping[str, str]):
    """What a task's key is made of (``Behaviour.parts`` and ``dep:<name>`` per
    dependency value), as short fingerprints for "why"; worked out only when
    read (journaling a task that ran, or explaining why it runs), never for a
    task that replays."""

    __slots__ = ("_behaviour", "_pairs", "_parts")

    def __init__(self, behaviour: Behaviour | None, pairs: list[tuple[str, str | None]]) -> None:
        self._behaviour = behaviour
        self._pairs = pairs
        self._parts: dict[str, str] | None = None

    def _all(self) -> dict[str, str]:
        if self._parts is None:
            parts = dict(self._behaviour.parts) if self._behaviour is not None else {}
            for name, d in self._pairs:
                parts[f"dep:{name}"] = "-" if d is None else d[:12]
            self._parts = parts
        return self._parts

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())



class JournalPlan:
    """What a journaled run needs, computed by the Flow before it starts.

    ``behaviours[i]`` task i's ``stepkey.Behaviour`` (its key but for its
                      dependencies' values), or None when it could not cover every
                      value the task depends on (it then neither replays nor
                      journals a value)
    ``bases[i]``      its behaviour's digest, or a stand-in for an uncacheable task
                      (overrides are journaled under it, see ``override_key``)
    ``keys[i]``       its step key: ``bases[i]`` until the task is released, then
                      ``stepkey.step_key`` of its behaviour and the digests of its
                      dependencies' values (``Replayer.released``)
    ``keyer``         the run's Keyer (item keys)
    ``force``         tasks that must run even if journaled (resume(from_tasks))
    ``uncacheable``   why each uncacheable task is (a ``NOT_CACHED`` Why naming the
                      value, for ``Flow.why`` and the task-start line)
    """

    def __init__(self, journal: Journal, behaviours: list[Behaviour | None], bases: list[str],
                 keyer: Any, force: set[int], uncacheable: dict[int, Why] | None = None) -> None:
        self.journal = journal
        self.behaviours = behaviours
        self.bases = bases
        self.keys = list(bases)
        self.cacheable = [b is not None for b in behaviours]
        self.keyer = keyer
        self.force = force
        self.uncacheable = uncacheable or {}  # task -> why: the value with no stable content

    @classmethod
    def build(cls, journal: Journal, graph: Graph, inputs: Mapping[str, Any], force: set[int],
              warning: Callable[[str], None] | None = None) -> JournalPlan:
        """Each task's behaviour, fingerprinted once for the run (its key is completed
        when it is released, from its dependencies' values: see ``settle``).
        ``warning`` (if given) is told, in one line each, which tasks are not cached."""
        import hashlib  # lazy: keeps import flowing fast

        from ..keys.stepkey import Keyer, Uncacheable  # lazy: journaled runs only

        # A new Keyer per run: fingerprints read module constants, and a fix made at
        # run time (a flag flipped before resume()) must give a new key.
        keyer = Keyer()
        behaviours: list[Behaviour | None] = []
        bases: list[str] = []
        uncacheable: dict[int, Why] = {}
        for i, td in enumerate(graph.tasks):
            gate_names = graph.gate_inputs.get(i, ((), ()))
            given = {n: inputs[n] for n in (*graph.inputs[i], *gate_names[0], *gate_names[1])}
            raised: list[BaseException] = []
            found = guarded(keyer.behaviour, td, given, fallback=None, seen=raised)
            if found is None:  # a value's own code raised a BaseException while fingerprinted
                found = Uncacheable(td.name, "fingerprinting a value it reads raised "
                                    + (error_line(raised[0], 80) if raised else "an error"))
            if isinstance(found, Uncacheable):
                if warning is not None:
                    warning(found.message)
                uncacheable[i] = Why(WhyKind.NOT_CACHED, detail=found.what)
                behaviours.append(None)
                bases.append(hashlib.sha256(b"flowing-uncacheable/"
                                            + td.name.encode("utf-8", "replace")).hexdigest())
            else:
                behaviours.append(found)
                bases.append(found.digest)
        return cls(journal, behaviours, bases, keyer, force, uncacheable)

    def settle(self, i: int, pairs: list[tuple[str, str | None]]) -> tuple[str, str | None,
                                                                          Parts]:
        """Task i's step key, dependencies' digest and parts, from (dependency name,
        value digest) pairs (a digest None: that value has no stable content)."""
        from ..keys.digest import inputs_digest  # lazy: keeps import flowing fast

        in_digest = inputs_digest(pairs)
        b = self.behaviours[i]
        if b is not None and in_digest is not None:
            key = b.key(in_digest)
        else:  # a stand-in: recorded as a marker, so ``journal forget`` still follows
            import hashlib  # lazy: keeps import flowing fast

            key = hashlib.sha256(f"flowing-uncacheable/{self.bases[i]}/{in_digest}"
                                 .encode()).hexdigest()
        return key, in_digest, Parts(b, pairs)

    def verdict(self, i: int, td: TaskDef, key: str, in_digest: str | None,
                parts: Mapping[str, str], explain: bool = True) -> Why | None:
        """None if the entry under ``key`` may replay task i; else why not (what
        changed only when ``explain``: it reads the task's newest entry)."""
        journal = self.journal
        why = self.blocked(i, td)
        if why is not None:
            return why
        if in_digest is None:
            return Why(WhyKind.UNSTABLE_DEP)
        meta = journal.peek(key)
        if meta is None:
            if not explain:
                return Why(WhyKind.NO_ENTRY)
            return changed(parts, journal.latest_parts(td.name), journal.has_task(td.name))
        ttl = td.cache_ttl_s
        if ttl is not None and time.time() - meta[0] > ttl:
            return Why(WhyKind.EXPIRED, detail=f"{ttl:g}")
        return None

    def blocked(self, i: int, td: TaskDef) -> Why | None:
        """Why task i runs whatever the journal holds, if it does."""
        if i in self.force:
            return Why(WhyKind.FORCED)
        if not td.cache:
            return Why(WhyKind.CACHE_FALSE)
        if self.behaviours[i] is None:
            return self.uncacheable.get(i) or Why(WhyKind.NOT_CACHED, detail="its key")
        return None

    def override_entry(self, i: int, td: TaskDef, key: str) -> str | None:
        """The journal key of an override of task i that stands now, if any: an
        override stands whatever its dependencies' values are, until the task
        runs again under its key."""
        if i in self.force:
            return None
        okey = override_key(self.bases[i], td.name)
        over = self.journal.peek(okey)
        if over is None:
            return None
        normal = self.journal.peek(key)
        return okey if normal is None or over[0] >= normal[0] else None

    def record_override(self, i: int, td: TaskDef, value: Any) -> str:
        """Journal ``value`` as an override of task i (``Flow.override``), under a
        key of its own (see ``override_entry``); returns that key."""
        from ..keys.digest import value_digest  # lazy: journaled runs only

        key = override_key(self.bases[i], td.name)
        self.journal.record(key, td.name, [], value, "override", digest=value_digest(value))
        return key
