"""Limit: concurrency and start-rate bounds shared across tasks and items; retry_after.

Rates are checked as a window property over recorded body starts (no
sliding window of the period ever holds more than N starts), never as a speed.
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers import Gauge, captured_log

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


@pytest.mark.parametrize("rate", [(10**30, 1), (10**7, 1.0), "100000000000000000000000/s"])
def test_a_rate_too_large_to_limit_anything_is_a_value_error(rate):
    with pytest.raises(ValueError, match="1,000,000") as info:
        Limit(rate=rate)
    assert "rate" in str(info.value) and "smaller N" in str(info.value)
    assert Limit(rate=(10**6, 1)).rate_count == 10**6  # the largest allowed


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
    # and the limit did not over-throttle: starts are spaced evenly, about N per
    # period (a busy machine may push one or two of them out of the window)
    assert max_in_window(starts.times, period, slack=0) >= count * 0.7


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


# ----- a timed-out body keeps its Limit slot while it really runs -------------------------


def test_a_timed_out_body_keeps_its_limit_slot_until_it_really_ends():
    """Limit(max_concurrency=1): a body that ignores its timeout and runs a bit longer
    holds the slot to its real end, so the next start waits (the gauge never sees 2)."""
    gauge = Gauge()
    ends = {}
    starts = {}
    limit = Limit(max_concurrency=1)

    @task(limit=limit, timeout_s=0.1)
    def slow():
        starts["slow"] = time.monotonic()
        with gauge:
            time.sleep(0.4)  # ignores its timeout
        ends["slow"] = time.monotonic()

    @task(limit=limit)
    def next_call():
        starts["next"] = time.monotonic()
        with gauge:
            pass

    res = Flow(slow, next_call, fail_fast=False, log=False).run()
    assert isinstance(res["slow"].error, TimeoutError)
    assert res["next_call"].ok
    assert gauge.peak == 1
    # when both wanted the slot, next_call waited for the real end of slow
    if starts["next"] > starts["slow"]:
        assert starts["next"] >= ends["slow"]
    assert limit.in_flight == 0


def test_a_timed_out_item_keeps_the_slot_so_items_never_overlap():
    gauge = Gauge()
    ids = source(list(range(4)))

    @task(depends_on=[ids], for_each="ids", timeout_s=0.05, limit=Limit(max_concurrency=1))
    def work(ids):
        with gauge:
            time.sleep(0.15 if ids % 2 else 0.0)  # odd items outlive their timeout
        return ids

    r = Flow(work, max_workers=4, log=False).run()["work"]
    assert all(isinstance(r.items[k].error, TimeoutError) for k in (1, 3))
    assert gauge.peak == 1


def test_a_hung_body_gives_its_slot_back_after_the_grace_with_one_warning(monkeypatch):
    import flowing.engine.admission as admission

    monkeypatch.setattr(admission, "LINGER_GRACE_S", 0.3)
    release = threading.Event()
    limit = Limit(max_concurrency=1)
    ids = source(list(range(2)))

    @task(depends_on=[ids], for_each="ids", timeout_s=0.1, limit=limit)
    def hang(ids):
        release.wait(30)  # hangs until the test ends

    @task(limit=limit)
    def later():
        return "ran"

    try:
        with captured_log() as (logger, handler):
            res = Flow(hang, later, fail_fast=False, log=logger).run()
    finally:
        release.set()
    assert res["later"].value == "ran"  # run() returned, and the Limit let later start
    assert res["hang"].state is FAILED
    warnings = [m for m in handler.messages if "past its timeout" in m]
    assert len(warnings) == 1 and "task 'hang'" in warnings[0], handler.messages
    assert "Limit slot is given back" in warnings[0]


# ----- burst: starts spaced evenly unless a burst is allowed --------------------------------


@pytest.mark.parametrize("burst", [0, -1, 1.5, "2", True, None])
def test_bad_burst_raises_value_error(burst):
    with pytest.raises(ValueError, match="burst"):
        Limit(rate="5/s", burst=burst)


def test_starts_are_spaced_one_every_period_over_n():
    limit = Limit(rate=(4, 1.0))
    assert limit.try_acquire(100.0) is None
    assert limit.try_acquire(100.0) == pytest.approx(0.25)
    assert limit.try_acquire(100.1) == pytest.approx(0.15)
    assert limit.try_acquire(100.25) is None
    assert limit.try_acquire(100.5) is None  # on time: due every 0.25 s


def test_burst_lets_k_start_back_to_back_and_never_n_plus_one_in_a_period():
    limit = Limit(rate=(4, 1.0), burst=3)
    assert [limit.try_acquire(100.0) for _ in range(3)] == [None, None, None]
    assert limit.try_acquire(100.0) == pytest.approx(0.25)  # the 4th waits its turn
    assert limit.try_acquire(100.25) is None
    wait = limit.try_acquire(100.5)  # a 5th start within the period: the window says no
    assert wait is not None and 100.5 + wait > 101.0
    full = Limit(rate=(4, 1.0), burst=4)
    assert [full.try_acquire(100.0) for _ in range(4)] == [None] * 4
    wait = full.try_acquire(100.3)
    assert wait is not None and 100.3 + wait > 101.0


def test_burst_survives_pickling_and_shows_in_repr():
    import pickle

    limit = pickle.loads(pickle.dumps(Limit(max_concurrency=2, rate="10/s", burst=3)))
    assert (limit.max_concurrency, limit.rate_count, limit.burst) == (2, 10, 3)
    assert repr(limit) == "Limit(max_concurrency=2, rate='10/s', burst=3)"


class _Counting:
    """A loopback HTTP service: counts requests in flight, and refuses (429) a request
    that would be the N+1th to arrive within any sliding window of ``period``."""

    def __init__(self, allow=None, period=1.0):
        import http.server

        self.lock = threading.Lock()
        self.arrivals = []
        self.refused = 0
        self.in_flight = 0
        self.peak = 0
        self.gate = None  # a Barrier the handler waits at, if set
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                now = time.monotonic()
                with service.lock:
                    recent = [t for t in service.arrivals if t > now - period]
                    refuse = allow is not None and len(recent) >= allow
                    service.arrivals.append(now)
                    service.refused += refuse
                    service.in_flight += 1
                    service.peak = max(service.peak, service.in_flight)
                try:
                    if service.gate is not None and not refuse:
                        service.gate.wait()
                finally:
                    with service.lock:
                        service.in_flight -= 1
                self.send_response(429 if refuse else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _get(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status


def test_a_service_allowing_20_per_second_never_refuses_a_20_per_second_limit():
    service = _Counting(allow=20, period=1.0)
    ids = source(list(range(100)))

    @task(depends_on=[ids], for_each="ids", limit=Limit(rate="20/s"))
    def call(ids):
        return _get(service.url)

    try:
        r = Flow(call, max_workers=10, log=False).run()["call"]
    finally:
        service.close()
    assert r.state is SUCCEEDED, r.error
    assert service.refused == 0 and r.value == [200] * 100
    arrivals = sorted(service.arrivals)
    assert max_in_window(arrivals, 1.0, slack=0.0) <= 20
    # spaced evenly (about one every 50 ms), not 20 at once then a pause
    assert max_in_window(arrivals, 0.25, slack=0.0) <= 9
    assert arrivals[-1] - arrivals[0] >= 4.0  # 100 starts at 20/s span at least ~4.95 s


# ----- no silent cap of a Limit's concurrency by the default max_workers -------------------


def test_limit_concurrency_10_reaches_10_in_flight_with_the_default_max_workers():
    service = _Counting()
    service.gate = threading.Barrier(10, timeout=20)  # breaks unless 10 are in flight
    ids = source(list(range(20)))

    @task(depends_on=[ids], for_each="ids", limit=Limit(max_concurrency=10))
    def call(ids):
        return _get(service.url)

    try:
        flow = Flow(call, log=False)
        r = flow.run()["call"]
    finally:
        service.gate.abort()
        service.close()
    assert r.state is SUCCEEDED, r.error
    assert service.peak == 10
    assert flow.max_workers == 10


def test_the_default_max_workers_still_reads_5():
    import inspect

    assert str(inspect.signature(Flow).parameters["max_workers"]) == "max_workers: 'int' = 5"
    assert Flow(source(1), log=False).max_workers == 5


def test_an_explicit_max_workers_below_a_limit_warns_once_and_bounds():
    gauge = Gauge()
    ids = source(list(range(12)))

    @task(depends_on=[ids], for_each="ids", limit=Limit(max_concurrency=10))
    def call(ids):
        with gauge:
            time.sleep(0.02)

    with captured_log() as (logger, handler):
        flow = Flow(call, max_workers=3, log=logger)
        flow.run()
        flow.run()
        Flow(call, max_workers=10, log=logger)  # not below: no warning
        Flow(call, log=logger)  # the default: raised, no warning
    warnings = [m for m in handler.messages if "max_workers" in m and "Limit" in m]
    assert len(warnings) == 1, handler.messages
    assert ("Flow(max_workers=3) is below the Limit(max_concurrency=10) of task 'call'"
            in warnings[0])
    assert gauge.peak <= 3


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 10), period=st.floats(0.01, 10.0), burst=st.integers(1, 12),
       steps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=80))
def test_admissions_never_exceed_n_per_period_nor_burst_back_to_back(count, period, burst,
                                                                     steps):
    """Whatever the times schedulers ask at: no window of one period holds more than N
    admitted starts, and with burst=k no more than k start closer than period/N apart."""
    limit = Limit(rate=(count, period), burst=burst)
    now, admitted = 1000.0, []
    for step in steps:
        now += step * period / count
        while limit.try_acquire(now) is None:
            admitted.append(now)
            limit.release()
    interval = period / count
    for k in range(len(admitted)):
        window = [t for t in admitted[k:] if t < admitted[k] + period]
        assert len(window) <= count
        close = [t for t in admitted[k:] if t < admitted[k] + interval * 0.999]
        assert len(close) <= burst
