"""Shared concurrency and rate limits for task bodies.

A ``Limit`` is a declaration: how many bodies may be in flight at once and how
many may start per period, across every task (and ``for_each`` item) that
names it. The scheduler owns the live counters (``LimitGate``) for one run;
nothing here is shared with worker threads.
"""

from __future__ import annotations

import collections

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0,
          "minute": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(rate) -> tuple[int, float]:
    """``"N/s"``, ``"N/min"``, ``"N/h"`` or ``(N, seconds)`` -> ``(N, seconds)``."""
    if isinstance(rate, str):
        import re

        m = re.match(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$", rate.lower())
        if m and m.group(2) in _UNITS and int(m.group(1)) >= 1:
            return int(m.group(1)), _UNITS[m.group(2)]
        raise ValueError(f"Limit rate {rate!r} is not understood: write it as "
                         f"'N/s', 'N/min' or 'N/h' with N >= 1, or as a tuple (N, seconds)")
    if isinstance(rate, tuple) and len(rate) == 2:
        count, period = rate
        if (isinstance(count, int) and not isinstance(count, bool) and count >= 1
                and isinstance(period, (int, float)) and not isinstance(period, bool)
                and period > 0):
            return count, float(period)
    raise ValueError(f"Limit rate {rate!r} is not understood: write it as "
                     f"'N/s', 'N/min' or 'N/h' with N >= 1, or as a tuple (N, seconds) "
                     f"with seconds > 0")


class Limit:
    """At most ``max_concurrency`` bodies in flight and ``rate`` starts per period.

    Share one instance between tasks that call the same service::

        github = Limit(max_concurrency=4, rate="10/s")

        @task(limit=github)
        def fetch_repo(): ...
    """

    __slots__ = ("max_concurrency", "rate", "rate_count", "rate_period")

    def __init__(self, max_concurrency: int | None = None, rate=None):
        if max_concurrency is not None and (
                not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool)
                or max_concurrency < 1):
            raise ValueError(f"Limit max_concurrency={max_concurrency!r} must be an int >= 1 "
                             f"(or None for no bound)")
        self.max_concurrency = max_concurrency
        self.rate = rate
        if rate is None:
            self.rate_count, self.rate_period = None, None
        else:
            self.rate_count, self.rate_period = parse_rate(rate)

    def __repr__(self) -> str:
        parts = []
        if self.max_concurrency is not None:
            parts.append(f"max_concurrency={self.max_concurrency}")
        if self.rate is not None:
            parts.append(f"rate={self.rate!r}")
        return f"Limit({', '.join(parts)})"


class LimitGate:
    """Live state of one ``Limit`` during one run (scheduler thread only).

    ``in_flight`` counts admitted bodies not yet finished. ``starts`` holds the
    admission times of the last ``rate_count`` starts: a new start is allowed
    once the oldest of them has left the sliding window, so no window of
    ``rate_period`` seconds ever holds more than ``rate_count`` starts.
    """

    __slots__ = ("limit", "in_flight", "starts", "parked")

    def __init__(self, limit: Limit):
        self.limit = limit
        self.in_flight = 0
        self.starts = collections.deque(maxlen=limit.rate_count or 1)
        self.parked = collections.deque()  # jobs waiting for this gate, FIFO

    def wait_time(self, now: float) -> float | None:
        """None if a body may start now; else seconds until the rate allows one.

        ``inf`` means "blocked on concurrency": wait for a body to finish.
        """
        lim = self.limit
        if lim.max_concurrency is not None and self.in_flight >= lim.max_concurrency:
            return float("inf")
        if lim.rate_count is not None and len(self.starts) == lim.rate_count:
            # Admission precedes the body's first line by a thread hand-off; the
            # margin keeps two bursts apart by more than that, so no window of the
            # period ever sees more than rate_count bodies start.
            margin = min(max(lim.rate_period * 0.01, 0.005), 0.05)
            ready_at = self.starts[0] + lim.rate_period + margin
            if ready_at > now:
                return ready_at - now
        return None

    def admit(self, now: float) -> None:
        self.in_flight += 1
        if self.limit.rate_count is not None:
            self.starts.append(now)

    def release(self) -> None:
        self.in_flight -= 1
