"""Seeing a run: the JSON report (``build_report``).

``build_report(flow)`` -> a dict that ``json.dumps`` always accepts (strict
JSON: no NaN, string keys), whatever the tasks returned. A task's ``value``
is included only when it is small plain JSON; otherwise the report gives its
type and a short preview. ``for_each`` tasks get item counts and their failed
items, each with its index and a short repr of the item itself.

Like the flowchart (``mermaid.to_mermaid``) and the timeline
(``timeline.timeline_svg``), it reads only what a ``Flow`` shows to everyone
(``runview.RunView``) and never raises because of what tasks returned or
raised (see ``runview``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..results import StepState
from ..text import NO_ITEM, item_label, items_line, safe_repr, safe_str, type_name
from ..version import __version__
from .runview import (
    ITEM_REPR_CHARS,
    MESSAGE_MAX_CHARS,
    Fail,
    RunView,
    _counts,
    _error,
    _finite,
    _int,
    _is_kept,
    _item_of,
    _num,
    _retries_by_task,
    _state,
    _status,
    _text,
)

REPORT_VERSION = 1
VALUE_MAX_CHARS = 1000  # a value is embedded when its JSON is at most this long
TRACEBACK_MAX_CHARS = 4000
MAX_LISTED = 1000       # failed item indices / retries listed per task
MAX_FAILED_ITEMS = 100  # failed items described in full (index, item, error) per task


# ----- JSON report --------------------------------------------------------------

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _small_plain(value: object, budget: int = VALUE_MAX_CHARS) -> bool:
    """Cheap pre-check: only dict/list/str/int/float/bool/None (exact types), string
    keys, finite floats, and not obviously bigger than ``budget`` characters."""
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _PLAIN_SCALARS:
            if t is float and not math.isfinite(v):
                return False
            budget -= len(v) + 2 if t is str else 1
        elif t is list:
            budget -= 2 + len(v)
            stack.extend(v)
        elif t is dict:
            budget -= 2 + len(v)
            for k, item in v.items():
                if type(k) is not str:
                    return False
                budget -= len(k) + 3
                stack.append(item)
        else:
            return False
        if budget < 0:
            return False
    return True


def plain_json_value(value: object) -> tuple[bool, Any]:
    """``(True, value)`` if ``value`` is small JSON that round-trips exactly, else
    ``(False, None)``."""
    import json  # lazy: keeps import flowing fast

    if not _small_plain(value):
        return False, None
    try:
        text = json.dumps(value, allow_nan=False)
        if len(text) > VALUE_MAX_CHARS or json.loads(text) != value:
            return False, None
    except (TypeError, ValueError, RecursionError):
        return False, None
    return True, value


def _preview(value: object, width: int = 200) -> str:
    return safe_repr(value, width)


def _value_fields(value: object) -> dict[str, Any]:
    if value is None:
        return {"value": None}
    ok, v = plain_json_value(value)
    if ok:
        return {"value": v}
    return {"value_type": type_name(value), "value_preview": _preview(value)}


def _failed_item(it: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": _int(getattr(it, "index", None)),
                             "state": _state(it)}
    item = _item_of(it)
    if item is not NO_ITEM:
        entry["item"] = safe_repr(item, ITEM_REPR_CHARS)
    entry["label"] = item_label(getattr(it, "index", "?"), item, ITEM_REPR_CHARS)
    entry["attempts"] = _int(getattr(it, "attempts", 0)) or 0
    entry["error"] = _error(getattr(it, "error", None))
    return entry


def _items_summary(items: Sequence[Any], allowed: int | None = None) -> dict[str, Any]:
    """Counts of a ``for_each`` task's items and its failed items (index, item repr,
    attempts, error); ``line`` says the same in one line."""
    summary: dict[str, Any] = {"total": len(items), "succeeded": 0, "failed": 0,
                               "skipped": 0, "not_run": 0, "cached": 0, "retried": 0}
    failed = []
    for it in items:
        if it is None:
            summary["not_run"] += 1
            continue
        state = _state(it)
        if state in summary:
            summary[state] += 1
        summary["cached"] += getattr(it, "cached", False) is True
        summary["retried"] += (_int(getattr(it, "attempts", 0)) or 0) > 1
        if it.state is not StepState.SUCCEEDED:
            failed.append(it)
    summary["line"] = items_line(items, width=300, allowed=allowed)
    if allowed is not None:
        summary["allowed_failures"] = allowed
    summary["failed_indices"] = [_int(getattr(it, "index", None))
                                 for it in failed[:MAX_LISTED]]
    if len(failed) > MAX_LISTED:
        summary["failed_indices_truncated"] = True
    summary["failed_items"] = [_failed_item(it) for it in failed[:MAX_FAILED_ITEMS]]
    if len(failed) > MAX_FAILED_ITEMS:
        summary["failed_items_truncated"] = True
    if failed:
        summary["first_failure"] = _failed_item(failed[0])
    return summary


def _task_report(flow: RunView, i: int, td: Any, r: Any,
                 retries: list[Fail] | None) -> dict[str, Any]:
    g = flow.graph
    tasks = g.tasks
    entry: dict[str, Any] = {
        "name": td.name,
        "state": _state(r),
        "detached": bool(g.detached[i]),
        "layer": g.layer[i],
        "depends_on": [tasks[d].name for d in g.deps[i]],
        "attempts": 0,
        "duration_ms": None,
        "cached": False,
        "kept": False,
        "reason": None,
        "error": None,
        "started_at": None,
        "finished_at": None,
    }
    if r is not None:
        entry.update(
            attempts=_int(r.attempts) or 0,
            duration_ms=_num(r.duration_ms),
            cached=r.cached is True,
            kept=_is_kept(r, flow),
            reason=None if r.reason is None else _text(r.reason, MESSAGE_MAX_CHARS),
            error=_error(r.error),
            started_at=_num(r.started_at, 6),
            finished_at=_num(r.finished_at, 6),
        )
        if r.step_key is not None:
            entry["step_key"] = _text(r.step_key, 200)
        why = _why_ran(flow, td.name)
        if why is not None and r.cached is not True:
            entry["why"] = why
        if r.error is not None and r.traceback is not None:
            tb = _text(r.traceback, 10 ** 9)
            entry["traceback"] = tb if len(tb) <= TRACEBACK_MAX_CHARS else (
                "..." + tb[-(TRACEBACK_MAX_CHARS - 3):])
        if r.items is not None:
            allowing = getattr(td, "allowed_failures", None)
            entry["items"] = _items_summary(r.items, allowing(len(r.items))
                                            if callable(allowing) else None)
        elif getattr(r, "value_loaded", True):
            entry.update(_value_fields(r.value))
        else:  # a replayed value stored beside the journal: not read just to be reported
            entry.update(value_type="journaled value, not loaded",
                         value_preview=safe_repr(getattr(r, "_value", None), 200))
    if retries:
        entry["retries"] = [
            {"attempt": _int(attempt), "item": _int(item), "started_at": _num(s, 6),
             "finished_at": _num(f, 6), "duration_ms": _duration_ms(s, f),
             "error": _error(why)}
            for item, attempt, s, f, why in retries[:MAX_LISTED]]
    return entry


def _why_ran(flow: RunView, name: str) -> str | None:
    """Why a task ran although the journal had it (``flow.why``: name -> text), if known."""
    why = getattr(flow, "why", None)
    if not isinstance(why, dict):
        return None
    text = why.get(name)
    return None if text is None else _text(text, MESSAGE_MAX_CHARS)


def _duration_ms(start: object, end: object) -> float | None:
    s, f = _finite(start), _finite(end)
    return None if s is None or f is None else _num((f - s) * 1000)


def _setting(x: object) -> object:
    """A setting as plain JSON: a str, a finite number, a bool or None."""
    if x is None or type(x) in (bool, str):
        return x
    if type(x) in (int, float):
        return _num(x, 6)
    return safe_str(x, 500)


def build_report(flow: RunView) -> dict[str, Any]:
    """A JSON-serialisable dict of the last run of ``flow``.

    ``json.dumps(build_report(flow))`` always works (and is strict JSON). Keys:

    * ``status``: ``"ok"``, ``"failed"`` or ``"not run"``; ``ok`` (as
      ``flow.ok``); ``interrupted`` (some main task has no result);
      ``started_at``/``finished_at`` (epoch s), ``duration_ms``;
    * ``counts``: tasks, main, detached, succeeded, failed, skipped, not_run,
      cached, retried_attempts; ``detached_failures`` (names); ``plan``;
      ``settings`` (max_workers, fail_fast, schedule, journal_path);
    * ``tasks``: name -> {name, state (succeeded/failed/skipped/not run),
      detached, layer, depends_on, attempts, duration_ms, cached, kept (result
      from before this run: resume() or override), reason, error {type,
      message}, started_at, finished_at, [step_key], [why (it ran although
      journaled: "cache=False", "expired ...", "a dependency's value changed")],
      [traceback],
      [retries: [{attempt, item, started_at, finished_at, duration_ms, error}]],
      and either ``items`` or ``value`` (only when small plain JSON that
      round-trips, ``VALUE_MAX_CHARS``) or ``value_type`` + ``value_preview``}.
    * ``items`` (``for_each`` tasks): total, succeeded, failed, skipped,
      not_run, cached, retried (counts); ``line`` (the same in one line, with
      the first failures); failed_indices; ``failed_items``: [{index, item (a
      short repr of the input item), label (``item 16 (17)``), state,
      attempts, error}] (at most ``MAX_FAILED_ITEMS``); first_failure;
      ``allowed_failures`` (with ``allow_failed_items``: how many may fail).
    """

    g = flow.graph
    retries = _retries_by_task(flow)
    started, finished = flow.started_at, flow.finished_at
    duration = _duration_ms(started, finished)
    main_missing = any(flow.results.get(g.tasks[i].name) is None for i in range(g.main_count))
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "flowing_version": __version__,
        "status": _status(flow),
        "ok": bool(flow.ok) if started is not None else False,
        "interrupted": bool(started is not None and main_missing),
        "started_at": _num(started, 6),
        "finished_at": _num(finished, 6),
        "duration_ms": duration,
        "settings": {name: _setting(getattr(flow, name, None))
                     for name in ("max_workers", "fail_fast", "schedule", "journal_path")},
        "counts": _counts(flow),
        "detached_failures": [safe_str(r.name, 500) for r in flow.detached_failures],
        "plan": [[tn for tn in layer] for layer in g.plan()],
        "tasks": {},
    }
    for i, td in enumerate(g.tasks):
        report["tasks"][td.name] = _task_report(flow, i, td, flow.results.get(td.name),
                                                retries.get(i))
    return report
