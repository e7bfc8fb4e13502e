"""Limit: concurrency and start-rate bounds shared across tasks and items; retry_after.

Rates are checked as a window property over recorded body starts (no
sliding window of the period ever holds more than N starts), never as a speed.
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers import Gauge

from flowing import Flow, Limit, StepState, task

SUCCEEDED, FAILED = StepState.SUCCEEDED, StepState.FAILED

# A body starts a moment after the limiter admits it (thread hand-off); on a
# busy machine that moment varies a little between bodies. Windows are
# checked with this much slack; without any rate limit the gaps would be ~0.
JITTER_S = 0.05




class Starts:
    def __init__(self):
        self._lock = threading.Lock()
        self.times = []

    def mark(self):
        with self._lock:
            self.times.append(time.monotonic())


def max_in_window(times, period, slack=JITTER_S):
    """The most starts found in any window of ``period - slack`` seconds."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - (period - slack):
            j += 1
        best = max(best, i - j + 1)
    return best


def source(value, name="ids"):
    return task(lambda: value, name=name)


# ----- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize("rate, expected", [
    ("20/s", (20, 1.0)),
    ("3/min", (3, 60.0)),
    ("100/h", (100, 3600.0)),
    (" 7 / s ", (7, 1.0)),
    ((5, 0.5), (5, 0.5)),
    ((2, 3), (2, 3.0)),
])
def test_rate_forms(rate, expected):
    lim = Limit(rate=rate)
    assert lim.rate == rate
    assert (lim.rate_count, lim.rate_period) == expected
    assert lim.max_concurrency is None


def test_defaults_mean_no_bound():
    lim = Limit()
    assert lim.max_concurrency is None and lim.rate is None
    assert Limit(max_concurrency=3).max_concurrency == 3


@pytest.mark.parametrize("rate", ["fast", "5", "5/day", "0/s", "-1/s", "1.5/s", "/s", "",
                                  (0, 1.0), (5, 0), (5, -1.0), (5,), (1, 2, 3), (1.5, 1.0),
                                  ("5", 1.0), (True, 1.0), 5, 2.5, [5, 1.0]])
def test_bad_rate_raises_value_error_naming_the_value(rate):
    with pytest.raises(ValueError) as info:
        Limit(rate=rate)
    assert repr(rate) in str(info.value)


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True])
def test_bad_max_concurrency_raises_value_error_naming_the_value(value):
    with pytest.raises(ValueError) as info:
        Limit(max_concurrency=value)
    assert repr(value) in str(info.value)


def test_limit_must_be_a_limit_instance():
    with pytest.raises(TypeError, match="Limit"):
        @task(limit=4)
        def work():
            pass


# ----- concurrency ---------------------------------------------------------------------


def test_shared_limit_bounds_two_for_each_tasks_together():
    gauge = Gauge()
    per_task = {"a": Gauge(), "b": Gauge()}
    shared = Limit(max_concurrency=3)
    ids = source(list(range(8)))

    @task(depends_on=[ids], for_each="ids", limit=shared)
    def a(ids):
        with gauge, per_task["a"]:
            time.sleep(0.1)
        return ids

    @task(depends_on=[ids], for_each="ids", limit=shared)
    def b(ids):
        with gauge, per_task["b"]:
            time.sleep(0.1)
        return ids

    results = Flow(a, b, max_workers=10, log=False).run()
    assert results["a"].state is SUCCEEDED and results["b"].state is SUCCEEDED
    assert gauge.peak == 3
    # both tasks really shared the slots (each alone could have taken all 3)
    assert per_task["a"].peak >= 1 and per_task["b"].peak >= 1


def test_shared_limit_bounds_plain_bodies_and_items_together():
    gauge = Gauge()
    shared = Limit(max_concurrency=2)
    ids = source(list(range(6)))

    @task(depends_on=[ids], for_each="ids", limit=shared)
    def items(ids):
        with gauge:
            time.sleep(0.1)
        return ids

    plain = []
    for k in range(4):
        def body(k=k):
            with gauge:
                time.sleep(0.1)
            return k
        plain.append(task(body, name=f"plain{k}", limit=shared))

    results = Flow(items, *plain, max_workers=10, log=False).run()
    assert all(r.state is SUCCEEDED for r in results.values())
    assert gauge.peak == 2


def test_unlimited_tasks_are_not_held_by_a_busy_limit():
    """A task without the limit runs while the limited ones wait their turn."""
    events = []
    lock = threading.Lock()
    shared = Limit(max_concurrency=1)
    ids = source(list(range(4)))

    @task(depends_on=[ids], for_each="ids", limit=shared)
    def limited(ids):
        with lock:
            events.append(("start", ids))
        time.sleep(0.15)
        with lock:
            events.append(("end", ids))
        return ids

    @task
    def free():
        with lock:
            events.append(("free", None))
        return "free"

    results = Flow(limited, free, max_workers=4, log=False).run()
    assert results["free"].state is SUCCEEDED
    # 'free' did not wait for the four limited items to finish one by one
    assert events.index(("free", None)) < events.index(("end", 3))


# ----- rate -----------------------------------------------------------------------------


@pytest.mark.parametrize("rate, count, period", [((5, 0.5), 5, 0.5), ("20/s", 20, 1.0)])
def test_rate_never_exceeds_n_starts_in_any_window(rate, count, period):
    starts = Starts()
    ids = source(list(range(30)))

    @task(depends_on=[ids], for_each="ids", limit=Limit(rate=rate))
    def work(ids):
        starts.mark()
        return ids

    r = Flow(work, max_workers=8, log=False).run()["work"]
    assert r.state is SUCCEEDED
    assert r.value == list(range(30))
    assert len(starts.times) == 30
    assert max_in_window(starts.times, period) <= count
    # and the limit did not over-throttle into one start per window
    assert max_in_window(starts.times, period, slack=0) >= count


def test_shared_rate_counts_starts_of_both_tasks():
    starts = Starts()
    shared = Limit(rate=(4, 0.4))
    ids = source(list(range(10)))

    @task(depends_on=[ids], for_each="ids", limit=shared)
    def a(ids):
        starts.mark()

    @task(depends_on=[ids], for_each="ids", limit=shared)
    def b(ids):
        starts.mark()

    results = Flow(a, b, max_workers=8, log=False).run()
    assert results["a"].state is SUCCEEDED and results["b"].state is SUCCEEDED
    assert len(starts.times) == 20
    assert max_in_window(starts.times, 0.4) <= 4


def test_rate_counts_retries_as_starts():
    starts = Starts()
    seen = {}
    lock = threading.Lock()
    ids = source(list(range(6)))

    @task(depends_on=[ids], for_each="ids", retry=1, retry_backoff_base_ms=1,
          limit=Limit(rate=(3, 0.4)))
    def work(ids):
        starts.mark()
        with lock:
            seen[ids] = seen.get(ids, 0) + 1
            first = seen[ids] == 1
        if first:
            raise ConnectionError("first attempt of every item fails")
        return ids

    r = Flow(work, max_workers=6, log=False).run()["work"]
    assert r.state is SUCCEEDED
    assert len(starts.times) == 12
    assert max_in_window(starts.times, 0.4) <= 3


def test_concurrency_and_rate_together():
    gauge = Gauge()
    starts = Starts()
    ids = source(list(range(12)))

    # burst=4: starts may come back to back, so the concurrency bound is what holds them
    @task(depends_on=[ids], for_each="ids",
          limit=Limit(max_concurrency=2, rate=(4, 0.4), burst=4))
    def work(ids):
        starts.mark()
        with gauge:
            time.sleep(0.05)
        return ids

    r = Flow(work, max_workers=8, log=False).run()["work"]
    assert r.state is SUCCEEDED
    assert gauge.peak == 2
    assert max_in_window(starts.times, 0.4) <= 4


# ----- retry_after -----------------------------------------------------------------------


class Busy(Exception):
    def __init__(self, retry_after):
        super().__init__(f"busy, retry after {retry_after}s")
        self.retry_after = retry_after


def test_retry_after_makes_the_next_attempt_wait_at_least_that_long():
    starts = Starts()

    @task(retry=2, retry_backoff_base_ms=1, retry_max_backoff_ms=1)
    def call():
        starts.mark()
        if len(starts.times) < 3:
            raise Busy(0.3)
        return "ok"

    r = Flow(call, log=False).run()["call"]
    assert r.state is SUCCEEDED and r.attempts == 3
    t = starts.times
    assert t[1] - t[0] >= 0.3
    assert t[2] - t[1] >= 0.3


def test_retry_after_applies_per_item():
    starts = {}
    lock = threading.Lock()
    ids = source([0, 1, 2])

    @task(depends_on=[ids], for_each="ids", retry=1, retry_backoff_base_ms=1,
          retry_max_backoff_ms=1)
    def work(ids):
        with lock:
            starts.setdefault(ids, []).append(time.monotonic())
            n = len(starts[ids])
        if ids == 1 and n == 1:
            raise Busy(0.4)
        return ids

    r = Flow(work, log=False).run()["work"]
    assert r.state is SUCCEEDED
    assert [it.attempts for it in r.items] == [1, 2, 1]
    assert starts[1][1] - starts[1][0] >= 0.4


def test_retry_after_larger_than_backoff_wins_and_smaller_does_not_shorten_it():
    starts = Starts()

    @task(retry=1, retry_backoff_base_ms=400, retry_max_backoff_ms=400)
    def call():
        starts.mark()
        if len(starts.times) == 1:
            raise Busy(0.0)  # a hint shorter than the backoff does not cut it short
        return "ok"

    r = Flow(call, log=False).run()["call"]
    assert r.state is SUCCEEDED
    t = starts.times
    assert t[1] - t[0] >= 0.2  # equal jitter: at least half of the 400 ms backoff


def test_retry_after_on_a_non_retryable_error_does_not_retry():
    calls = []

    @task(retry=3, retry_on=(ConnectionError,), retry_backoff_base_ms=1)
    def call():
        calls.append(1)
        raise Busy(0.1)

    r = Flow(call, log=False).run()["call"]
    assert r.state is FAILED and r.attempts == 1
    assert len(calls) == 1


def test_timed_out_body_gives_its_limit_slot_back_at_the_deadline():
    """Documented choice: a sync body abandoned at its timeout stops counting against
    its Limit, so one hung call can never stall every later item of that Limit."""
    release = threading.Event()
    starts = []
    ids = source(list(range(3)))

    @task(depends_on=[ids], for_each="ids", timeout_s=0.2, limit=Limit(max_concurrency=1))
    def work(ids):
        starts.append((ids, time.monotonic()))
        release.wait(10)  # hangs until the test ends

    try:
        r = Flow(work, log=False).run()["work"]
    finally:
        release.set()
    assert r.state is FAILED
    assert all(isinstance(it.error, TimeoutError) for it in r.items)
    assert sorted(i for i, _ in starts) == [0, 1, 2]  # every item started despite hung ones
    times = sorted(t for _, t in starts)
    assert times[-1] - times[0] < 5  # far less than the 10 s a held slot would cost
