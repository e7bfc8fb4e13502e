"""The body's view of its run: ``flowing.current()``.

Inside a task body (sync, async, a ``for_each`` item, or a body running in
another process) ``current()`` answers which task and attempt this is, the
item being processed, the attempt's deadline, and whether the body has been
told to stop. A body is told to stop (``cancelled()``) when its attempt
timed out, on Ctrl-C, and when fail_fast stops the run; a sync body that
polls it can end cleanly, which is the one honest answer to "a thread cannot
be killed".

How it costs nothing for bodies that don't ask: the attempt sets one
``contextvars.ContextVar`` to an object it already has (the job, or in
another process a small snapshot of it); ``current()`` builds the read-only
view only when called. Context variables follow the body into the threads
and coroutines it was started on, and nowhere else.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, Protocol

from .errors import Cancelled

__all__ = ["Cancelled", "RunContext", "current"]



class _Source(Protocol):
    """What an attempt puts in the context variable (a ``Job`` or a ``Snapshot``)."""

    def context_fields(self) -> tuple[str, int, int, int | None, Any, float | None]: ...

    def is_cancelled(self) -> bool: ...


# The attempt running in this thread or coroutine, or None outside a body.
_running: ContextVar[_Source | None] = ContextVar("flowing_current", default=None)


class RunContext:
    """Read-only facts about the attempt that is running this body."""

    __slots__ = ("_source", "task", "attempt", "max_attempts", "item_index", "item", "deadline")

    def __init__(self, source: _Source) -> None:
        self._source = source
        (self.task, self.attempt, self.max_attempts, self.item_index, self.item,
         self.deadline) = source.context_fields()

    def remaining_s(self) -> float | None:
        """Seconds left before this attempt's deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())

    def cancelled(self) -> bool:
        """True once the body has been told to stop (timeout, Ctrl-C, fail_fast)."""
        return self._source.is_cancelled()

    def raise_if_cancelled(self) -> None:
        """Raise ``flowing.Cancelled`` if the body has been told to stop."""
        if self._source.is_cancelled():
            raise Cancelled(f"task '{self.task}' was told to stop (attempt {self.attempt})")

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "deadline"):  # every slot is set once, in __init__
            raise AttributeError("flowing.current() is read-only")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        item = f", item_index={self.item_index}" if self.item_index is not None else ""
        return (f"RunContext(task={self.task!r}, attempt={self.attempt}/{self.max_attempts}"
                f"{item})")


def current() -> RunContext:
    """The running body's context; ``RuntimeError`` when called outside a task body."""
    source = _running.get()
    if source is None:
        raise RuntimeError("flowing.current() was called outside a task body; call it from "
                           "inside a function that a Flow runs as a task")
    return RunContext(source)


class Snapshot:
    """The context fields of an attempt, shipped with a body to another process.

    There the flow's own stop signals cannot be seen, so ``cancelled()`` is
    true once the deadline has passed.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: tuple[str, int, int, int | None, Any, float | None]) -> None:
        self.fields = fields

    def context_fields(self) -> tuple[str, int, int, int | None, Any, float | None]:
        return self.fields

    def is_cancelled(self) -> bool:
        deadline = self.fields[5]
        return deadline is not None and time.time() >= deadline


def enter(source: _Source) -> object:
    """Make ``source`` the current attempt; returns the token for ``leave``."""
    return _running.set(source)


def leave(token: object) -> None:
    _running.reset(token)  # type: ignore[arg-type]
