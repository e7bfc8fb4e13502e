"""when / validate / retry_until gates, retries, backoff and retry_after."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowing import Flow, RetryUntilRejected, StepState, task
from flowing import retry as retry_policy
from flowing.observe.events import TaskRetrying


def _src():
    @task
    def source():
        return 10
    return source


# --- when ---

def test_when_false_skips_and_propagates():
    source = _src()
    calls = []

    @task(depends_on=[source], when=lambda source: source > 100)
    def gated(source):
        calls.append(1)

    @task(depends_on=[gated])
    def after(gated):
        calls.append(2)

    flow = Flow(after, log=False)
    res = flow.run()
    assert calls == []
    assert res["gated"].state is StepState.SKIPPED
    assert res["gated"].reason == "when() returned False"
    assert res["gated"].attempts == 0
    assert res["after"].state is StepState.SKIPPED
    assert res["after"].reason == "dependency 'gated' was skipped"


def test_when_receives_the_dependencies_and_true_runs_the_body():
    source = _src()
    seen = []

    def when(source):
        seen.append(source)
        return True

    @task(depends_on=[source], when=when)
    def gated(source):
        return source + 1

    assert Flow(gated, log=False).run()["gated"].value == 11
    assert seen == [10]


def test_when_falsy_values_skip():
    t = task(lambda: 1, name="t", when=lambda: 0)
    r = Flow(t, log=False).run()["t"]
    assert r.state is StepState.SKIPPED
    assert r.reason.startswith("when() returned")


def test_when_raises_fails_with_zero_attempts():
    calls = []

    def when():
        raise LookupError("cannot decide")

    @task(when=when, retry=3, retry_backoff_base_ms=0)
    def gated():
        calls.append(1)

    r = Flow(gated, log=False).run()["gated"]
    assert calls == []
    assert r.state is StepState.FAILED
    assert r.attempts == 0
    assert r.reason == "when() raised"
    assert isinstance(r.error, LookupError)
    assert "cannot decide" in r.traceback


def test_gates_run_once_not_per_attempt():
    counts = {"when": 0, "validate": 0, "body": 0}

    def when():
        counts["when"] += 1
        return True

    def validate():
        counts["validate"] += 1

    @task(when=when, validate=validate, retry=2, retry_backoff_base_ms=0)
    def flaky():
        counts["body"] += 1
        if counts["body"] < 3:
            raise ValueError("again")
        return "ok"

    r = Flow(flaky, log=False).run()["flaky"]
    assert r.value == "ok" and r.attempts == 3
    assert counts == {"when": 1, "validate": 1, "body": 3}


# --- validate ---

def test_validate_raises_fails_without_retry_and_body_never_called():
    source = _src()
    calls = []

    def validate(source):
        if source < 100:
            raise ValueError(f"source too small: {source}")

    @task(depends_on=[source], validate=validate, retry=5, retry_backoff_base_ms=0)
    def guarded(source):
        calls.append(1)

    @task(depends_on=[guarded])
    def after(guarded):
        calls.append(2)

    flow = Flow(after, log=False)
    res = flow.run()
    assert calls == []
    r = res["guarded"]
    assert r.state is StepState.FAILED
    assert r.attempts == 0
    assert r.reason == "validate() raised"
    assert isinstance(r.error, ValueError) and "too small" in str(r.error)
    assert res["after"].reason == "dependency 'guarded' failed"
    assert flow.retries == []


def test_validate_passing_lets_the_body_run():
    source = _src()

    @task(depends_on=[source], validate=lambda source: None)
    def guarded(source):
        return source * 2

    assert Flow(guarded, log=False).run()["guarded"].value == 20


def test_when_false_means_validate_is_not_called():
    calls = []
    t = task(lambda: 1, name="t", when=lambda: False, validate=lambda: calls.append(1))
    assert Flow(t, log=False).run()["t"].state is StepState.SKIPPED
    assert calls == []


# --- retry_until ---

def test_retry_until_retries_until_accepted():
    values = iter([1, 2, 3, 4])

    @task(retry=5, retry_backoff_base_ms=0, retry_until=lambda v: v >= 3)
    def poll():
        return next(values)

    flow = Flow(poll, log=False)
    r = flow.run()["poll"]
    assert r.state is StepState.SUCCEEDED
    assert r.value == 3
    assert r.attempts == 3
    assert len(flow.retries) == 2
    assert all(entry[5] and "retry_until" in str(entry[5]) for entry in flow.retries)


def test_retry_until_never_accepted_fails_with_last_value():
    values = iter(range(100))

    @task(retry=2, retry_backoff_base_ms=0, retry_until=lambda v: False)
    def poll():
        return next(values)

    r = Flow(poll, log=False).run()["poll"]
    assert r.state is StepState.FAILED
    assert isinstance(r.error, RetryUntilRejected)
    assert r.value == 2
    assert r.attempts == 3


def test_retry_until_without_retry_budget():
    t = task(lambda: "v", name="t", retry_until=lambda v: False)
    r = Flow(t, log=False).run()["t"]
    assert r.state is StepState.FAILED and r.attempts == 1 and r.value == "v"
    assert isinstance(r.error, RetryUntilRejected)


def test_retry_until_raising_fails_and_keeps_the_value():
    def until(v):
        raise TypeError("bad predicate")

    t = task(lambda: {"k": 1}, name="t", retry=3, retry_backoff_base_ms=0, retry_until=until)
    r = Flow(t, log=False).run()["t"]
    assert r.state is StepState.FAILED
    assert isinstance(r.error, TypeError)
    assert r.value == {"k": 1}
    assert r.attempts == 1


def test_retry_until_rejection_is_retried_even_with_narrow_retry_on():
    values = iter([0, 1])
    t = task(lambda: next(values), name="t", retry=1, retry_backoff_base_ms=0,
             retry_on=(KeyError,), retry_until=bool)
    r = Flow(t, log=False).run()["t"]
    assert r.ok and r.value == 1 and r.attempts == 2


# --- retries ---

def test_exhausted_retries():
    calls = []

    @task(retry=3, retry_backoff_base_ms=0)
    def always():
        calls.append(1)
        raise ConnectionError(f"try {len(calls)}")

    flow = Flow(always, log=False)
    r = flow.run()["always"]
    assert r.state is StepState.FAILED
    assert r.attempts == 4 == len(calls)
    assert str(r.error) == "try 4"  # the last error
    assert "try 4" in r.traceback


def test_retry_then_success_records_retries():
    calls = []

    @task(retry=2, retry_backoff_base_ms=0)
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("blip")
        return "done"

    flow = Flow(flaky, log=False)
    before = time.time()
    r = flow.run()["flaky"]
    assert r.ok and r.attempts == 2 and r.value == "done"
    assert len(flow.retries) == 1
    task_index, item, attempt, started, finished, error = flow.retries[0]
    assert task_index == 0 and item is None and attempt == 1
    assert before <= started <= finished <= r.finished_at
    assert isinstance(error, ConnectionError)
    # duration spans the first attempt's start to the last attempt's end
    assert r.started_at == pytest.approx(started, abs=1e-3)


def test_errors_outside_retry_on_fail_at_once():
    calls = []

    @task(retry=5, retry_backoff_base_ms=0, retry_on=(ConnectionError,))
    def picky():
        calls.append(1)
        raise ValueError("not transient")

    flow = Flow(picky, log=False)
    r = flow.run()["picky"]
    assert r.state is StepState.FAILED and r.attempts == 1 and len(calls) == 1
    assert flow.retries == []


def test_retry_on_subclasses_match():
    calls = []

    @task(retry=1, retry_backoff_base_ms=0, retry_on=OSError)
    def net():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("reset")
        return 1

    assert Flow(net, log=False).run()["net"].attempts == 2


def test_backoff_waits_between_attempts():
    stamps = []

    @task(retry=1, retry_backoff_base_ms=200, retry_max_backoff_ms=10_000)
    def flaky():
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            raise ConnectionError("x")
        return 1

    Flow(flaky, log=False).run()
    # equal jitter: the first delay is drawn from [100ms, 200ms]
    assert stamps[1] - stamps[0] >= 0.1 - 0.005


def test_retry_after_makes_the_next_attempt_wait_at_least_that_long():
    class RateLimited(Exception):
        retry_after = 0.3

    stamps = []

    @task(retry=1, retry_backoff_base_ms=0)
    def api():
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            raise RateLimited("slow down")
        return 1

    events = []
    flow = Flow(api, log=False, on_event=events.append)
    assert flow.run()["api"].ok
    assert stamps[1] - stamps[0] >= 0.3 - 0.005
    retrying = [e for e in events if isinstance(e, TaskRetrying)]
    assert len(retrying) == 1 and retrying[0].delay_s >= 0.3


def test_waiting_for_a_retry_does_not_hold_a_worker():
    # one worker: while `flaky` waits out its backoff, `other` must run
    order = []
    lock = threading.Lock()

    @task(retry=1, retry_backoff_base_ms=400, retry_max_backoff_ms=400)
    def flaky():
        with lock:
            order.append("flaky")
        if order.count("flaky") == 1:
            raise ConnectionError("x")
        return 1

    @task
    def other():
        with lock:
            order.append("other")
        return 2

    res = Flow(flaky, other, max_workers=1, log=False).run()
    assert all(r.ok for r in res.values())
    assert order == ["flaky", "other", "flaky"]


# --- the policy functions ---

def test_backoff_delay_bounds_and_cap():
    assert retry_policy.backoff_delay(1, 1000, 30_000, rand=lambda: 0.0) == 0.5
    assert retry_policy.backoff_delay(1, 1000, 30_000, rand=lambda: 1.0) == 1.0
    assert retry_policy.backoff_delay(3, 1000, 30_000, rand=lambda: 1.0) == 4.0
    assert retry_policy.backoff_delay(10, 1000, 30_000, rand=lambda: 1.0) == 30.0
    assert retry_policy.backoff_delay(500, 1000, 30_000, rand=lambda: 1.0) == 30.0
    assert retry_policy.backoff_delay(4, 0, 30_000) == 0.0


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(1, 80), base=st.floats(0, 10_000), cap=st.floats(0, 100_000),
       r=st.floats(0, 1))
def test_backoff_delay_is_equal_jitter(attempt, base, cap, r):
    d = min(base * 2 ** (attempt - 1), cap) / 1000
    delay = retry_policy.backoff_delay(attempt, base, cap, rand=lambda: r)
    assert d / 2 - 1e-9 <= delay <= d + 1e-9


def test_retry_after_hint():
    class E(Exception):
        pass

    e = E()
    assert retry_policy.retry_after_hint(e) is None
    e.retry_after = 2
    assert retry_policy.retry_after_hint(e) == 2.0
    e.retry_after = True
    assert retry_policy.retry_after_hint(e) is None
    e.retry_after = -1
    assert retry_policy.retry_after_hint(e) is None
    e.retry_after = "5"
    assert retry_policy.retry_after_hint(e) is None
    assert retry_policy.retry_after_hint(None) is None


def test_next_delay():
    t = task(lambda: 1, name="t", retry=2, retry_backoff_base_ms=100, retry_max_backoff_ms=100,
             retry_on=(ValueError,))
    assert 0.05 <= t.retry_policy.next_delay(1, ValueError()) <= 0.1
    assert t.retry_policy.next_delay(2, ValueError()) is not None
    assert t.retry_policy.next_delay(3, ValueError()) is None  # budget spent
    assert t.retry_policy.next_delay(1, KeyError()) is None    # not retryable
    assert t.retry_policy.next_delay(1, None) is not None      # retry_until rejection
    hinted = ValueError()
    hinted.retry_after = 7
    assert t.retry_policy.next_delay(1, hinted) == 7.0


def test_retry_policy_is_the_tasks_settings_in_one_record():
    t = task(lambda: 1, name="t", retry=2, retry_backoff_base_ms=100, retry_max_backoff_ms=250,
             retry_on=KeyError)
    policy = t.retry_policy
    assert policy == retry_policy.RetryPolicy(retries=2, backoff_base_ms=100, max_backoff_ms=250,
                                              retry_on=(KeyError,))
    assert policy.retryable(KeyError()) and not policy.retryable(ValueError())
    assert policy.retryable(None)  # a retry_until rejection
    with pytest.raises(AttributeError):
        policy.retries = 5  # immutable: a task's settings change only on the TaskDef
