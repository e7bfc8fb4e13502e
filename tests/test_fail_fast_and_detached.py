"""fail_fast, and detached side-effects that run after the main graph."""

import threading

from engine_driver import run_inline

from flowing import Flow, StepState, task
from flowing.observe.events import TaskSkipped, TaskStarted

WAIT = 10


def test_fail_fast_skips_tasks_that_never_started():
    calls = []

    @task
    def bad():
        calls.append("bad")
        raise ValueError("boom")

    later = [task(lambda i=i: calls.append(i), name=f"later{i}") for i in range(4)]
    flow = Flow(bad, *later, max_workers=1, log=False, fail_fast=True)
    res = flow.run()
    assert res["bad"].state is StepState.FAILED
    skipped = [n for n, r in res.items() if r.state is StepState.SKIPPED]
    assert skipped, res
    for n in skipped:
        assert res[n].reason == "not started: fail_fast: 'bad' failed"
        assert res[n].attempts == 0
    # every main task has a result
    assert set(res) == {"bad"} | {f"later{i}" for i in range(4)}
    # tasks that ran succeeded, tasks that were skipped never ran
    ran = {n for n, r in res.items() if r.state is StepState.SUCCEEDED}
    assert len(calls) == 1 + len(ran)


def test_skipped_not_started_tasks_have_no_started_event():
    """A task recorded as 'not started' must not have been announced as started."""
    events = []

    @task
    def bad():
        raise ValueError("boom")

    others = [task(lambda: 1, name=f"other{i}") for i in range(3)]
    flow = Flow(bad, *others, max_workers=1, log=False, on_event=events.append)
    run_inline(flow)  # bad is handed over first, alone: every other is skipped
    res = flow.results
    not_started = {n for n, r in res.items()
                   if r.state is StepState.SKIPPED and r.reason.startswith("not started")}
    assert not_started == {"other0", "other1", "other2"}
    announced = {e.task for e in events if isinstance(e, TaskStarted)}
    assert not (announced & not_started), (
        f"TaskStarted was emitted for tasks later skipped as not started: "
        f"{sorted(announced & not_started)}")


def test_fail_fast_dependents_are_skipped_naming_the_dependency():
    @task
    def bad():
        raise ValueError("boom")

    @task(depends_on=[bad])
    def child(bad):
        pass

    res = Flow(child, log=False).run()
    assert res["child"].reason == "dependency 'bad' failed"


def test_started_tasks_run_to_the_end_with_their_retries():
    calls = []

    @task
    def bad():
        raise ValueError("boom")

    @task(retry=2, retry_backoff_base_ms=10, retry_max_backoff_ms=10)
    def running():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("transient")  # retried after bad's failure was seen
        return "finished"

    @task(depends_on=[running])
    def downstream(running):
        return running

    flow = Flow(bad, downstream, max_workers=2, log=False, fail_fast=True)
    run_inline(flow)  # bad and running are handed over together; bad's verdict comes first
    res = flow.results
    assert res["bad"].state is StepState.FAILED
    r = res["running"]
    assert r.state is StepState.SUCCEEDED, r
    assert r.attempts == 2
    # downstream had not started when the failure happened
    assert res["downstream"].state is StepState.SKIPPED
    assert res["downstream"].reason == "not started: fail_fast: 'bad' failed"


def test_fail_fast_false_runs_everything_that_can_run():
    calls = []

    @task
    def bad():
        raise ValueError("boom")

    @task(depends_on=[bad])
    def child(bad):
        calls.append("child")

    ok_tasks = [task(lambda i=i: calls.append(i), name=f"ok{i}") for i in range(5)]
    flow = Flow(child, *ok_tasks, max_workers=1, log=False, fail_fast=False)
    res = flow.run()
    assert all(res[f"ok{i}"].state is StepState.SUCCEEDED for i in range(5))
    assert res["child"].state is StepState.SKIPPED
    assert sorted(c for c in calls if c != "child") == list(range(5))
    assert "child" not in calls


def test_fail_fast_with_layers_schedule():
    @task
    def bad():
        raise ValueError("boom")

    @task
    def fine():
        return 1

    @task(depends_on=[fine])
    def next_layer(fine):
        return 2

    res = Flow(bad, next_layer, schedule="layers", log=False).run()
    assert res["bad"].state is StepState.FAILED
    assert res["next_layer"].state is StepState.SKIPPED
    # 'fine' may itself have been stopped before starting: either way the next layer
    # never starts
    assert res["next_layer"].reason in ("not started: fail_fast: 'bad' failed",
                                        "dependency 'fine' was skipped")
    assert res["fine"].state in (StepState.SUCCEEDED, StepState.SKIPPED)


# --- detached ---

def test_detached_task_is_discovered_and_runs_after_every_main_task():
    lock = threading.Lock()
    order = []

    def mark(what):
        with lock:
            order.append(what)

    @task
    def quick():
        mark("quick")
        return 1

    @task
    def start():
        return 0

    @task(depends_on=[start])
    def slow(start):  # two steps away: a detached task not held would run before it
        mark("slow")
        return 2

    @task(depends_on=[quick], detached=True)
    def notify(quick):
        mark("notify")
        return quick

    flow = Flow(quick, slow, log=False)
    run_inline(flow)
    res = flow.results
    assert res["notify"].state is StepState.SUCCEEDED and res["notify"].value == 1
    assert order.index("notify") > order.index("slow")
    assert flow.ok


def test_detached_chain_runs_in_dependency_order():
    order = []

    @task
    def main():
        order.append("main")
        return 0

    @task(depends_on=[main], detached=True)
    def d1(main):
        order.append("d1")
        return main + 1

    @task(depends_on=[d1], detached=True)
    def d2(d1):
        order.append("d2")
        return d1 + 1

    flow = Flow(main, log=False)
    res = flow.run()
    assert order == ["main", "d1", "d2"]
    assert res["d2"].value == 2


def test_detached_failure_lands_in_detached_failures_and_keeps_ok():
    @task
    def main():
        return 1

    @task(depends_on=[main], detached=True)
    def notify(main):
        raise ConnectionError("webhook down")

    flow = Flow(main, log=False)
    flow.run()
    assert flow.ok
    failures = flow.detached_failures
    assert [r.name for r in failures] == ["notify"]
    assert isinstance(failures[0].error, ConnectionError)


def test_detached_failure_never_triggers_fail_fast():
    @task
    def main():
        return 1

    @task(depends_on=[main], detached=True)
    def first(main):
        raise ConnectionError("down")

    @task(depends_on=[main], detached=True)
    def second(main):  # handed over after first failed (one worker)
        return "ran"

    @task(depends_on=[first], detached=True)
    def after_first(first):
        return 1

    flow = Flow(main, max_workers=1, log=False, fail_fast=True)
    run_inline(flow)
    res = flow.results
    assert res["first"].state is StepState.FAILED
    assert res["second"].state is StepState.SUCCEEDED
    assert res["after_first"].reason == "dependency 'first' failed"


def test_detached_task_runs_when_its_deps_succeeded_even_if_another_main_task_failed():
    @task
    def good():
        return 1

    @task
    def bad():
        raise ValueError("boom")

    @task(depends_on=[good], detached=True)
    def record(good):
        return "recorded"

    @task(depends_on=[bad], detached=True)
    def record_bad(bad):
        return "never"

    flow = Flow(good, bad, log=False, fail_fast=True)
    run_inline(flow)
    res = flow.results
    assert res["record"].state is StepState.SUCCEEDED
    assert res["record_bad"].state is StepState.SKIPPED
    assert res["record_bad"].reason == "dependency 'bad' failed"
    assert not flow.ok
    assert flow.detached_failures == []


def test_detached_named_as_terminal_still_runs_last():
    order = []

    @task
    def a():
        order.append("a")
        return 1

    @task(depends_on=[a], detached=True)
    def side(a):
        order.append("side")

    @task
    def a0():
        return 0

    @task(depends_on=[a0])
    def b(a0):  # two steps away: side, were it not held, would run before it
        order.append("b")

    run_inline(Flow(side, b, log=False))
    assert order.index("side") > order.index("b")


def test_detached_with_layers_schedule():
    order = []

    @task
    def a():
        order.append("a")
        return 1

    @task(depends_on=[a])
    def mid(a):
        return a

    @task(depends_on=[mid])
    def b(mid):  # two steps after a: side, were it not held, would run before it
        order.append("b")
        return 2

    @task(depends_on=[a], detached=True)
    def side(a):
        order.append("side")

    flow = Flow(b, schedule="layers", log=False)
    run_inline(flow)
    res = flow.results
    assert order == ["a", "b", "side"]
    assert res["side"].ok


def test_detached_skip_events_are_marked_detached():
    events = []

    @task
    def bad():
        raise ValueError("x")

    @task(depends_on=[bad], detached=True)
    def side(bad):
        pass

    Flow(bad, log=False, on_event=events.append).run()
    skips = [e for e in events if isinstance(e, TaskSkipped) and e.task == "side"]
    assert len(skips) == 1 and skips[0].detached


def test_when_raising_counts_as_a_failure_for_fail_fast():
    def when():
        raise LookupError("cannot decide")

    @task(when=when)
    def gated():
        pass

    others = [task(lambda: 1, name=f"other{i}") for i in range(3)]
    res = Flow(gated, *others, max_workers=1, log=False).run()
    assert res["gated"].state is StepState.FAILED
    assert any(r.reason == "not started: fail_fast: 'gated' failed" for r in res.values())


def test_when_false_is_not_a_failure_for_fail_fast():
    @task(when=lambda: False)
    def gated():
        pass

    others = [task(lambda: 1, name=f"other{i}") for i in range(3)]
    flow = Flow(gated, *others, max_workers=1, log=False)
    res = flow.run()
    assert res["gated"].state is StepState.SKIPPED
    assert all(res[f"other{i}"].ok for i in range(3))
    assert flow.ok  # a task skipped by its own gate keeps the run ok (SPEC 3)


def test_a_sibling_ready_beside_an_instant_failure_always_runs():
    """SPEC §5: tasks ready together start together (as far as max_workers allows); a
    failure seen later never skips one of them, whichever worker gets to it first."""
    ran = []

    @task
    def a():
        raise ValueError("fails at once")

    @task
    def b():
        ran.append(1)
        return "b"

    for _ in range(300):
        res = Flow(a, b, log=False).run()
        assert res["a"].state is StepState.FAILED
        assert res["b"].state is StepState.SUCCEEDED, res["b"].reason
    assert len(ran) == 300


def test_siblings_on_a_callers_executor_all_run_too():
    from concurrent.futures import ThreadPoolExecutor

    @task
    def a():
        raise ValueError("fails at once")

    siblings = [task(lambda: 1, name=f"s{k}") for k in range(3)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(100):
            res = Flow(a, *siblings, executor=pool, max_workers=4, log=False).run()
            assert all(res[f"s{k}"].ok for k in range(3)), [res[f"s{k}"].reason
                                                             for k in range(3)]


def test_a_task_released_after_the_failure_was_seen_is_skipped():
    gate = threading.Event()

    @task
    def a():
        raise ValueError("boom")

    @task
    def slow():
        gate.wait(WAIT)
        return 1

    @task(depends_on=[slow])
    def after(slow):
        return slow

    def on_event(event):  # on the scheduler thread: it has now seen a's failure
        if getattr(event, "task", None) == "a" and type(event).__name__ == "TaskFailed":
            gate.set()

    flow = Flow(a, after, log=False, on_event=on_event)
    res = flow.run()
    assert res["slow"].ok  # ready at the start: it ran
    assert res["after"].state is StepState.SKIPPED
    assert res["after"].reason == "not started: fail_fast: 'a' failed"


def test_a_limited_sibling_ready_beside_an_instant_failure_always_runs():
    from flowing import Limit

    @task
    def a():
        raise ValueError("fails at once")

    @task(limit=Limit(max_concurrency=1))
    def b():
        return "b"

    for _ in range(100):
        res = Flow(a, b, log=False).run()
        assert res["b"].ok, res["b"].reason
