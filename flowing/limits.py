"""Shared concurrency and rate limits for task bodies.

A ``Limit`` says how many bodies may be in flight at once and how many may
start per period, across every task (and ``for_each`` item) that names it,
in every flow of the process. Its counters are guarded by its own lock;
schedulers admit jobs through ``try_acquire`` and give slots back with
``release``. Periods must be finite: ``(1, 1e9)`` is a rate, ``(1, inf)`` is
refused.

Rates. ``rate=(N, period)`` spaces starts evenly, one every ``period / N``
(a generic cell rate algorithm: a start is due ``period / N`` after the
previous one's due time); ``burst=k`` lets up to k start back to back after
a quiet spell. On top, no window of ``period`` seconds ever holds more than
N starts (the admission times of the last N starts are kept, with a margin
of 3% of the period, 10 ms to 250 ms, for the hand-off between admission
and the request reaching the service). So a
service that counts N requests per period as they arrive never sees more.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable
from typing import Any

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0,
          "minute": 60.0, "h": 3600.0, "hour": 3600.0}


# The largest N of a rate: the limit remembers the times of the last N starts, and a
# bigger N (``(10**30, 1)``) is no limit at all.
MAX_RATE_COUNT = 1_000_000


def parse_rate(rate: object) -> tuple[int, float]:
    """``"N/s"``, ``"N/min"``, ``"N/h"`` or ``(N, seconds)`` -> ``(N, seconds)``."""
    count, period = _parse_rate(rate)
    if count > MAX_RATE_COUNT:
        raise ValueError(f"Limit rate {_shown(rate)} allows more than {MAX_RATE_COUNT:,} starts "
                         f"per period, which limits nothing; use a smaller N (e.g. per "
                         f"second instead of per hour), or no rate")
    return count, period


def _shown(rate: object) -> str:
    text = repr(rate)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_rate(rate: object) -> tuple[int, float]:
    if isinstance(rate, str):
        import re  # lazy: keeps import flowing fast

        m = re.match(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$", rate.lower())
        if m and m.group(2) in _UNITS and int(m.group(1)) >= 1:
            return int(m.group(1)), _UNITS[m.group(2)]
        raise ValueError(f"Limit rate {rate!r} is not understood: write it as "
                         f"'N/s', 'N/min' or 'N/h' with N >= 1, or as a tuple (N, seconds)")
    if isinstance(rate, tuple) and len(rate) == 2:
        count, period = rate
        if (isinstance(count, int) and not isinstance(count, bool) and count >= 1
                and isinstance(period, (int, float)) and not isinstance(period, bool)
                and period > 0 and math.isfinite(period)):
            return count, float(period)
    raise ValueError(f"Limit rate {rate!r} is not understood: write it as "
                     f"'N/s', 'N/min' or 'N/h' with N >= 1, or as a tuple (N, seconds) "
                     f"with 0 < seconds < inf")


class Limit:
    """At most ``max_concurrency`` bodies in flight and ``rate`` starts per period.

    Share one instance between tasks that call the same service::

        github = Limit(max_concurrency=4, rate="10/s")   # one start every 0.1 s
        bursty = Limit(rate="10/s", burst=5)              # up to 5 back to back

        @task(limit=github)
        def fetch_repo(): ...

    The counters live in the Limit itself, so it bounds bodies across every
    flow running in the process, not only within one run. ``in_flight``
    counts admitted bodies not yet finished; ``_starts`` holds the admission
    times of the last ``rate_count`` starts: a new start is allowed once the
    oldest of them has left the sliding window, so no window of
    ``rate_period`` seconds ever holds more than ``rate_count`` starts.
    Schedulers blocked on the concurrency bound register a wake-up callback
    and are called when a slot frees.
    """

    __slots__ = ("max_concurrency", "rate", "burst", "rate_count", "rate_period", "_lock",
                 "_in_flight", "_starts", "_due", "_waiters")

    def __init__(self, max_concurrency: int | None = None,
                 rate: str | tuple[int, float] | None = None, burst: int = 1) -> None:
        if max_concurrency is not None and (
                not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool)
                or max_concurrency < 1):
            raise ValueError(f"Limit max_concurrency={max_concurrency!r} must be an int >= 1 "
                             f"(or None for no bound)")
        self.max_concurrency = max_concurrency
        self.rate = rate
        self.rate_count: int | None
        self.rate_period: float | None
        if rate is None:
            self.rate_count, self.rate_period = None, None
        else:
            self.rate_count, self.rate_period = parse_rate(rate)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ValueError(f"Limit burst={burst!r} must be an int >= 1 (how many bodies may "
                             f"start back to back; 1 spaces every start evenly)")
        self.burst = burst
        self._due = -math.inf              # when the next start is due (spacing)
        self._lock = threading.Lock()      # guards the counters
        self._in_flight = 0
        self._starts: collections.deque[float] = collections.deque(maxlen=self.rate_count or 1)
        self._waiters: set[Callable[[], None]] = set()

    @property
    def in_flight(self) -> int:
        """Bodies admitted under this Limit and not finished, across all flows."""
        return self._in_flight

    def try_acquire(self, now: float) -> float | None:
        """Admit one body now (None), or say how long to wait (seconds).

        ``inf`` means "blocked on concurrency": wait for ``release``. ``now`` is
        ``time.monotonic()``.
        """
        with self._lock:
            if self.max_concurrency is not None and self._in_flight >= self.max_concurrency:
                return float("inf")
            count, period = self.rate_count, self.rate_period
            if count is not None and period is not None:
                interval = period / count
                # spacing: due one interval after the previous due time, burst-1 early
                ready_at = self._due - (self.burst - 1) * interval
                if len(self._starts) == count:
                    # Admission precedes the body's first line by a thread hand-off, and
                    # its request reaches the service a moment later still; both vary
                    # under load. The margin (3% of the period, 10 ms to 250 ms) keeps
                    # starts N apart by more than that, so no window of the period ever
                    # sees more than rate_count arrive.
                    margin = min(max(period * 0.03, 0.01), 0.25)
                    ready_at = max(ready_at, self._starts[0] + period + margin)
                if ready_at > now:
                    return ready_at - now
                self._due = max(self._due, now) + interval
                self._starts.append(now)
            self._in_flight += 1
            return None

    def release(self) -> None:
        """A body admitted by ``try_acquire`` finished: free its slot, wake waiters."""
        with self._lock:
            self._in_flight -= 1
            waiters = list(self._waiters)
        for wake in waiters:
            wake()

    def release_when(self, on_end: Callable[[Callable[[], None]], bool], grace_s: float,
                     overstayed: Callable[[], object]) -> None:
        """Free one admitted slot when a body that timed out really ends.

        ``on_end(fn)`` asks for ``fn()`` when the body ends and returns False
        if it has ended already (then the slot is freed now). A body still
        running ``grace_s`` seconds later gets its slot taken back anyway, after
        calling ``overstayed()`` (a warning), so a hung body never holds a slot
        for good. The wait is a daemon timer: it never holds the process open.
        """
        lock = threading.Lock()
        held = [True]

        def give_back(late: bool) -> None:
            with lock:
                if not held[0]:
                    return
                held[0] = False
            if late:
                try:
                    overstayed()
                except Exception:  # a warning that cannot be written frees the slot all the same
                    pass
            else:
                timer.cancel()
            self.release()

        timer = threading.Timer(grace_s, give_back, (True,))
        timer.daemon = True
        if not on_end(lambda: give_back(False)):
            self.release()
            return
        timer.start()

    def add_waiter(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiters.add(wake)

    def remove_waiter(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiters.discard(wake)

    def __reduce__(self) -> tuple[Any, ...]:
        # Shipped to another process (inside a task): the declaration only.
        return (Limit, (self.max_concurrency, self.rate, self.burst))

    def __repr__(self) -> str:
        parts = []
        if self.max_concurrency is not None:
            parts.append(f"max_concurrency={self.max_concurrency}")
        if self.rate is not None:
            parts.append(f"rate={self.rate!r}")
        if self.burst != 1:
            parts.append(f"burst={self.burst}")
        return f"Limit({', '.join(parts)})"
