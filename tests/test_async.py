"""async def bodies: one event loop per run, bounded by max_workers, really cancelled.

Everything is observed from inside the coroutines (thread ids, in-flight
counters, finally blocks); no test asserts a speed.
"""

from __future__ import annotations

import asyncio
import threading
import time

from helpers import Gauge

from flowing import Flow, ItemsFailed, Limit, StepState, task

SUCCEEDED, FAILED, SKIPPED = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED




def source(value, name="ids"):
    return task(lambda: value, name=name)


# ----- one loop, bounded by max_workers ------------------------------------------------------


def test_coroutines_run_on_one_event_loop_thread():
    threads = set()
    loops = set()
    ids = source(list(range(30)))

    @task(depends_on=[ids], for_each="ids")
    async def work(ids):
        threads.add(threading.get_ident())
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.02)
        threads.add(threading.get_ident())
        return ids

    plain = []
    for k in range(5):
        async def body(k=k):
            threads.add(threading.get_ident())
            await asyncio.sleep(0.02)
            return k
        plain.append(task(body, name=f"plain{k}"))

    results = Flow(work, *plain, max_workers=5, log=False).run()
    assert all(r.state is SUCCEEDED for r in results.values())
    assert results["work"].value == list(range(30))
    assert len(threads) == 1  # not a thread per coroutine
    assert len(loops) == 1
    assert threads != {threading.get_ident()}  # not the caller's thread either


def test_coroutines_count_against_max_workers():
    gauge = Gauge()
    ids = source(list(range(30)))

    @task(depends_on=[ids], for_each="ids")
    async def work(ids):
        with gauge:
            await asyncio.sleep(0.05)
        return ids

    r = Flow(work, max_workers=4, log=False).run()["work"]
    assert r.state is SUCCEEDED
    assert gauge.peak == 4


def test_async_plain_tasks_count_against_max_workers():
    gauge = Gauge()
    tasks = []
    for k in range(12):
        async def body(k=k):
            with gauge:
                await asyncio.sleep(0.05)
            return k
        tasks.append(task(body, name=f"t{k}"))

    results = Flow(*tasks, max_workers=3, log=False).run()
    assert all(r.state is SUCCEEDED for r in results.values())
    assert gauge.peak == 3


def test_sync_and_async_bodies_share_max_workers():
    gauge = Gauge()
    kinds = {"sync": Gauge(), "async": Gauge()}
    tasks = []
    for k in range(6):
        def sync_body(k=k):
            with gauge, kinds["sync"]:
                time.sleep(0.08)
            return k

        async def async_body(k=k):
            with gauge, kinds["async"]:
                await asyncio.sleep(0.08)
            return k

        tasks.append(task(sync_body, name=f"s{k}"))
        tasks.append(task(async_body, name=f"a{k}"))

    results = Flow(*tasks, max_workers=3, log=False).run()
    assert all(r.state is SUCCEEDED for r in results.values())
    assert gauge.peak == 3
    assert kinds["sync"].peak >= 1 and kinds["async"].peak >= 1


def test_async_items_respect_a_limit():
    gauge = Gauge()
    ids = source(list(range(10)))

    @task(depends_on=[ids], for_each="ids", limit=Limit(max_concurrency=2))
    async def work(ids):
        with gauge:
            await asyncio.sleep(0.05)
        return ids

    r = Flow(work, max_workers=8, log=False).run()["work"]
    assert r.state is SUCCEEDED
    assert gauge.peak == 2


def test_an_awaiting_coroutine_does_not_block_the_others():
    spans = {}

    async def sleeper(name):
        start = time.monotonic()
        await asyncio.sleep(0.3)
        spans[name] = (start, time.monotonic())
        return name

    first = task(_named(sleeper, "first"), name="first")
    second = task(_named(sleeper, "second"), name="second")
    results = Flow(first, second, max_workers=2, log=False).run()
    assert results["first"].state is SUCCEEDED and results["second"].state is SUCCEEDED
    (s1, e1), (s2, e2) = spans["first"], spans["second"]
    # their [start, end] intervals overlap: each started before the other finished
    assert s1 < e2 and s2 < e1


def _named(coro_fn, name):
    async def body():
        return await coro_fn(name)
    body.__name__ = name
    return body


# ----- timeouts cancel for real -------------------------------------------------------------


def test_timeout_cancels_the_coroutine_and_its_finally_runs():
    flags = {"finally": 0, "after_sleep": 0}

    @task(timeout_s=0.2)
    async def slow():
        try:
            await asyncio.sleep(5)
            flags["after_sleep"] += 1
        finally:
            flags["finally"] += 1

    r = Flow(slow, log=False).run()["slow"]
    assert r.state is FAILED
    assert isinstance(r.error, TimeoutError)
    assert "slow" in str(r.error) and "0.2" in str(r.error)
    assert r.attempts == 1
    assert flags == {"finally": 1, "after_sleep": 0}


def test_timeout_is_retried_for_async_bodies():
    flags = {"finally": 0, "calls": 0}

    @task(timeout_s=0.2, retry=1, retry_backoff_base_ms=1)
    async def flaky():
        flags["calls"] += 1
        try:
            if flags["calls"] == 1:
                await asyncio.sleep(5)
            return "second time lucky"
        finally:
            flags["finally"] += 1

    r = Flow(flaky, log=False).run()["flaky"]
    assert r.state is SUCCEEDED
    assert r.value == "second time lucky"
    assert r.attempts == 2
    assert flags == {"finally": 2, "calls": 2}


def test_async_item_timeout_cancels_only_that_item():
    cancelled = []
    ids = source(list(range(4)))

    @task(depends_on=[ids], for_each="ids", timeout_s=0.2)
    async def work(ids):
        try:
            await asyncio.sleep(5 if ids == 2 else 0.01)
            return ids
        except asyncio.CancelledError:
            cancelled.append(ids)
            raise

    r = Flow(work, log=False).run()["work"]
    assert r.state is FAILED
    assert [it.state for it in r.items] == [SUCCEEDED, SUCCEEDED, FAILED, SUCCEEDED]
    assert isinstance(r.items[2].error, TimeoutError)
    assert cancelled == [2]


# ----- retries and gates, as for sync bodies --------------------------------------------------


def test_async_retries():
    calls = []

    @task(retry=2, retry_backoff_base_ms=1)
    async def flaky():
        calls.append(1)
        await asyncio.sleep(0)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")
        return "ok"

    flow = Flow(flaky, log=False)
    r = flow.run()["flaky"]
    assert r.state is SUCCEEDED and r.attempts == 3
    assert len(calls) == 3
    assert [t[2] for t in flow.retries] == [1, 2]


def test_async_retries_exhausted():
    @task(retry=1, retry_backoff_base_ms=1)
    async def broken():
        raise ValueError("always")

    r = Flow(broken, log=False).run()["broken"]
    assert r.state is FAILED and r.attempts == 2
    assert isinstance(r.error, ValueError)
    assert "always" in r.traceback


def test_async_retry_after_is_honoured():
    starts = []

    class Busy(Exception):
        retry_after = 0.3

    @task(retry=1, retry_backoff_base_ms=1, retry_max_backoff_ms=1)
    async def call():
        starts.append(time.monotonic())
        if len(starts) == 1:
            raise Busy()
        return "ok"

    r = Flow(call, log=False).run()["call"]
    assert r.state is SUCCEEDED and r.attempts == 2
    assert starts[1] - starts[0] >= 0.3


def test_async_when_false_skips_and_never_awaits_the_body():
    calls = []
    up = source(0, name="up")

    @task(depends_on=[up], when=lambda up: up > 0)
    async def gated(up):
        calls.append(up)

    r = Flow(gated, log=False).run()["gated"]
    assert r.state is SKIPPED
    assert r.reason.startswith("when() returned")
    assert calls == []


def test_async_validate_raising_fails_with_no_attempt():
    calls = []
    up = source(-1, name="up")

    def validate(up):
        if up < 0:
            raise ValueError("negative input")

    @task(depends_on=[up], validate=validate, retry=3)
    async def gated(up):
        calls.append(up)

    r = Flow(gated, log=False).run()["gated"]
    assert r.state is FAILED and r.attempts == 0
    assert r.reason == "validate() raised"
    assert calls == []


def test_async_retry_until():
    calls = []

    @task(retry=3, retry_backoff_base_ms=1, retry_until=lambda v: v >= 3)
    async def poll():
        calls.append(1)
        return len(calls)

    r = Flow(poll, log=False).run()["poll"]
    assert r.state is SUCCEEDED and r.value == 3 and r.attempts == 3


def test_async_for_each_gates_run_once_and_items_keep_order():
    gate_calls = []
    ids = source(list(range(8)))

    def when(ids):
        gate_calls.append("when")
        return True

    @task(depends_on=[ids], for_each="ids", when=when, validate=lambda ids: None)
    async def work(ids):
        await asyncio.sleep(0.01 * (8 - ids))  # later items finish first
        return ids * 2

    r = Flow(work, max_workers=8, log=False).run()["work"]
    assert r.state is SUCCEEDED
    assert r.value == [i * 2 for i in range(8)]
    assert gate_calls == ["when"]


ASYNC_FIXED = {"fixed": False}


def test_async_for_each_failed_items_and_resume_reruns_only_them():
    ASYNC_FIXED["fixed"] = False
    calls = {}
    ids = source(list(range(5)))

    @task(depends_on=[ids], for_each="ids")
    async def work(ids):
        calls[ids] = calls.get(ids, 0) + 1
        await asyncio.sleep(0.01)
        if ids == 3 and not ASYNC_FIXED["fixed"]:
            raise RuntimeError("item 3 broken")
        return ids

    flow = Flow(work, log=False)
    r = flow.run()["work"]
    assert r.state is FAILED
    assert isinstance(r.error, ItemsFailed)
    assert calls == {i: 1 for i in range(5)}
    ASYNC_FIXED["fixed"] = True
    r = flow.resume()["work"]
    assert r.state is SUCCEEDED
    assert r.value == list(range(5))
    assert calls == {0: 1, 1: 1, 2: 1, 3: 2, 4: 1}


def test_async_task_fails_fast_like_a_sync_task():
    ran = []

    @task
    async def bad():
        await asyncio.sleep(0.1)  # 'slow' is running by then; 'later' is not
        raise RuntimeError("boom")

    @task
    def slow():
        time.sleep(0.5)
        return 1

    @task(depends_on=[slow])
    def later(slow):
        ran.append(1)

    results = Flow(bad, later, max_workers=3, log=False).run()
    assert results["bad"].state is FAILED
    assert results["slow"].state is SUCCEEDED  # already running: it runs to the end
    assert results["later"].state is SKIPPED
    assert results["later"].reason == "not started: fail_fast: 'bad' failed"
    assert ran == []
