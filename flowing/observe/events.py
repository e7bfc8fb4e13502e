"""What a run tells the outside world: typed events.

The scheduler thread creates every event and hands it to ``Reporter.emit``
(``reporter.py``, which turns them into log lines and progress and calls the
user's ``on_event`` hook), so hooks see events in order and from one
thread. An event is a plain record (``Record``) of what happened: a task
and its attempt, timings, the error or reason, a ``for_each`` task's items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..records import Record


class Event(Record):
    """Base of all events. ``at`` is epoch seconds; events are read-only by convention."""

    __slots__ = ("at",)
    at: float


class FlowStarted(Event):
    __slots__ = ("at", "tasks", "layers", "max_workers", "schedule")
    tasks: int
    layers: int
    max_workers: int
    schedule: str

    def __init__(self, at: float, tasks: int, layers: int, max_workers: int,
                 schedule: str) -> None:
        self.at, self.tasks, self.layers = at, tasks, layers
        self.max_workers, self.schedule = max_workers, schedule


class FlowFinished(Event):
    """``counts``: state name -> number of tasks."""

    __slots__ = ("at", "ok", "duration_ms", "counts", "interrupted")
    ok: bool
    duration_ms: float
    counts: Mapping[str, int] | None
    interrupted: bool

    def __init__(self, at: float, ok: bool, duration_ms: float,
                 counts: Mapping[str, int] | None = None, interrupted: bool = False) -> None:
        self.at, self.ok, self.duration_ms = at, ok, duration_ms
        self.counts, self.interrupted = counts, interrupted


class TaskStarted(Event):
    """An attempt of a task starts. ``why``: why it runs although a journal is open
    (``"code of 'scale' changed"``, ``"'up' returned a different value"``,
    ``"expired (older than cache_ttl_s=60)"``, ``"cache=False"``, ``"not cached: <which
    value>"``, ``"re-run on request"``: see ``flowing.replay.why``), None when it simply has no
    entry yet."""

    __slots__ = ("at", "task", "attempt", "detached", "why")
    task: str
    attempt: int
    detached: bool
    why: str | None

    def __init__(self, at: float, task: str, attempt: int, detached: bool = False,
                 why: str | None = None) -> None:
        self.at, self.task, self.attempt = at, task, attempt
        self.detached, self.why = detached, why


class TaskRetrying(Event):
    """An attempt failed and another one follows after ``delay_s`` seconds.

    ``attempt``: the attempt that failed; ``duration_ms``: how long it ran
    (None when not known); ``error``: its exception, or None when
    ``retry_until`` rejected the value (then ``reason`` says so). For a
    ``for_each`` item, ``item`` is its index and ``item_repr`` a short repr
    of the item itself (``safe_repr``); both None for a whole task.
    """

    __slots__ = ("at", "task", "attempt", "max_attempts", "delay_s", "error", "reason", "item",
                 "duration_ms", "item_repr")
    task: str
    attempt: int
    max_attempts: int
    delay_s: float
    error: BaseException | None
    reason: str | None
    item: int | None
    duration_ms: float | None
    item_repr: str | None

    def __init__(self, at: float, task: str, attempt: int, max_attempts: int, delay_s: float,
                 error: BaseException | None = None, reason: str | None = None,
                 item: int | None = None, duration_ms: float | None = None,
                 item_repr: str | None = None) -> None:
        self.at, self.task, self.attempt, self.max_attempts = at, task, attempt, max_attempts
        self.delay_s, self.error, self.reason, self.item = delay_s, error, reason, item
        self.duration_ms, self.item_repr = duration_ms, item_repr


class TaskSucceeded(Event):
    """``items``: the ``ItemResult``s of a ``for_each`` task, else None; ``allowed``:
    how many items its ``allow_failed_items`` lets fail, else None."""

    __slots__ = ("at", "task", "attempts", "duration_ms", "detached", "items", "allowed")
    task: str
    attempts: int
    duration_ms: float
    detached: bool
    items: Sequence[Any] | None
    allowed: int | None

    def __init__(self, at: float, task: str, attempts: int, duration_ms: float,
                 detached: bool = False, items: Sequence[Any] | None = None,
                 allowed: int | None = None) -> None:
        self.at, self.task, self.attempts, self.duration_ms = at, task, attempts, duration_ms
        self.detached, self.items, self.allowed = detached, items, allowed


class TaskFailed(Event):
    """``items``: the ``ItemResult``s of a ``for_each`` task, else None; ``allowed``:
    how many items its ``allow_failed_items`` lets fail, else None."""

    __slots__ = ("at", "task", "attempts", "duration_ms", "error", "reason", "detached", "items",
                 "allowed")
    task: str
    attempts: int
    duration_ms: float
    error: BaseException | None
    reason: str | None
    detached: bool
    items: Sequence[Any] | None
    allowed: int | None

    def __init__(self, at: float, task: str, attempts: int, duration_ms: float,
                 error: BaseException | None = None, reason: str | None = None,
                 detached: bool = False, items: Sequence[Any] | None = None,
                 allowed: int | None = None) -> None:
        self.at, self.task, self.attempts, self.duration_ms = at, task, attempts, duration_ms
        self.error, self.reason, self.detached, self.items = error, reason, detached, items
        self.allowed = allowed


class TaskSkipped(Event):
    __slots__ = ("at", "task", "reason", "detached")
    task: str
    reason: str
    detached: bool

    def __init__(self, at: float, task: str, reason: str, detached: bool = False) -> None:
        self.at, self.task, self.reason, self.detached = at, task, reason, detached


class TaskCached(Event):
    """A task's result was replayed (``reason``: from where, ``"journal"``)."""

    __slots__ = ("at", "task", "step_key", "reason")
    task: str
    step_key: str | None
    reason: str

    def __init__(self, at: float, task: str, step_key: str | None = None,
                 reason: str = "journal") -> None:
        self.at, self.task, self.step_key, self.reason = at, task, step_key, reason
