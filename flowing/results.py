"""What a run produces: the state of each task and its result record."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class StepState(str, enum.Enum):
    """Final state of a task in a run."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True, eq=False)
class StepResult:
    """The outcome of one task in one run.

    ``duration_ms`` spans the first attempt's start to the last attempt's end
    (backoff waits included); ``attempts`` counts body calls, so a task stopped
    by ``when``/``validate``, a replayed (``cached``) task and an ``override``
    all have 0. ``items`` is only set for ``for_each`` tasks: one ``ItemResult``
    per input item, in input order.
    """

    name: str
    state: StepState
    value: Any = None
    error: BaseException | None = None
    duration_ms: float = 0.0
    attempts: int = 0
    step_key: str | None = None
    cached: bool = False
    reason: str | None = None
    traceback: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    items: list | None = None

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


@dataclass(slots=True, eq=False)
class ItemResult:
    """The outcome of one item of a ``for_each`` task."""

    index: int
    state: StepState
    value: Any = None
    error: BaseException | None = None
    attempts: int = 0
    cached: bool = False
    traceback: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
