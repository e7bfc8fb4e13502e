"""Process pools ship quick bodies several per engine task (``runners.remote``,
batching): what a user relies on is that every item still gets its own value,
its own error and its own verdict, that slow, timed and local bodies go one by
one, and that a batch lost with its worker fails each of its calls cleanly.

A real ``ProcessPoolExecutor`` throughout; ``Counting`` only counts the engine
tasks it is handed, to show how calls were grouped."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowing import Flow, StepState, task
from flowing.engine.admission import Admission
from flowing.errors import CannotShip, PoolBroken
from flowing.runners.attempt import Job

FLOW_PID = os.getpid()


class Counting(ProcessPoolExecutor):
    """A real process pool that counts the engine tasks handed to it."""

    def __init__(self, workers: int = 2) -> None:
        super().__init__(workers)
        self.submits = 0
        self._count_lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        with self._count_lock:
            self.submits += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def pool():
    with Counting(2) as ex:
        ex.submit(pow, 2, 2).result(timeout=30)  # workers up
        yield ex


def counted(pool: Counting, flow: Flow) -> tuple[Any, int]:
    before = pool.submits
    results = flow.run()
    return results, pool.submits - before


# ----- module-level tasks (found by name in the workers) -----------------------------


@task
def numbers():
    return list(range(300))


@task(depends_on=[numbers], for_each=numbers)
def square(numbers):
    if numbers == 137:
        raise ValueError("137 is unlucky")
    return (numbers * numbers, os.getpid())


@task(depends_on=[numbers], for_each=numbers)
def slow_square(numbers):
    time.sleep(0.01)
    return numbers * numbers


@task(depends_on=[numbers], for_each=numbers, timeout_s=30)
def timed_square(numbers):
    return numbers * numbers


@task
def few():
    return list(range(40))


@task(depends_on=[few], for_each=few)
def unpicklable_at_7(few):
    if few == 7:
        return threading.Lock()
    return few


@task(depends_on=[few], for_each=few)
def dies_at_30(few):
    if few == 30:
        os._exit(3)
    return few


def ident(x=None, **kw):
    return os.getpid()


# ----- batching -----------------------------------------------------------------------


def test_quick_items_share_engine_tasks_and_keep_their_own_values_and_errors(pool):
    results, submits = counted(pool, Flow(square, executor=pool, max_workers=2, log=False))
    r = results["square"]
    assert r.state is StepState.FAILED  # one item failed
    values = [item.value for item in r.items]
    assert [v if v is None else v[0] for v in values] == [
        None if n == 137 else n * n for n in range(300)]
    assert FLOW_PID not in {v[1] for v in values if v is not None}
    failed = [item for item in r.items if item.state is StepState.FAILED]
    assert [item.index for item in failed] == [137]
    assert "137 is unlucky" in str(failed[0].error)
    assert submits < 300 // 3, submits  # several calls per engine task


def test_slow_bodies_go_one_per_engine_task(pool):
    results, submits = counted(pool, Flow(slow_square, executor=pool, max_workers=2,
                                          log=False))
    assert results["slow_square"].value == [n * n for n in range(300)]
    assert submits == 301  # numbers, then each item alone


def test_timed_bodies_go_one_per_engine_task(pool):
    results, submits = counted(pool, Flow(timed_square, executor=pool, max_workers=2,
                                          log=False))
    assert results["timed_square"].value == [n * n for n in range(300)]
    assert submits == 301


def test_an_unpicklable_value_fails_its_own_item_only(pool):
    flow = Flow(unpicklable_at_7, executor=pool, max_workers=2, log=False)
    r = flow.run()["unpicklable_at_7"]
    bad = [item for item in r.items if item.state is StepState.FAILED]
    assert [item.index for item in bad] == [7]
    assert isinstance(bad[0].error, CannotShip)
    assert [item.value for item in r.items if item.index != 7] == [
        n for n in range(40) if n != 7]


def test_a_worker_lost_in_a_batch_fails_each_of_its_calls_and_the_run_returns():
    with ProcessPoolExecutor(2) as ex:
        flow = Flow(dies_at_30, executor=ex, max_workers=2, log=False)
        r = flow.run()["dies_at_30"]
    lost = [item for item in r.items if item.state is StepState.FAILED]
    assert lost and any(item.index == 30 for item in lost)
    assert all(isinstance(item.error, PoolBroken) for item in lost)
    assert all(item.value == item.index for item in r.items
               if item.state is StepState.SUCCEEDED)


def test_a_wide_graph_of_one_body_is_batched_and_its_local_sink_runs_here(pool):
    root = task(ident, name="root")
    mids = [task(ident, name=f"m{i}", depends_on=[root]) for i in range(200)]
    sink = task(ident, name="sink", depends_on=mids, local=True)
    results, submits = counted(pool, Flow(sink, executor=pool, max_workers=2, log=False))
    assert results["sink"].value == FLOW_PID
    assert FLOW_PID not in {results[f"m{i}"].value for i in range(200)}
    assert submits < 200 // 3, submits


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["ok", "raise", "slow"]), min_size=1, max_size=60),
       st.integers(1, 8))
def test_batched_verdicts_equal_the_verdicts_on_threads(pool, kinds, max_workers):
    """Whatever mix of quick, failing and slow items, and however many in flight: the
    pool gives every item the verdict threads give it."""
    items = task(lambda: kinds, name="kinds", local=True)
    body = task(mixed_body, name="mixed", depends_on=[items], for_each=items)

    def verdicts(**kw: Any) -> list[tuple[StepState, Any]]:
        r = Flow(body, max_workers=max_workers, log=False, **kw).run()["mixed"]
        return [(item.state, item.value if item.state is StepState.SUCCEEDED
                 else type(item.error).__name__) for item in r.items]

    assert verdicts(executor=pool) == verdicts()


def mixed_body(kinds):
    if kinds == "raise":
        raise KeyError(kinds)
    if kinds == "slow":
        time.sleep(0.005)
    return kinds.upper()


# ----- admission -----------------------------------------------------------------------


class _Starter:
    """Admission's view of a scheduler: records what it is handed."""

    def __init__(self, tasks: list[Any]) -> None:
        self.tasks = tasks
        self.started: list[int] = []

    def not_started(self, i: int) -> bool:
        return False

    def make_job(self, i: int) -> Job:
        return Job(i, self.tasks[i], {})

    def start(self, job: Job) -> None:
        self.started.append(job.task)


def test_admission_hands_over_quick_jobs_beyond_capacity_up_to_its_bound_in_order():
    fast = task(ident, name="fast")
    slow = task(ident, name="slow")
    tasks = [fast, slow]
    quick = bytearray([1, 0])
    adm = Admission(2, 4, _clock(), lambda: None, lambda _: None, quick, 10)
    s = _Starter(tasks)
    adm.ready.extend([0] * 12 + [1] + [0] * 3)
    adm.dispatch(s)
    assert s.started == [0] * 10  # quick ones up to quick_capacity
    adm.in_flight = 3
    s.started.clear()
    adm.ready.clear()
    adm.ready.extend([1, 0, 1])
    adm.dispatch(s)
    # the slow job takes the last ordinary slot, the quick one goes beyond it, and
    # the next slow one waits for capacity
    assert s.started == [1, 0] and list(adm.ready) == [1]
    s.started.clear()
    adm.ready.append(0)
    adm.dispatch(s)
    assert s.started == []  # a quick job behind a waiting slow one waits too (FIFO)
    adm.in_flight = 3
    adm.dispatch(s)
    assert s.started == [1, 0]


def _clock() -> Any:
    from flowing.engine.admission import SYSTEM_CLOCK

    return SYSTEM_CLOCK
