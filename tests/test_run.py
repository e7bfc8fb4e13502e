"""Running a flow: values, results, scheduling policies and the reading API."""

import threading
import time

import pytest
from engine_driver import run_inline

from flowing import Flow, StepResult, StepState, task

WAIT = 10  # seconds: only a guard against hangs, never expected to elapse


def test_readme_example():
    @task
    def fetch():
        return {"items": [1, 2, 3]}

    @task(depends_on=[fetch], retry=2)
    def process(fetch):
        return sum(fetch["items"])

    flow = Flow(process, log=False)
    results = flow.run()
    assert results is flow.results or results == flow.results
    assert list(results) == ["fetch", "process"]
    assert results["process"].value == 6
    assert flow.value(process) == 6
    assert flow.value("fetch") == {"items": [1, 2, 3]}
    assert flow.ok


def test_step_result_fields_of_a_success():
    @task
    def one():
        return 1

    before = time.time()
    flow = Flow(one, log=False)
    r = flow.run()["one"]
    after = time.time()
    assert isinstance(r, StepResult)
    assert r.name == "one"
    assert r.state is StepState.SUCCEEDED and r.ok
    assert r.value == 1
    assert r.error is None and r.traceback is None and r.reason is None
    assert r.attempts == 1
    assert r.step_key is None and r.cached is False
    assert r.items is None
    assert before <= r.started_at <= r.finished_at <= after
    assert r.duration_ms >= 0
    assert before <= flow.started_at <= flow.finished_at <= after


def test_step_state_values():
    assert StepState.SUCCEEDED == "succeeded"
    assert StepState.FAILED == "failed"
    assert StepState.SKIPPED == "skipped"
    assert str(StepState.FAILED) == "failed"


def test_results_are_in_plan_order():
    @task
    def z():
        return 1

    @task
    def y():
        return 2

    @task(depends_on=[z, y])
    def x(z, y):
        return z + y

    flow = Flow(x, log=False)
    flow.run()
    order = [n for layer in flow.plan() for n in layer]
    assert list(flow.results) == order


def test_body_error_becomes_a_failed_result():
    @task
    def boom():
        raise ZeroDivisionError("no way")

    @task(depends_on=[boom])
    def after(boom):
        return 1

    flow = Flow(after, log=False)
    results = flow.run()  # never raises
    r = results["boom"]
    assert r.state is StepState.FAILED
    assert isinstance(r.error, ZeroDivisionError)
    assert r.attempts == 1
    assert "ZeroDivisionError: no way" in r.traceback
    assert "boom" in r.traceback  # the frame of the body
    s = results["after"]
    assert s.state is StepState.SKIPPED
    assert s.reason == "dependency 'boom' failed"
    assert s.attempts == 0 and s.error is None
    assert not flow.ok


def test_base_exception_in_body_does_not_escape():
    @task
    def exits():
        raise SystemExit(3)

    r = Flow(exits, log=False).run()["exits"]
    assert r.state is StepState.FAILED
    assert isinstance(r.error, SystemExit)


def test_skip_propagates_through_a_chain_naming_the_direct_dependency():
    @task
    def a():
        raise ValueError("x")

    @task(depends_on=[a])
    def b(a):
        pass

    @task(depends_on=[b])
    def c(b):
        pass

    res = Flow(c, log=False, fail_fast=False).run()
    assert res["b"].reason == "dependency 'a' failed"
    assert res["c"].reason == "dependency 'b' was skipped"


def test_value_errors():
    @task
    def good():
        return 1

    @task
    def bad():
        raise ValueError("broken input")

    flow = Flow(good, bad, log=False, fail_fast=False)
    with pytest.raises(KeyError):
        flow.value(good)  # not run yet
    flow.run()
    assert flow.value(good) == 1
    with pytest.raises(RuntimeError) as info:
        flow.value("bad")
    assert "failed" in str(info.value) and "broken input" in str(info.value)
    with pytest.raises(KeyError):
        flow.value("nope")


def test_run_is_fresh_every_time():
    calls = []

    @task
    def a():
        calls.append(1)
        return len(calls)

    flow = Flow(a, log=False)
    assert flow.run()["a"].value == 1
    assert flow.run()["a"].value == 2
    assert len(calls) == 2


def test_ok_is_false_before_run():
    t = task(lambda: 1, name="t")
    assert Flow(t, log=False).ok is False


def test_independent_tasks_run_in_parallel():
    barrier = threading.Barrier(3, timeout=WAIT)

    def meet():
        barrier.wait()  # breaks (and fails the task) unless all three run at once
        return True

    tasks = [task(meet, name=f"t{i}") for i in range(3)]
    results = Flow(*tasks, max_workers=3, log=False).run()
    assert all(r.state is StepState.SUCCEEDED for r in results.values()), results


@pytest.mark.parametrize("max_workers", [1, 2, 3])
def test_max_workers_bounds_bodies_in_flight(max_workers):
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def body():
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1

    tasks = [task(body, name=f"t{i}") for i in range(10)]
    Flow(*tasks, max_workers=max_workers, log=False).run()
    assert 1 <= peak[0] <= max_workers


def test_eager_never_waits_for_unrelated_tasks():
    go = threading.Event()
    slow_done = threading.Event()
    seen = {}

    @task
    def slow():
        go.wait(WAIT)
        slow_done.set()
        return "slow"

    @task
    def quick():
        return 1

    @task(depends_on=[quick])
    def next_step(quick):
        seen["slow_done_at_start"] = slow_done.is_set()
        go.set()
        return quick + 1

    flow = Flow(slow, next_step, max_workers=3, log=False, schedule="eager")
    res = flow.run()
    assert seen["slow_done_at_start"] is False
    assert all(r.ok for r in res.values())


def test_eager_starts_a_task_as_soon_as_its_own_dependencies_succeed():
    # b depends only on a; c is a slow sibling in a's layer. b must not wait for c.
    go = threading.Event()
    seen = {}

    @task
    def a():
        return 1

    @task
    def c():
        go.wait(WAIT)
        return 3

    @task(depends_on=[a])
    def b(a):
        seen["c_still_running"] = not go.is_set()
        go.set()
        return 2

    @task(depends_on=[b, c])
    def d(b, c):
        return b + c

    res = Flow(d, max_workers=2, log=False).run()
    assert seen["c_still_running"] is True
    assert res["d"].value == 5


def test_layers_schedule_waits_for_the_whole_previous_layer():
    slow_done = threading.Event()
    seen = {}
    calls = []

    @task(retry=1, retry_backoff_base_ms=10_000, retry_max_backoff_ms=10_000)
    def slow():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("flaky")  # back after a backoff: eager would not wait
        slow_done.set()
        return "slow"

    @task
    def quick():
        return 1

    @task(depends_on=[quick])
    def next_step(quick):
        seen["slow_done_at_start"] = slow_done.is_set()
        return quick + 1

    flow = Flow(slow, next_step, max_workers=3, log=False, schedule="layers")
    run_inline(flow)  # the backoff passes on its clock, not in a sleep
    res = flow.results
    assert seen["slow_done_at_start"] is True
    assert all(r.ok for r in res.values())


def _diamond_with_failure():
    @task
    def a():
        return 2

    @task(depends_on=[a])
    def b(a):
        return a * 3

    @task(depends_on=[a])
    def c(a):
        raise RuntimeError("c broke")

    @task(depends_on=[a])
    def e(a):
        return a - 1

    @task(depends_on=[b, e])
    def f(b, e):
        return b + e

    @task(depends_on=[c, f])
    def g(c, f):
        return 0

    return g


@pytest.mark.parametrize("fail_fast", [False, True])
def test_eager_and_layers_give_the_same_results(fail_fast):
    terminal = _diamond_with_failure()
    outcomes = {}
    for schedule in ("eager", "layers"):
        if fail_fast:
            # with fail_fast the exact set of skipped tasks depends on timing;
            # with one worker and this graph it is fixed
            flow = Flow(terminal, schedule=schedule, log=False, fail_fast=True, max_workers=1)
        else:
            flow = Flow(terminal, schedule=schedule, log=False, fail_fast=False)
        res = flow.run()
        outcomes[schedule] = {n: (r.state, r.value if r.ok else None) for n, r in res.items()}
    if not fail_fast:
        assert outcomes["eager"] == outcomes["layers"]
        assert outcomes["eager"]["f"] == (StepState.SUCCEEDED, 7)
        assert outcomes["eager"]["g"][0] is StepState.SKIPPED
    for o in outcomes.values():
        assert o["c"][0] is StepState.FAILED
        assert o["g"][0] is StepState.SKIPPED
        assert set(o) == {"a", "b", "c", "e", "f", "g"}


def test_long_chain_does_not_hit_the_recursion_limit():
    n = 3000
    prev = task(lambda: 0, name="t0")
    for i in range(1, n):
        prev = task(lambda **kw: next(iter(kw.values())) + 1, name=f"t{i}", depends_on=[prev])
    flow = Flow(prev, log=False)
    res = flow.run()
    assert res[f"t{n - 1}"].value == n - 1
    assert len(res) == n


def test_long_chain_of_skips_does_not_hit_the_recursion_limit():
    n = 3000

    def boom():
        raise ValueError("first")

    prev = task(boom, name="t0")
    for i in range(1, n):
        prev = task(lambda **kw: 1, name=f"t{i}", depends_on=[prev])
    res = Flow(prev, log=False).run()
    assert res["t0"].state is StepState.FAILED
    assert all(res[f"t{i}"].state is StepState.SKIPPED for i in range(1, n))
    assert res[f"t{n - 1}"].reason == f"dependency 't{n - 2}' was skipped"


def test_wide_flow():
    @task
    def root():
        return 1

    leaves = [task(lambda root, i=i: root + i, name=f"leaf{i}", depends_on=[root])
              for i in range(500)]

    @task(depends_on=leaves)
    def total(**kw):
        return sum(kw.values())

    res = Flow(total, log=False, max_workers=4).run()
    assert res["total"].value == sum(1 + i for i in range(500))


def test_dependency_values_are_passed_by_name():
    @task(name="first")
    def f():
        return "F"

    @task(name="second")
    def s():
        return "S"

    @task(depends_on=[f, s])
    def join(second, first):
        return first + second

    assert Flow(join, log=False).run()["join"].value == "FS"


def test_every_dependency_finishes_before_its_dependent_starts():
    lock = threading.Lock()
    log = []

    def make(name, deps):
        def body(**kw):
            with lock:
                log.append(("start", name))
            time.sleep(0.005)
            with lock:
                log.append(("end", name))
            return name
        return task(body, name=name, depends_on=deps)

    a = make("a", [])
    b = make("b", [a])
    c = make("c", [a])
    d = make("d", [b, c])
    e = make("e", [])
    f = make("f", [d, e])
    for schedule in ("eager", "layers"):
        log.clear()
        Flow(f, schedule=schedule, log=False).run()
        pos = {entry: k for k, entry in enumerate(log)}
        for td in (a, b, c, d, e, f):
            for dep in td.depends_on:
                assert pos[("end", dep.name)] < pos[("start", td.name)], (schedule, log)


def test_summary():
    @task
    def good():
        return 1

    attempts = []

    @task(retry=1, retry_backoff_base_ms=0)
    def flaky():
        attempts.append(1)
        if len(attempts) < 2:
            raise ValueError("first time")
        return 2

    @task
    def bad():
        raise KeyError("missing")

    @task(depends_on=[bad])
    def after(bad):
        pass

    @task(depends_on=[good], detached=True)
    def notify(good):
        pass

    flow = Flow(good, flaky, after, log=False, fail_fast=False)
    flow.run()
    text = flow.summary()
    lines = text.splitlines()
    assert len(lines) == 6  # one per task and the totals line
    by_name = {n: next(line for line in lines if f" {n} " in line or line.split()[1] == n)
               for n in ["good", "flaky", "bad", "after", "notify"]}
    assert by_name["good"].startswith("succeeded")
    assert "attempts=2" in by_name["flaky"]
    assert "attempts=" not in by_name["good"]
    assert by_name["bad"].startswith("failed") and "KeyError" in by_name["bad"]
    assert by_name["after"].startswith("skipped") and "dependency 'bad' failed" in by_name["after"]
    assert "[detached]" in by_name["notify"]
    assert "5 tasks" in lines[-1]
    assert "3 succeeded" in lines[-1] and "1 failed" in lines[-1] and "1 skipped" in lines[-1]


def test_summary_before_run_lists_every_task():
    t = task(lambda: 1, name="t")
    text = Flow(t, log=False).summary()
    assert "t" in text and "not run" in text


def test_value_of_a_skipped_task_names_the_state_and_reason():
    @task
    def bad():
        raise ValueError("x")

    @task(depends_on=[bad])
    def after(bad):
        pass

    flow = Flow(after, log=False)
    flow.run()
    with pytest.raises(RuntimeError) as info:
        flow.value(after)
    assert "skipped" in str(info.value) and "dependency 'bad' failed" in str(info.value)
