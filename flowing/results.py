"""What a run produces: the state of each task and its result record.

``Failed`` stands in a ``for_each`` task's value at the position of each item
that failed when ``allow_failed_items`` tolerated it. It is falsy and keeps
``index``, ``item`` and ``error``, plus ``error_type`` and ``message`` (text
taken once, when it is made, with ``safe_str``). Its content, for digests
(``digest.py``) and equality, is the index, the item, the error's type and
message: never an address, so a value holding ``Failed`` objects has the
same digest in every process. It pickles with its error; an error that
cannot be pickled travels as a ``RuntimeError`` carrying its type and
message.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from .records import Record
from .text import safe_repr, safe_str, type_name


class StepState(str, enum.Enum):
    """Final state of a task in a run."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


class SkipCause(enum.Enum):
    """Why a task was SKIPPED (``StepResult.skip_cause``): data, read by ``Flow.ok`` and
    ``Flow.value``; the ``reason`` text is worded from it once (``skip_reason``)."""

    GATE = "gate"                               # its own ``when`` returned falsy
    DEPENDENCY_FAILED = "dependency failed"     # a dependency FAILED
    DEPENDENCY_SKIPPED = "dependency skipped"   # a dependency was SKIPPED
    NOT_STARTED = "not started"                 # fail_fast: a main task failed first


def skip_reason(cause: SkipCause, about: str) -> str:
    """The ``reason`` of a skip: ``about`` is the dependency's name or the stop reason
    (a ``GATE`` skip is worded by the attempt that ran the gate, ``about`` is its text)."""
    if cause is SkipCause.DEPENDENCY_FAILED:
        return f"dependency '{about}' failed"
    if cause is SkipCause.DEPENDENCY_SKIPPED:
        return f"dependency '{about}' was skipped"
    if cause is SkipCause.NOT_STARTED:
        return f"not started: {about}"
    return about


class FailedAttempt(NamedTuple):
    """One attempt that failed and was retried, as a run keeps it for its reports."""

    task: int                 # the task's index in the graph
    item: int | None          # the for_each item's index, or None for the whole task
    attempt: int              # 1-based
    started: float | None     # epoch seconds
    finished: float | None
    error: object             # the exception, or the rejection reason (retry_until)


class Deferred:
    """A value read on first use: a replayed value stored beside the journal.

    ``load()`` returns the value or raises (``flowing.errors.ValueUnavailable``
    when a stored value turns out missing or damaged).
    """

    __slots__ = ()
    # True for a value kept where it was made (a Dask worker): dependents that run
    # there receive it as it is, unfetched (``runners.calls.RemoteValue``)
    passed_as_is: ClassVar[bool] = False

    def load(self) -> Any:
        raise NotImplementedError

    def content_digest(self, digest: Callable[[Any], str | None]) -> str | None:
        """The value's content digest (``digest`` is the run's): of the loaded value,
        unless the value knows it from where it was made."""
        return digest(self.load())

    def journal_form(self) -> Any:
        """What the journal writes for this value: the value itself, unless the
        value was pickled where it was made (``journal.values.Pickled``)."""
        return self.load()


class StepResult(Record):
    """The outcome of one task in one run.

    ``duration_ms`` spans the first attempt's start to the last attempt's end
    (backoff waits included); ``attempts`` counts body calls, so a task stopped
    by ``when``/``validate``, a replayed (``cached``) task and an ``override``
    all have 0. ``items`` is only set for ``for_each`` tasks: one ``ItemResult``
    per input item, in input order (also when the task was replayed: each item
    is then ``cached``); their ``attempts`` is the largest item's.
    ``detached`` tells a detached side-effect from a main task. A SKIPPED
    result says why as data in ``skip_cause`` (a ``SkipCause``; ``reason`` is
    its wording).

    A replayed value stored beside the journal is read on first access to
    ``value`` (or ``items``), and kept; if it cannot be loaded then, that
    access raises ``JournalError`` naming the task (the next run recomputes it).
    """

    __slots__ = ("name", "state", "_value", "error", "_duration_ms", "attempts", "step_key",
                 "cached", "reason", "traceback", "started_at", "finished_at", "_items",
                 "detached", "skip_cause")
    _public = ("name", "state", "value", "error", "duration_ms", "attempts", "step_key",
               "cached", "reason", "traceback", "started_at", "finished_at", "items", "detached")

    # Spelled out rather than inherited: one is built per task, on the hot path.
    def __init__(self, name: str, state: StepState, value: Any = None,
                 error: BaseException | None = None, duration_ms: float | None = None,
                 attempts: int = 0, step_key: str | None = None, cached: bool = False,
                 reason: str | None = None, traceback: str | None = None,
                 started_at: float | None = None, finished_at: float | None = None,
                 items: list[ItemResult] | None = None, detached: bool = False,
                 skip_cause: SkipCause | None = None) -> None:
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
        self.skip_cause = skip_cause

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


class Failed:
    """A ``for_each`` item that failed for good, in the task's value (falsy).

    ``allow_failed_items`` lets the task succeed anyway; its dependents see
    one ``Failed`` per missing item and can tell it by ``if not r`` or
    ``isinstance(r, flowing.Failed)``.
    """

    __slots__ = ("index", "item", "error", "error_type", "message")

    def __init__(self, index: int, item: Any, error: BaseException | None,
                 error_type: str | None = None, message: str | None = None) -> None:
        self.index = index
        self.item = item
        self.error = error
        self.error_type = type_name(error) if error_type is None else error_type
        self.message = safe_str(error, 500) if message is None else message

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return (f"Failed({self.index}, {safe_repr(self.item, 40)}, "
                f"{self.error_type}: {safe_str(self.message, 120)})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Failed:
            return NotImplemented
        if (self.index, self.error_type, self.message) != (
                other.index, other.error_type, other.message):
            return False
        try:
            return bool(self.item is other.item or self.item == other.item)
        except Exception:  # an item whose __eq__ raises
            return False

    def __hash__(self) -> int:
        return hash((self.index, self.error_type, self.message))

    def __reduce__(self) -> tuple[Any, ...]:
        import pickle  # lazy: keeps import flowing fast

        error: BaseException | None = self.error
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            error = RuntimeError(f"{self.error_type}: {self.message}")
        return (Failed, (self.index, self.item, error, self.error_type, self.message))
