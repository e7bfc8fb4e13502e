"""What a run produces: the state of each task and its result record."""

from __future__ import annotations

import enum
from typing import Any

from .events import safe_repr, safe_str
from .records import Record


class StepState(str, enum.Enum):
    """Final state of a task in a run."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


class Deferred:
    """A value read on first use: a replayed value stored beside the journal.

    ``load()`` returns the value or raises (``flowing.journal.ValueUnavailable``
    when a stored value turns out missing or damaged).
    """

    __slots__ = ()

    def load(self) -> Any:
        raise NotImplementedError


class StepResult(Record):
    """The outcome of one task in one run.

    ``duration_ms`` spans the first attempt's start to the last attempt's end
    (backoff waits included); ``attempts`` counts body calls, so a task stopped
    by ``when``/``validate``, a replayed (``cached``) task and an ``override``
    all have 0. ``items`` is only set for ``for_each`` tasks: one ``ItemResult``
    per input item, in input order (also when the task was replayed: each item
    is then ``cached``); their ``attempts`` is the largest item's.
    ``detached`` tells a detached side-effect from a main task.

    A replayed value stored beside the journal is read on first access to
    ``value`` (or ``items``), and kept; if it cannot be loaded then, that
    access raises ``JournalError`` naming the task (the next run recomputes it).
    """

    __slots__ = ("name", "state", "_value", "error", "_duration_ms", "attempts", "step_key",
                 "cached", "reason", "traceback", "started_at", "finished_at", "_items",
                 "detached")
    _public = ("name", "state", "value", "error", "duration_ms", "attempts", "step_key",
               "cached", "reason", "traceback", "started_at", "finished_at", "items", "detached")

    # Spelled out rather than inherited: one is built per task, on the hot path.
    def __init__(self, name: str, state: StepState, value: Any = None,
                 error: BaseException | None = None, duration_ms: float | None = None,
                 attempts: int = 0, step_key: str | None = None, cached: bool = False,
                 reason: str | None = None, traceback: str | None = None,
                 started_at: float | None = None, finished_at: float | None = None,
                 items: list[ItemResult] | None = None, detached: bool = False) -> None:
        self.name = name
        self.state = state
        self._value = value
        self.error = error
        self._duration_ms = duration_ms  # None: derived from the timestamps
        self.attempts = attempts
        self.step_key = step_key
        self.cached = cached
        self.reason = reason
        self.traceback = traceback
        self.started_at = started_at
        self.finished_at = finished_at
        self._items = items
        self.detached = detached

    @property
    def value(self) -> Any:
        v = self._value
        if isinstance(v, Deferred):
            v = self._value = v.load()
        return v

    @value.setter
    def value(self, value: Any) -> None:
        self._value = value

    @property
    def value_loaded(self) -> bool:
        """False while ``value`` is a replayed value not read yet (reading it loads it)."""
        return not isinstance(self._value, Deferred) and not isinstance(self._items, Deferred)

    @property
    def items(self) -> list[ItemResult] | None:
        v = self._items
        if isinstance(v, Deferred):
            v = self._items = v.load()
        return v

    @items.setter
    def items(self, items: list[ItemResult] | None) -> None:
        self._items = items

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name, None) for name in self._public}

    @property
    def duration_ms(self) -> float:
        # Derived unless given: at 100k tasks a third float per result is 2.4 MB.
        if self._duration_ms is not None:
            return self._duration_ms
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return (self.finished_at - self.started_at) * 1000

    @duration_ms.setter
    def duration_ms(self, value: float | None) -> None:
        self._duration_ms = value

    @property
    def ok(self) -> bool:
        return self.state is StepState.SUCCEEDED

    def __repr__(self) -> str:
        extra = ""
        if self.error is not None:
            extra = f", error={type(self.error).__name__}: {safe_str(self.error)}"
        elif self.reason is not None:
            extra = f", reason={safe_repr(self.reason, 200)}"
        return (f"StepResult({self.name!r}, {self.state.value}, attempts={self.attempts}"
                f"{', cached' if self.cached else ''}{extra})")


class ItemResult(Record):
    """The outcome of one item of a ``for_each`` task."""

    __slots__ = ("index", "state", "value", "error", "attempts", "cached", "traceback",
                 "started_at", "finished_at", "item")

    # Spelled out rather than inherited: a replayed for_each task builds one per item.
    def __init__(self, index: int, state: StepState, value: Any = None,
                 error: BaseException | None = None, attempts: int = 0, cached: bool = False,
                 traceback: str | None = None, started_at: float | None = None,
                 finished_at: float | None = None, item: Any = None) -> None:
        self.index = index
        self.state = state
        self.value = value
        self.error = error
        self.attempts = attempts
        self.cached = cached
        self.traceback = traceback
        self.started_at = started_at
        self.finished_at = finished_at
        self.item = item  # the input item itself

    @property
    def ok(self) -> bool:
        return self.state is StepState.SUCCEEDED

    def __repr__(self) -> str:
        extra = (f", error={type(self.error).__name__}: {safe_str(self.error)}"
                 if self.error is not None else "")
        return (f"ItemResult({self.index}, {self.state.value}, attempts={self.attempts}"
                f"{', cached' if self.cached else ''}{extra})")
