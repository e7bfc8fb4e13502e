"""What a run produces: the state of each task and its result record."""

from __future__ import annotations

import enum

from .records import Record


class StepState(str, enum.Enum):
    """Final state of a task in a run."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


class StepResult(Record):
    """The outcome of one task in one run.

    ``duration_ms`` spans the first attempt's start to the last attempt's end
    (backoff waits included); ``attempts`` counts body calls, so a task stopped
    by ``when``/``validate``, a replayed (``cached``) task and an ``override``
    all have 0. ``items`` is only set for ``for_each`` tasks: one ``ItemResult``
    per input item, in input order.
    """

    __slots__ = ("name", "state", "value", "error", "_duration_ms", "attempts", "step_key",
                 "cached", "reason", "traceback", "started_at", "finished_at", "items")

    # Spelled out rather than inherited: one is built per task, on the hot path.
    def __init__(self, name, state, value=None, error=None, duration_ms=None, attempts=0,
                 step_key=None, cached=False, reason=None, traceback=None, started_at=None,
                 finished_at=None, items=None):
        self.name = name
        self.state = state
        self.value = value
        self.error = error
        self._duration_ms = duration_ms  # None: derived from the timestamps
        self.attempts = attempts
        self.step_key = step_key
        self.cached = cached
        self.reason = reason
        self.traceback = traceback
        self.started_at = started_at
        self.finished_at = finished_at
        self.items = items

    @property
    def duration_ms(self) -> float:
        # Derived unless given: at 100k tasks a third float per result is 2.4 MB.
        if self._duration_ms is not None:
            return self._duration_ms
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return (self.finished_at - self.started_at) * 1000

    @duration_ms.setter
    def duration_ms(self, value) -> None:
        self._duration_ms = value

    @property
    def ok(self) -> bool:
        return self.state is StepState.SUCCEEDED

    def __repr__(self) -> str:
        extra = ""
        if self.error is not None:
            extra = f", error={type(self.error).__name__}: {self.error}"
        elif self.reason:
            extra = f", reason={self.reason!r}"
        return (f"StepResult({self.name!r}, {self.state.value}, attempts={self.attempts}"
                f"{', cached' if self.cached else ''}{extra})")


class ItemResult(Record):
    """The outcome of one item of a ``for_each`` task."""

    __slots__ = ("index", "state", "value", "error", "attempts", "cached", "traceback",
                 "started_at", "finished_at")
    _defaults = dict(value=None, error=None, attempts=0, cached=False, traceback=None,
                     started_at=None, finished_at=None)

    @property
    def ok(self) -> bool:
        return self.state is StepState.SUCCEEDED

    def __repr__(self) -> str:
        extra = f", error={type(self.error).__name__}: {self.error}" if self.error else ""
        return (f"ItemResult({self.index}, {self.state.value}, attempts={self.attempts}"
                f"{', cached' if self.cached else ''}{extra})")
