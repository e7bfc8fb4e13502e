"""An in-process runner that settles each attempt inside ``submit``, and a clock
moved by hand: with both, the scheduler runs deterministically, on one thread,
without sleeping.

``InlineRunner(shared, clock=None)``
    ``submit(job)`` runs the whole attempt on the calling (scheduler) thread —
    gates, body, verdict, journal write — and posts its outcome on
    ``shared.inbox`` before it returns; the scheduler takes it on its next
    turn. Jobs run one at a time, in the order they are handed over. A
    coroutine body runs with ``asyncio.run``. Without a clock, a timed body
    runs as on the run's own threads (``attempt.call_here``); with one, the
    body runs here and times out if the clock passed its ``timeout_s`` while
    it ran (a body that advances the clock stands for a slow body).
    It never fuses chains nor queues jobs ahead.

``ManualClock(start=None)``
    ``monotonic()`` and ``time()`` (one value, from ``start`` or the wall
    clock when it is made) move only by ``advance(seconds)``;
    ``wait(inbox, timeout)`` returns the next inbox entry, or, with none,
    advances the clock by ``timeout`` and returns None at once: retry
    backoffs, ``Limit`` rates and overdue deadlines pass without sleeping.
    It is the scheduler's ``Clock`` (``flowing.engine.admission``).
"""

from __future__ import annotations

import queue
import time
from typing import Any

from .. import context
from . import attempt as attempt_
from .attempt import Job, Outcome
from .base import Shared, Unbatched, report


class ManualClock:
    """Time that moves only when told; see the module docstring."""

    def __init__(self, start: float | None = None) -> None:
        # from the wall clock by default: deadlines an attempt stamps (time.time()) compare
        self.now = time.time() if start is None else start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock only moves forward (advance({seconds!r}))")
        self.now += seconds

    def wait(self, inbox: queue.SimpleQueue[Any], timeout: float) -> Any:
        if not inbox.empty():
            return inbox.get_nowait()
        self.advance(timeout)
        return None


class InlineRunner(Unbatched):
    """Settles each attempt inside ``submit``; see the module docstring."""

    fuses = False
    queues_ahead = False

    def __init__(self, shared: Shared, clock: ManualClock | None = None) -> None:
        self._shared = shared
        self._clock = clock

    def submit(self, job: Job) -> None:
        if job.td.is_async:
            import asyncio  # lazy: coroutine bodies only

            outcome: Outcome = asyncio.run(attempt_.run_attempt_async(job))
        elif self._clock is None:
            outcome = attempt_.run_attempt(job)
        else:
            started, early = attempt_.begin_attempt(job)
            outcome = early if early is not None else self._run_body(job, started)
        report(outcome, self._shared)

    def _run_body(self, job: Job, started: float) -> Outcome:
        """The body, here; a timeout read on the clock (see the module docstring)."""
        assert self._clock is not None
        began = self._clock.monotonic()
        token = context.enter(job)
        try:
            value = job.td.fn(**job.body_kwargs())
        except BaseException as exc:
            return attempt_.finish_attempt(job, started, None, exc)
        finally:
            context.leave(token)
        timeout = job.td.timeout_s
        if timeout is not None and self._clock.monotonic() - began >= timeout:
            job.cancelled = True  # told to stop: its value is discarded, as at a deadline
            return attempt_.finish_attempt(job, started, None, attempt_.timeout_error(job))
        return attempt_.finish_attempt(job, started, value, None)

    def close(self) -> None:
        pass
