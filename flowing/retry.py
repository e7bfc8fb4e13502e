"""Retry policy: which failures are retried, and how long to wait before the next try.

A task's retry settings are one record, ``RetryPolicy`` (``TaskDef.retry_policy``:
``retries``, ``backoff_base_ms``, ``max_backoff_ms``, ``retry_on``); a new
setting is a new field there. Small pieces, composed per task:
``RetryPolicy.retryable`` decides from the error and ``retry_on``;
``backoff_delay`` is capped exponential backoff with equal jitter;
``retry_after_hint`` reads the server's own wait hint;
``RetryPolicy.next_delay`` combines them with the attempt budget. The attempt
module asks ``next_delay`` once per failed attempt; the scheduler only waits.

The ``retry_after`` hint is user (or library) data and is read defensively:
only a finite real number >= 0 (int, float, Decimal, Fraction; not a bool)
counts, in seconds, and a hint above ``MAX_RETRY_AFTER_S`` is cut to it.
Anything else (a property that raises, NaN, infinity, a negative number, a
string such as ``"120"``) is ignored, and ``retry_after_problem`` says why
in one line, for the warning the attempt module logs once per task.
``None`` is "no hint", not a problem. None of these functions raises,
whatever the error object does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

from .interrupts import is_terminal
from .text import clip, error_line, safe_repr, type_name

# The longest wait a retry_after hint can impose: a day. A hint beyond it is
# cut to it (and reported): no input may make a run wait for ever.
MAX_RETRY_AFTER_S = 86_400.0

# What backoff_delay falls back to when a task's cap is not a usable number
# (TaskDef rejects those; this is the last line of defence), in ms.
DEFAULT_MAX_BACKOFF_MS = 30_000.0


def _usable_ms(x: object, default: float) -> float:
    try:
        value = float(x)  # type: ignore[arg-type]
    except Exception:
        return default
    return value if math.isfinite(value) and value >= 0 else default


def backoff_delay(attempt: int, base_ms: float, max_ms: float,
                  rand: Callable[[], float] | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based).

    The nominal delay ``d = min(base * 2**(attempt-1), max)`` is drawn from
    ``[d/2, d]`` (equal jitter): retries of many tasks that failed together
    spread out instead of hitting the service again in lockstep. The result
    is always finite, between 0 and ``max`` (a base or cap that is not a
    finite number >= 0 falls back to 0 and ``DEFAULT_MAX_BACKOFF_MS``).
    """
    if rand is None:
        import random  # only retries pay for it

        rand = random.random
    base = _usable_ms(base_ms, 0.0)
    cap = _usable_ms(max_ms, DEFAULT_MAX_BACKOFF_MS)
    try:
        grown = base * 2.0 ** (max(1, int(attempt)) - 1)
    except (OverflowError, TypeError, ValueError):  # thousands of attempts: capped long ago
        grown = math.inf if base else 0.0
    nominal = min(grown, cap) / 1000.0
    try:
        share = float(rand())
    except Exception:
        share = 0.5
    share = min(1.0, max(0.0, share)) if math.isfinite(share) else 0.5
    return nominal / 2 + share * nominal / 2


def _read_retry_after(error: object) -> tuple[float | None, str | None]:
    """``(seconds or None, problem or None)`` for ``error.retry_after``."""
    if error is None:
        return None, None
    try:
        hint = getattr(error, "retry_after", None)
    except BaseException as exc:  # SystemExit from a property too: the hint is ignored

        if is_terminal(exc):
            raise

        return None, f"its retry_after raised {error_line(exc, 80)}; ignored"
    if hint is None:
        return None, None

    shown = f"{safe_repr(hint, 30)} ({type_name(hint)})"
    try:
        # a real number (Decimal is registered only as a Number), never a bool
        real = (isinstance(hint, numbers.Real) or (isinstance(hint, numbers.Number) and
                                                   not isinstance(hint, numbers.Complex))
                ) and not isinstance(hint, bool)
        try:
            seconds = float(hint) if real else math.nan
        except OverflowError:  # an int beyond any float: huge, but finite
            seconds = MAX_RETRY_AFTER_S * 2 if hint > 0 else -1.0
    except BaseException as exc:  # a number type whose own code raises (SystemExit too)

        if is_terminal(exc):
            raise
        real, seconds = False, math.nan
    if not real:
        return None, f"its retry_after is {shown}, not a number of seconds; ignored"
    if not math.isfinite(seconds) or seconds < 0:
        return None, (f"its retry_after is {shown}, not a finite number of seconds >= 0; "
                      "ignored")
    if seconds > MAX_RETRY_AFTER_S:
        return MAX_RETRY_AFTER_S, (f"its retry_after is {shown}, more than "
                                   f"{MAX_RETRY_AFTER_S:g}s; waiting {MAX_RETRY_AFTER_S:g}s")
    return seconds, None


def retry_after_hint(error: BaseException | None) -> float | None:
    """The ``retry_after`` seconds an exception carries (HTTP 429/503 clients set it).

    None unless it is a finite real number >= 0 (a bool is not); at most
    ``MAX_RETRY_AFTER_S``. Never raises.
    """
    return _read_retry_after(error)[0]


def retry_after_problem(error: BaseException | None, task: str | None = None) -> str | None:
    """One line saying why ``error.retry_after`` is ignored (or cut), or None when it is
    fine or absent. With ``task``, the line names it::

        task 'fetch': HTTPError: its retry_after is 'soon' (str), not a number of
        seconds; ignored
    """
    problem = _read_retry_after(error)[1]
    if problem is None:
        return None

    head = f"task '{clip(task, 60)}': " if task is not None else ""
    return clip(f"{head}{type_name(error)}: {problem}", 300)


class RetryPolicy(NamedTuple):
    """One task's retry settings (``TaskDef.retry_policy``), immutable.

    ``retries``         attempts after the first (``retry=``);
    ``backoff_base_ms`` the first backoff (``retry_backoff_base_ms=``);
    ``max_backoff_ms``  the cap on a backoff (``retry_max_backoff_ms=``);
    ``retry_on``        the exception classes that are retried (``retry_on=``).

    A NamedTuple, not a dataclass: ``import flowing`` does not import
    ``dataclasses`` (and ``inspect`` with it).
    """

    retries: int
    backoff_base_ms: float
    max_backoff_ms: float
    retry_on: tuple[type[BaseException], ...]

    def retryable(self, error: BaseException | None) -> bool:
        """A rejection by ``retry_until`` (error None) is always retryable; an exception
        only when it matches ``retry_on``. Never raises (a ``retry_on`` class whose
        ``__instancecheck__`` raises: not retryable)."""
        if error is None:
            return True
        try:
            return isinstance(error, self.retry_on)
        except Exception:
            return False

    def next_delay(self, attempt: int, error: BaseException | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None when it must not happen.

        Never raises: settings that are not usable (not numbers) mean no retry.
        """
        try:
            if attempt >= 1 + self.retries or not self.retryable(error):
                return None
            delay = backoff_delay(attempt, self.backoff_base_ms, self.max_backoff_ms)
        except Exception:
            return None
        hint = retry_after_hint(error)
        return delay if hint is None else max(delay, hint)
