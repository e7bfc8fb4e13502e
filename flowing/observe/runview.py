"""What the report, the flowchart and the timeline read of a run, and helpers they share.

They read only what a ``Flow`` shows to everyone (``RunView``): ``flow.graph``,
``flow.results``, ``flow.retries``, ``flow.started_at`` / ``finished_at``.
None of them raises because of what tasks returned or raised: every value
and error is turned into text with ``text.safe_str`` / ``safe_repr`` (a
``__repr__`` or ``__str__`` that raises shows as ``<unprintable TypeName>``),
and no truth value or equality of a user object is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..results import FailedAttempt, StepState
from ..text import NO_ITEM, safe_str, type_name

MESSAGE_MAX_CHARS = 2000
ITEM_REPR_CHARS = 60    # longest item repr in a report

NOT_RUN = "not run"

# A failed attempt, as the flow keeps it (``results.FailedAttempt``).
RetryEntry = FailedAttempt
# The same per task, without the task index.
Fail = tuple["int | None", int, "float | None", "float | None", object]


class RunView(Protocol):
    """What the report, the flowchart and the timeline read from a ``Flow``.

    Also read when present: ``retries`` (list of ``RetryEntry``),
    ``last_attempt_started`` (name -> epoch s), ``max_workers``,
    ``fail_fast``, ``schedule``, ``journal_path``.
    """

    @property
    def graph(self) -> Any: ...             # flowing.graph.Graph
    @property
    def results(self) -> Mapping[str, Any]: ...   # name -> StepResult
    @property
    def started_at(self) -> float | None: ...
    @property
    def finished_at(self) -> float | None: ...
    @property
    def ok(self) -> bool: ...
    @property
    def detached_failures(self) -> Sequence[Any]: ...


# ----- shared helpers -----------------------------------------------------------

def _state(r: Any) -> str:
    return NOT_RUN if r is None else safe_str(r.state.value, 20)


def _num(x: object, digits: int = 3) -> float | None:
    """A finite float rounded for JSON, or None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)  # type: ignore[arg-type]
    except Exception:
        return None
    return round(f, digits) if math.isfinite(f) else None


def _int(x: object) -> int | None:
    """An index or a count as a JSON int, or None."""
    if type(x) is int:
        return x
    f = _num(x, 0)
    return None if f is None else int(f)


def _finite(x: object) -> float | None:
    """``x`` if it is a finite number (a time, a duration), else None."""
    if type(x) is float or type(x) is int:
        return float(x) if math.isfinite(x) else None
    return None


def _text(x: object, limit: int) -> str:
    """``x`` as text (newlines kept) of at most ``limit`` characters; never raises."""
    return safe_str(x, limit, one_line=False)


def _error(e: object) -> dict[str, Any] | None:
    """``{"type", "message"}`` of an exception (or of a retry reason string)."""
    if e is None:
        return None
    if isinstance(e, BaseException):
        return {"type": type_name(e), "message": _text(e, MESSAGE_MAX_CHARS)}
    return {"type": None, "message": _text(e, MESSAGE_MAX_CHARS)}


def _is_override(r: Any) -> bool:
    reason = getattr(r, "reason", None)
    return type(reason) is str and reason == "override"


def _is_kept(r: Any, flow: RunView) -> bool:
    """The result predates the last run: kept by resume(), or an override."""
    if r is None or flow.started_at is None:
        return r is not None and _is_override(r)
    finished = _finite(r.finished_at)
    return _is_override(r) or (finished is not None and finished < flow.started_at - 1e-6)


def _retries_by_task(flow: RunView) -> dict[int, list[Fail]]:
    out: dict[int, list[Fail]] = {}
    for entry in getattr(flow, "retries", None) or ():
        try:
            task, item, attempt, started, finished, why = entry
        except (TypeError, ValueError):
            continue
        out.setdefault(task, []).append((item, attempt, started, finished, why))
    return out


def _counts(flow: RunView) -> dict[str, int]:
    g = flow.graph
    counts = {"tasks": len(g), "main": g.main_count, "detached": len(g) - g.main_count,
              "succeeded": 0, "failed": 0, "skipped": 0, "not_run": 0, "cached": 0,
              "retried_attempts": len(getattr(flow, "retries", None) or ())}
    for td in g.tasks:
        r = flow.results.get(td.name)
        if r is None:
            counts["not_run"] += 1
        else:
            counts[r.state.value] += 1
            counts["cached"] += r.cached is True
    return counts


def _status(flow: RunView) -> str:
    if flow.started_at is None:
        return NOT_RUN
    return "ok" if flow.ok else "failed"


def _item_of(it: Any) -> object:
    """The input item an ``ItemResult`` ran on (``NO_ITEM`` when it does not say)."""
    return getattr(it, "item", NO_ITEM)


def _bad_items(items: Iterable[Any]) -> int:
    return sum(1 for it in items if it is not None and it.state is not StepState.SUCCEEDED)
