"""flowing.current(): the body's view of its run (SPEC §3), and what a run's result says
about it: ok, failures, detached (SPEC §3), one run at a time per Flow, and Limits that
bound bodies across every flow of the process (SPEC §5, §8)."""

import asyncio
import threading
import time

import pytest
from helpers import Gauge

import flowing
from flowing import Cancelled, Flow, Limit, StepState, current, task

S, F, K = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED


# ----- current() -----------------------------------------------------------------

def test_a_generate_until_valid_loop_reads_the_attempt_number_across_resume():
    seen = []

    @task(retry=3, retry_backoff_base_ms=0, retry_until=lambda v: v.endswith("3"))
    def generate():
        ctx = current()
        seen.append((ctx.task, ctx.attempt, ctx.max_attempts))
        return f"draft {ctx.attempt}"

    flow = Flow(generate, log=False)
    flow.run()
    assert flow.value(generate) == "draft 3"
    assert seen == [("generate", 1, 4), ("generate", 2, 4), ("generate", 3, 4)]
    seen.clear()
    flow.resume(from_tasks=[generate])  # a global counter would have drifted here
    assert [a for _, a, _ in seen] == [1, 2, 3]


def test_items_see_their_index_and_item_in_sync_and_async_bodies():
    @task
    def ids():
        return ["a", "b", "c"]

    @task(depends_on=[ids], for_each="ids")
    def sync_each(ids):
        ctx = current()
        return (ctx.item_index, ctx.item, ids)

    @task(depends_on=[ids], for_each="ids")
    async def async_each(ids):
        await asyncio.sleep(0)
        ctx = current()
        return (ctx.item_index, ctx.item, ctx.task)

    flow = Flow(sync_each, async_each, log=False, max_workers=3)
    flow.run()
    assert flow.value(sync_each) == [(0, "a", "a"), (1, "b", "b"), (2, "c", "c")]
    assert flow.value(async_each) == [(0, "a", "async_each"), (1, "b", "async_each"),
                                      (2, "c", "async_each")]


def test_a_plain_task_has_no_item_and_no_deadline_without_timeout():
    @task
    def plain():
        ctx = current()
        return (ctx.item_index, ctx.item, ctx.deadline, ctx.remaining_s(), ctx.cancelled())

    flow = Flow(plain, log=False)
    flow.run()
    assert flow.value(plain) == (None, None, None, None, False)


def test_deadline_and_remaining_time_follow_timeout_s():
    @task(timeout_s=5)
    def timed():
        ctx = current()
        return ctx.deadline - time.time(), ctx.remaining_s()

    flow = Flow(timed, log=False)
    flow.run()
    left, remaining = flow.value(timed)
    assert 4.0 < left <= 5.0 and 4.0 < remaining <= 5.0


def test_a_sync_body_that_polls_stops_cleanly_when_its_attempt_times_out():
    stopped = threading.Event()

    @task(timeout_s=0.3)
    def polls():
        ctx = current()
        for _ in range(500):  # at most 10 s
            if ctx.cancelled():
                stopped.set()
                return "stopped"
            time.sleep(0.02)
        return "ran to the end"

    flow = Flow(polls, log=False)
    flow.run()
    r = flow.results["polls"]
    assert r.state is F and isinstance(r.error, TimeoutError)
    assert stopped.wait(5), "the abandoned body was never told to stop"


def test_raise_if_cancelled_raises_cancelled_under_fail_fast():
    told = threading.Event()
    started = threading.Event()

    @task
    def breaks():
        started.wait(5)
        raise ValueError("boom")

    @task
    def long_poller():
        started.set()
        ctx = current()
        for _ in range(500):
            try:
                ctx.raise_if_cancelled()
            except Cancelled:
                told.set()
                raise
            time.sleep(0.02)
        return "done"

    flow = Flow(breaks, long_poller, log=False, max_workers=2)
    flow.run()
    assert told.is_set()
    assert flow.results["long_poller"].state is F
    assert isinstance(flow.results["long_poller"].error, Cancelled)


def test_current_outside_a_body_is_a_clear_error_and_the_context_is_read_only():
    with pytest.raises(RuntimeError, match="outside a task body"):
        current()
    box = []

    @task
    def grab():
        box.append(current())
        return 1

    Flow(grab, log=False).run()
    with pytest.raises(AttributeError):
        box[0].attempt = 5
    assert "grab" in repr(box[0])
    assert flowing.RunContext is type(box[0])


def test_current_does_not_leak_between_tasks_on_one_worker():
    @task
    def first():
        return current().task

    @task(depends_on=[first])
    def second(first):
        return (first, current().task)

    flow = Flow(second, log=False, max_workers=1)
    flow.run()
    assert flow.value(second) == ("first", "second")
    with pytest.raises(RuntimeError):
        current()


# ----- ok, failures, detached ------------------------------------------------------

def test_a_gated_pipeline_that_skips_by_its_own_when_is_ok():
    @task
    def rows():
        return [1, 2]

    @task(depends_on=[rows])
    def total(rows):
        return sum(rows)

    @task(depends_on=[total], when=lambda total: total > 100)
    def alert(total):
        return "ALERT"

    @task(depends_on=[alert])
    def page_someone(alert):
        return "paged"

    flow = Flow(page_someone, total, log=False)
    flow.run()
    assert flow.results["alert"].state is K
    assert flow.results["page_someone"].state is K  # only downstream of a gate skip
    assert flow.ok and flow.failures == []


def test_a_failure_or_a_skip_caused_by_one_makes_ok_false():
    @task
    def bad():
        raise ValueError("no")

    @task(depends_on=[bad])
    def after(bad):
        return 1

    flow = Flow(after, log=False)
    flow.run()
    assert not flow.ok
    assert [r.name for r in flow.failures] == ["bad"]
    assert flow.results["after"].state is K


def test_a_detached_failure_keeps_ok_and_is_marked_detached():
    @task
    def main():
        return 1

    @task(depends_on=[main], detached=True)
    def notify(main):
        raise ConnectionError("mail server down")

    flow = Flow(main, log=False)
    flow.run()
    assert flow.ok and flow.failures == []
    assert [r.name for r in flow.detached_failures] == ["notify"]
    assert flow.results["notify"].detached is True
    assert flow.results["main"].detached is False


def test_ok_is_false_before_any_run():
    @task
    def a():
        return 1

    assert Flow(a, log=False).ok is False


# ----- one run at a time, Limits across flows --------------------------------------

def test_a_second_concurrent_run_on_one_flow_raises_runtime_error():
    release = threading.Event()
    entered = threading.Event()

    @task
    def slow():
        entered.set()
        release.wait(5)
        return 1

    flow = Flow(slow, log=False)
    t = threading.Thread(target=flow.run, daemon=True)
    t.start()
    assert entered.wait(5)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            flow.run()
        with pytest.raises(RuntimeError, match="already running"):
            flow.resume()
    finally:
        release.set()
        t.join(5)
    assert flow.value(slow) == 1
    flow.run()  # and it can run again afterwards


def test_a_limit_shared_by_two_flows_running_at_once_bounds_both():
    limit = Limit(max_concurrency=1)
    gauge = Gauge()

    def make(prefix):
        @task
        def items():
            return list(range(4))

        @task(depends_on=[items], for_each="items", limit=limit, name=f"{prefix}_work")
        def work(items):
            with gauge:
                time.sleep(0.03)
            return items

        return Flow(work, log=False, max_workers=4)

    flows = [make("a"), make("b")]
    threads = [threading.Thread(target=f.run, daemon=True) for f in flows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    assert all(f.ok for f in flows)
    assert gauge.peak == 1
    assert limit.in_flight == 0


def test_a_body_that_stops_because_it_was_told_to_is_not_retried():
    attempts = []

    @task
    def breaks():
        time.sleep(0.1)
        raise ValueError("boom")

    @task(retry=3, retry_backoff_base_ms=2000)
    def poller():
        attempts.append(current().attempt)
        for _ in range(250):
            current().raise_if_cancelled()
            time.sleep(0.02)
        return "done"

    flow = Flow(breaks, poller, log=False, max_workers=2)
    flow.run()
    assert attempts == [1]  # not retried: no further attempt, no backoff wait
    assert isinstance(flow.results["poller"].error, Cancelled)
