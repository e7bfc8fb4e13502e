"""``Beside``: one call run on a daemon thread of its own while the caller does
something else, for work that releases the GIL (hashing buffers in place beside
a write and its fsync, or beside another digest), so two cores share it.

``result()`` joins the thread and returns the call's value, or raises its
exception on the caller's thread. The wait has no timeout on purpose: only
work that always ends (hashing bytes held in memory) is run this way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Beside"]


class Beside(Generic[T]):
    """``fn()`` on a daemon thread named ``name``, started at once."""

    __slots__ = ("_fn", "_thread", "_value", "_error")

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._fn: Callable[[], T] | None = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fn, self._fn = self._fn, None  # (holds nothing of the call once it ran)
        assert fn is not None
        try:
            self._value = fn()
        except BaseException as exc:  # raised again by result(), on the caller's thread
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
