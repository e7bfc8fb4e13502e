"""Retry policy: which failures are retried, and how long to wait before the next try.

Small pieces, composed per task: ``is_retryable`` decides from the error and
the task's ``retry_on``; ``backoff_delay`` is capped exponential backoff with
equal jitter; ``retry_after_hint`` reads the server's own wait hint;
``next_delay`` combines them with the attempt budget. The attempt module
asks ``next_delay`` once per failed attempt; the scheduler only waits.
"""

from __future__ import annotations

import numbers


class RetryUntilRejected(Exception):
    """``retry_until`` rejected the value of the last allowed attempt."""


def backoff_delay(attempt: int, base_ms: float, max_ms: float, rand=None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based).

    The nominal delay ``d = min(base * 2**(attempt-1), max)`` is drawn from
    ``[d/2, d]`` (equal jitter): retries of many tasks that failed together
    spread out instead of hitting the service again in lockstep.
    """
    if rand is None:
        import random  # only retries pay for it

        rand = random.random
    try:
        grown = base_ms * 2.0 ** (attempt - 1)
    except OverflowError:  # thousands of attempts: the cap has long been reached
        grown = float("inf") if base_ms else 0.0
    nominal = min(grown, max_ms) / 1000.0
    return nominal / 2 + rand() * nominal / 2


def retry_after_hint(error: BaseException | None) -> float | None:
    """The ``retry_after`` seconds an exception carries (HTTP 429/503 clients set it)."""
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, numbers.Real) and not isinstance(hint, bool) and hint >= 0:
        return float(hint)
    return None


def is_retryable(td, error: BaseException | None) -> bool:
    """A rejection by ``retry_until`` (error None) is always retryable; an exception
    only when it matches the task's ``retry_on``."""
    return error is None or isinstance(error, td.retry_on)


def next_delay(td, attempt: int, error: BaseException | None) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None when it must not happen."""
    if attempt >= 1 + td.retry or not is_retryable(td, error):
        return None
    delay = backoff_delay(attempt, td.retry_backoff_base_ms, td.retry_max_backoff_ms)
    hint = retry_after_hint(error)
    return delay if hint is None else max(delay, hint)
