"""``Flow.dry_run()``: what ``run()`` would do now, calling no body, gate or source.

The same decision as a run (``JournalPlan.settle``, ``verdict``), walked in plan
order without running anything. A dependency that will be replayed gives the
digest its entry recorded, so the keys of its dependents are exact; one that
will run leaves its dependents at ``maybe`` when nothing else of theirs
changed (they replay only if it returns what it returned before). A
``for_each`` task whose items are known (its source replays, as do its other
dependencies) counts the items that would replay and those that would run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..interrupts import guarded
from ..keys.digest import value_digest
from .why import Why, WhyKind, changed

if TYPE_CHECKING:
    from ..graph import Graph
    from ..results import StepResult
    from .policy import JournalPlan

__all__ = ["dry_run"]


def dry_run(graph: Graph, plan: JournalPlan | None,
            kept: dict[int, StepResult]) -> dict[str, str]:

    out: dict[str, str] = {}
    n = len(graph)
    replayed = [False] * n
    digests: list[str | None] = [None] * n
    keys: list[str | None] = [None] * n
    for i, td in enumerate(graph.tasks):
        if i in kept:
            out[td.name] = "replay"
            replayed[i] = True
            digests[i] = digest_or_none(kept[i].value)
            continue
        if plan is None:
            out[td.name] = "run: no journal (journal_path is not set)"
            continue
        deps = graph.deps[i]
        pending = [graph.tasks[d].name for d in deps if not replayed[d]]
        pairs = [(graph.tasks[d].name, digests[d]) for d in deps if replayed[d]]
        key, in_digest, parts = plan.settle(i, pairs)
        blocked = plan.blocked(i, td)
        if blocked is not None:
            out[td.name] = f"run: {blocked}"
            continue
        if pending:
            out[td.name] = _unless(plan, td.name, parts, pending)
            continue
        entry = plan.override_entry(i, td, key)
        why = None
        if entry is None:
            why = plan.verdict(i, td, key, in_digest, parts)
            entry = key
        if why is None:
            out[td.name] = "replay"
            replayed[i] = True
            keys[i] = entry
            digests[i] = _stored_digest(plan, entry)
            continue
        out[td.name] = f"run: {why}" + _items(graph, plan, i, replayed, digests, keys)
    return out


def _unless(plan: JournalPlan, name: str, parts: Mapping[str, str], pending: list[str]) -> str:
    """A task with dependencies that will run: ``maybe`` when nothing else changed."""
    journal = plan.journal
    then = journal.latest_parts(name)
    if then is None:
        return f"run: {changed(parts, None, journal.has_task(name))}"
    unknown = {f"dep:{d}" for d in pending}
    why = changed({k: v for k, v in parts.items() if k not in unknown},
                  {k: v for k, v in then.items() if k not in unknown}, True)
    if why.kind is WhyKind.CHANGED:
        return f"run: {why}"
    return f"maybe: {Why(WhyKind.MAYBE, tuple(pending))}"


def _stored_digest(plan: JournalPlan, key: str) -> str | None:
    meta = plan.journal.peek(key)
    if meta is not None and meta[1] is not None:
        return meta[1]

    hit = plan.journal.get(key)
    return None if hit is None else digest_or_none(hit.value)


def _items(graph: Graph, plan: JournalPlan, i: int, replayed: list[bool],
           digests: list[str | None], keys: list[str | None]) -> str:
    """`` (7 of 10 items replay, 3 run)`` when the items are known."""
    td = graph.tasks[i]
    behaviour = plan.behaviours[i]
    if td.for_each is None or behaviour is None or not td.cache:
        return ""
    source = next((d for d in graph.deps[i] if graph.tasks[d].name == td.for_each), None)
    if source is None or not all(replayed[d] for d in graph.deps[i]) or keys[source] is None:
        return ""
    hit = plan.journal.get(keys[source])  # type: ignore[arg-type]
    values: Any = None if hit is None else hit.value
    if type(values) not in (list, tuple):
        return ""
    from ..keys.digest import inputs_digest  # lazy: keeps import flowing fast
    others = inputs_digest((graph.tasks[d].name, digests[d]) for d in graph.deps[i]
                           if d != source)
    if others is None:
        return ""
    base = behaviour.key(others)
    again = 0
    for index, item in enumerate(values):
        key = plan.keyer.item_key(base, item, index if behaviour.current else None)
        if key is not None and plan.verdict(i, td, key, others, {}, explain=False) is None:
            again += 1
    return f" ({again} of {len(values)} items replay, {len(values) - again} run)"


def digest_or_none(value: object) -> str | None:
    """``digest.value_digest(value)``, or None (no stable content) whatever the value's
    own code raises while it is digested."""
    return guarded(value_digest, value, fallback=None)
