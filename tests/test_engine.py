"""The scheduler driven deterministically: an in-process runner that settles each
attempt where it is handed over, and a clock that moves only when the scheduler
waits (backoffs, rates, deadlines) or a body advances it. No threads, no sleeps:
the order of starts is exactly the scheduler's decision."""

from __future__ import annotations

from typing import Any

import pytest
from engine_driver import run_inline
from hypothesis import given, settings
from hypothesis import strategies as st

from flowing import Flow, Limit, StepState, task
from flowing.engine.scheduler import Scheduler, run_ok
from flowing.results import SkipCause, StepResult
from flowing.runners.base import Unbatched
from flowing.runners.inline import InlineRunner, ManualClock

S, F, K = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED


def drive(*terminals: Any, max_workers: int = 2, fail_fast: bool = True,
          schedule: str = "eager", clock: ManualClock | None = None
          ) -> tuple[dict[str, StepResult], Scheduler]:
    """Run the flow of ``terminals`` through the scheduler with the inline runner."""
    flow = Flow(*terminals, max_workers=max_workers, fail_fast=fail_fast, schedule=schedule,
                log=False)
    scheduler = run_inline(flow, clock)
    return flow.results, scheduler


def _retry_graph(log: list[str], clock: ManualClock) -> list[Any]:
    """a fails once (backoff 10 s); b is a sibling; c needs a, d needs b."""
    calls = {"a": 0}

    @task(retry=1, retry_backoff_base_ms=10_000, retry_max_backoff_ms=10_000)
    def a() -> int:
        calls["a"] += 1
        log.append(f"a@{clock.monotonic()!r}")
        if calls["a"] == 1:
            raise ConnectionError("flaky")
        return 1

    @task
    def b() -> int:
        log.append("b")
        return 2

    @task(depends_on=[a])
    def c(a: int) -> int:
        log.append("c")
        return a

    @task(depends_on=[b])
    def d(b: int) -> int:
        log.append("d")
        return b

    return [c, d]


def _backoff_of(log: list[str]) -> float:
    first, second = (float(e[2:]) for e in log if e.startswith("a@"))
    return second - first


def test_eager_starts_a_task_the_moment_its_own_dependencies_succeed():
    clock, log = ManualClock(), []
    res, _ = drive(*_retry_graph(log, clock), max_workers=1, clock=clock)
    assert [e[0] for e in log] == ["a", "b", "d", "a", "c"]
    assert all(r.state is S for r in res.values())
    assert res["a"].attempts == 2
    # the backoff (equal jitter: 5 to 10 s) passed on the clock, not in a sleep
    assert 5.0 <= _backoff_of(log) <= 10.5


def test_layers_holds_a_task_until_every_earlier_layer_finished():
    clock, log = ManualClock(), []
    res, _ = drive(*_retry_graph(log, clock), max_workers=1, schedule="layers", clock=clock)
    # d waits for a's retry (layer 0) although its own dependency b finished long before
    assert [e[0] for e in log] == ["a", "b", "a", "d", "c"]
    assert all(r.state is S for r in res.values())
    assert 5.0 <= _backoff_of(log) <= 10.5


def test_fail_fast_runs_a_sibling_handed_over_before_the_failure_and_starts_nothing_new():
    ran = []

    @task
    def bad() -> None:
        ran.append("bad")
        raise ValueError("boom")

    @task
    def sibling() -> int:
        ran.append("sibling")
        return 1

    @task(depends_on=[sibling])
    def after(sibling: int) -> int:
        ran.append("after")
        return sibling

    @task
    def queued() -> int:  # ready with the others, but no slot until the failure is seen
        ran.append("queued")
        return 3

    res, _ = drive(bad, after, queued, max_workers=2)
    assert ran == ["bad", "sibling"]
    assert res["bad"].state is F and res["sibling"].state is S
    for name in ("after", "queued"):
        assert res[name].state is K
        assert res[name].reason == "not started: fail_fast: 'bad' failed"
        assert res[name].skip_cause is SkipCause.NOT_STARTED
        assert res[name].attempts == 0


def test_without_fail_fast_everything_that_can_run_runs():
    ran = []

    @task
    def bad() -> None:
        ran.append("bad")
        raise ValueError("boom")

    @task(depends_on=[bad])
    def child(bad: None) -> None:
        ran.append("child")

    @task(depends_on=[child])
    def grandchild(child: None) -> None:
        ran.append("grandchild")

    @task
    def other() -> None:
        ran.append("other")

    res, _ = drive(grandchild, other, max_workers=1, fail_fast=False)
    assert ran == ["bad", "other"]
    assert res["child"].reason == "dependency 'bad' failed"
    assert res["child"].skip_cause is SkipCause.DEPENDENCY_FAILED
    assert res["grandchild"].reason == "dependency 'child' was skipped"
    assert res["grandchild"].skip_cause is SkipCause.DEPENDENCY_SKIPPED


def test_detached_tasks_run_after_every_main_task_even_after_a_failure():
    ran = []

    @task
    def first() -> int:
        ran.append("first")
        return 1

    @task(detached=True)
    def notify() -> None:
        ran.append("notify")

    @task(depends_on=[first])
    def second(first: int) -> None:
        ran.append("second")
        raise ValueError("boom")

    @task(depends_on=[notify], detached=True)
    def archive(notify: None) -> None:
        ran.append("archive")

    res, _ = drive(second, archive, max_workers=4)
    assert ran == ["first", "second", "notify", "archive"]
    assert res["notify"].state is S and res["notify"].detached
    assert res["second"].state is F


def test_a_limit_admits_at_most_its_concurrency():
    limit = Limit(max_concurrency=1)
    seen = []

    def body(k: int) -> Any:
        def run() -> int:
            seen.append(limit.in_flight)
            return k
        return task(run, name=f"t{k}", limit=limit)

    res, scheduler = drive(*[body(k) for k in range(5)], max_workers=4)
    assert all(r.state is S for r in res.values())
    assert seen == [1] * 5
    assert limit.in_flight == 0 and not scheduler.admission.admitted


def test_a_limit_rate_spaces_starts_on_the_clock():
    clock = ManualClock()
    limit = Limit(rate=(2, 10.0))  # 2 per 10 s, burst 1: one start every 5 s
    starts = []

    def body(k: int) -> Any:
        def run() -> int:
            starts.append(clock.monotonic())
            return k
        return task(run, name=f"t{k}", limit=limit)

    res, _ = drive(*[body(k) for k in range(4)], max_workers=4, clock=clock)
    assert all(r.state is S for r in res.values())
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) == 3 and all(g >= 5.0 - 1e-9 for g in gaps), gaps
    # and no window of the period saw more than 2 starts
    assert all(starts[k + 2] - starts[k] >= 10.0 for k in range(len(starts) - 2)), starts


def test_a_body_that_outlasts_its_timeout_fails_and_is_retried():
    clock = ManualClock()
    calls = []

    @task(timeout_s=2, retry=1, retry_backoff_base_ms=1000, retry_max_backoff_ms=1000)
    def slow() -> str:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            clock.advance(5)  # the first attempt takes 5 s
        return "done"

    @task(timeout_s=2)
    def stuck() -> str:
        clock.advance(3)
        return "late"

    res, _ = drive(slow, stuck, max_workers=1, fail_fast=False, clock=clock)
    assert res["slow"].state is S and res["slow"].value == "done"
    assert res["slow"].attempts == 2
    assert calls[1] - calls[0] >= 5 + 1 - 0.5  # the body's time, then its backoff
    assert res["stuck"].state is F
    assert isinstance(res["stuck"].error, TimeoutError)
    assert res["stuck"].value is None  # a late value is discarded


def test_a_when_gate_skip_is_data_and_keeps_the_run_ok():
    @task(when=lambda: False)
    def gated() -> int:
        return 1

    @task(depends_on=[gated])
    def below(gated: int) -> int:
        return gated

    res, scheduler = drive(below)
    assert res["gated"].skip_cause is SkipCause.GATE
    assert res["gated"].reason == "when() returned False"
    assert res["below"].skip_cause is SkipCause.DEPENDENCY_SKIPPED
    assert run_ok(scheduler.graph, scheduler.results)


def test_run_ok_reads_the_skip_cause_never_the_reason_text():
    @task
    def top() -> int:
        return 1

    @task(depends_on=[top])
    def below(top: int) -> int:
        return top

    graph = Flow(below, log=False).graph
    gate = StepResult("top", K, reason="anything at all", skip_cause=SkipCause.GATE)
    follows = StepResult("below", K, reason="no usual words", skip_cause=SkipCause.DEPENDENCY_SKIPPED)
    assert run_ok(graph, [gate, follows])
    # the usual words without the cause are not a gate skip
    worded = StepResult("top", K, reason="when() returned False")
    assert not run_ok(graph, [worded, follows])
    # a task stopped by fail_fast is not gated, whatever its reason says
    stopped = StepResult("below", K, reason="dependency 'top' was skipped",
                         skip_cause=SkipCause.NOT_STARTED)
    assert not run_ok(graph, [gate, stopped])


@st.composite
def _dags(draw: Any) -> list[list[int]]:
    n = draw(st.integers(1, 9))
    return [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set())
            for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(dag=_dags(), layers=st.booleans(), workers=st.integers(1, 3),
       failing=st.sets(st.integers(0, 8), max_size=2),
       flaky=st.sets(st.integers(0, 8), max_size=3))
def test_every_task_starts_after_its_dependencies_and_layers_in_order(dag, layers, workers,
                                                                      failing, flaky):
    """Flaky tasks fail once and are retried after a backoff: meanwhile eager runs
    what it can, and layers must still hold later layers back."""
    order: list[int] = []
    tasks: list[Any] = []
    tries: dict[int, int] = {}
    for i, deps in enumerate(dag):
        def body(_i: int = i, **_: Any) -> int:
            tries[_i] = tries.get(_i, 0) + 1
            if _i in flaky and tries[_i] == 1:
                raise ConnectionError(f"t{_i} once")
            order.append(_i)
            if _i in failing:
                raise ValueError(f"t{_i} fails")
            return _i
        tasks.append(task(body, name=f"t{i}", depends_on=[tasks[d] for d in deps], retry=1,
                          retry_backoff_base_ms=5000, retry_max_backoff_ms=5000))
    res, scheduler = drive(*tasks, max_workers=workers, fail_fast=False,
                           schedule="layers" if layers else "eager")
    assert len(res) == len(dag)
    layer = scheduler.graph.layer
    index = {t.name: k for k, t in enumerate(scheduler.graph.tasks)}
    pos = {i: k for k, i in enumerate(order)}
    for i, deps in enumerate(dag):
        r = res[f"t{i}"]
        if i in pos:  # it ran: every dependency succeeded, and ran before it
            assert all(res[f"t{d}"].state is S and pos[d] < pos[i] for d in deps)
            assert r.state is (F if i in failing else S)
        else:  # it did not run: a dependency did not succeed, and says so
            assert r.state is K
            assert r.skip_cause in (SkipCause.DEPENDENCY_FAILED, SkipCause.DEPENDENCY_SKIPPED)
            assert any(res[f"t{d}"].state is not S for d in deps)
    if layers:
        ran = [layer[index[f"t{i}"]] for i in order]
        assert ran == sorted(ran)


def test_the_runner_is_the_callers():
    made = []

    def factory(shared: Any) -> InlineRunner:
        runner = InlineRunner(shared)
        made.append(runner)
        return runner

    @task
    def one() -> int:
        return 1

    flow = Flow(one, log=False)
    scheduler = Scheduler(flow.graph, factory, max_workers=1, fail_fast=True,
                          schedule="eager", reporter=flow._reporter)
    assert made == [scheduler.runner]
    assert scheduler.run({}, {})[0].value == 1  # type: ignore[union-attr]


class _Hangs(Unbatched):
    """A runner on which the jobs of one task never come back (a hung engine): they
    start (their deadline is stamped) and no verdict ever arrives."""

    fuses = False
    queues_ahead = False

    def __init__(self, shared: Any, clock: ManualClock, name: str) -> None:
        self.inner, self.clock, self.name = InlineRunner(shared, clock), clock, name

    def submit(self, job: Any) -> None:
        if job.td.name != self.name:
            self.inner.submit(job)
            return
        job.first_started = self.clock.time()
        job.deadline = job.first_started + job.td.timeout_s

    def close(self) -> None:
        pass


class _BoundedClock(ManualClock):
    """A manual clock that ends a run still going after an hour of its time, or
    after 10,000 waits (a loop that spins without time passing)."""

    def __init__(self) -> None:
        super().__init__()
        self.start, self.waits = self.now, 0

    def wait(self, inbox: Any, timeout: float) -> Any:
        self.waits += 1
        if self.now - self.start > 3600 or self.waits > 10_000:
            raise AssertionError("the run never ended")
        return super().wait(inbox, timeout)


def test_a_timed_job_whose_verdict_never_comes_is_failed_after_its_deadline():
    clock = _BoundedClock()

    @task(timeout_s=10)
    def hung() -> int:
        return 1

    @task(depends_on=[hung])
    def after(hung: int) -> int:
        return hung

    @task
    def other() -> int:
        return 2

    flow = Flow(after, other, log=False, fail_fast=False)
    t0 = clock.time()
    scheduler = Scheduler(flow.graph, lambda shared: _Hangs(shared, clock, "hung"),
                          max_workers=2, fail_fast=False, schedule="eager",
                          reporter=flow._reporter, clock=clock)
    results = {r.name: r for r in scheduler.run({}, {}) if r is not None}
    assert results["other"].state is S
    assert results["hung"].state is F and isinstance(results["hung"].error, TimeoutError)
    assert results["after"].skip_cause is SkipCause.DEPENDENCY_FAILED
    # failed at its deadline plus the grace (max(1 s, 10%)), not before
    assert clock.time() - t0 >= 10 + 1
    assert any("no verdict 1s after its deadline; failed by the scheduler" in w
               for w in scheduler._warned)


@pytest.mark.parametrize("advance", [-1.0])
def test_a_manual_clock_never_goes_back(advance):
    with pytest.raises(ValueError, match="only moves forward"):
        ManualClock().advance(advance)
