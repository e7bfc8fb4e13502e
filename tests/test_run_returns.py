"""run() always returns (SPEC §8): whatever user code returns or raises anywhere in a run
becomes a FAILED (or skipped) result naming the task. Each case here hung a run or
escaped run() in 0.1.0."""

import asyncio
import json
import threading

import pytest
from helpers import ListHandler
from hostile import NoBool, RaisingRepr, StrRaises
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowing import Flow, Limit, StepState, task

F, S, K = StepState.FAILED, StepState.SUCCEEDED, StepState.SKIPPED


def run_bounded(flow, seconds=20.0):
    """Run the flow on a thread; fail the test (instead of hanging) if it does not return."""
    box = {}

    def target():
        try:
            box["results"] = flow.run()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["raised"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"run() did not return within {seconds}s"
    assert "raised" not in box, f"run() raised {box.get('raised')!r}"
    return box["results"]


NoTruth = NoBool  # like a numpy array: asking for its truth value raises
BadRepr = RaisingRepr
BadStrError = StrRaises  # an exception whose __str__ raises


def test_when_returning_a_value_with_no_truth_value_fails_the_task_and_names_the_fix():
    @task(when=lambda: NoTruth())
    def gated():
        return 1

    @task(depends_on=[gated])
    def after(gated):
        return gated

    flow = Flow(after, log=False)
    res = run_bounded(flow)
    r = res["gated"]
    assert r.state is F and r.attempts == 0
    assert "no truth value" in str(r.error) and "NoBool()" in str(r.error)
    assert res["after"].state is K
    assert not flow.ok and [x.name for x in flow.failures] == ["gated"]


def test_retry_until_returning_a_value_with_no_truth_value_fails_and_keeps_the_value():
    value = {"rows": 3}

    @task(retry=2, retry_backoff_base_ms=0, retry_until=lambda v: NoTruth())
    def produce():
        return value

    res = run_bounded(Flow(produce, log=False))
    r = res["produce"]
    assert r.state is F and r.value is value and r.attempts == 1
    assert "retry_until() returned NoBool()" in str(r.error)


def test_a_rejected_value_whose_repr_raises_is_retried_then_fails_cleanly():
    @task(retry=2, retry_backoff_base_ms=0, retry_until=lambda v: False)
    def produce():
        return BadRepr()

    flow = Flow(produce, log=False)
    res = run_bounded(flow)
    r = res["produce"]
    assert r.state is F and r.attempts == 3
    assert "unprintable" in str(r.error) or "repr" in str(r.error)
    flow.summary()
    json.dumps(flow.report())


def test_an_exception_whose_str_raises_inside_a_for_each_item_does_not_escape_run():
    @task
    def ids():
        return [1, 2, 3]

    @task(depends_on=[ids], for_each="ids")
    def work(ids):
        if ids == 2:
            raise BadStrError()
        return ids * 10

    flow = Flow(work, log=False)
    res = run_bounded(flow)
    r = res["work"]
    assert r.state is F
    assert [it.state for it in r.items] == [S, F, S]
    assert "item 1 (2)" in flow.summary()
    assert "StrRaises: <unprintable message>" in flow.summary()
    json.dumps(flow.report())
    repr(r)


@pytest.mark.parametrize("raised", [RuntimeError("no header"), SystemExit(2),
                                    KeyboardInterrupt()], ids=type)
@pytest.mark.parametrize("fails", [1, 2])
def test_a_retry_after_property_that_raises_is_ignored_with_one_warning(raised, fails):
    class Throttled(Exception):
        @property
        def retry_after(self):
            raise raised

    calls = []

    @task(retry=1, retry_backoff_base_ms=0)
    def call():
        calls.append(1)
        if len(calls) <= fails:
            raise Throttled("429")
        return "ok"

    if fails == 2:  # every attempt fails: neither the retry nor the body's error is lost
        res = run_bounded(Flow(call, log=False))
        assert res["call"].state is StepState.FAILED and res["call"].attempts == 2
        assert isinstance(res["call"].error, Throttled)
        return

    handler = ListHandler()
    import logging

    logger = logging.getLogger("test-retry-after")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    res = run_bounded(Flow(call, log=logger))
    assert res["call"].state is S and res["call"].attempts == 2
    warnings = [m for m in handler.messages if "retry_after" in m]
    assert len(warnings) == 1 and "call" in warnings[0], handler.messages


@pytest.mark.parametrize("hint", [float("nan"), float("inf"), -5, "soon", True])
def test_an_unusable_retry_after_value_is_ignored(hint):
    class Throttled(Exception):
        retry_after = hint

    calls = []

    @task(retry=1, retry_backoff_base_ms=0)
    def call():
        calls.append(1)
        if len(calls) == 1:
            raise Throttled("429")
        return "ok"

    res = run_bounded(Flow(call, log=False))  # an inf hint waited for would never return
    assert res["call"].state is S


def test_an_async_body_that_swallows_its_cancellation_fails_at_its_deadline():
    stop = threading.Event()

    @task(timeout_s=0.3)
    async def stubborn():
        while not stop.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass  # ignores the timeout's cancellation
        return "never"

    @task
    async def other():
        await asyncio.sleep(0.01)
        return "fine"

    try:
        res = run_bounded(Flow(stubborn, other, log=False), seconds=15)
    finally:
        stop.set()
    r = res["stubborn"]
    assert r.state is F and isinstance(r.error, TimeoutError)
    assert "stubborn" in str(r.error)
    assert res["other"].state is S


def test_an_async_body_blocking_its_event_loop_is_failed_by_the_scheduler():
    release = threading.Event()
    let_go = threading.Event()

    @task(timeout_s=0.2)
    async def blocks_the_loop():
        release.wait(8)  # a sync wait inside async def: the loop itself is stuck
        let_go.set()
        return "late"

    try:
        res = run_bounded(Flow(blocks_the_loop, log=False), seconds=15)
        body_had_let_go = let_go.is_set()
    finally:
        release.set()
    r = res["blocks_the_loop"]
    assert r.state is F and isinstance(r.error, TimeoutError)
    assert not body_had_let_go  # failed by the scheduler, not when the body let go


def test_a_huge_finite_timeout_runs_normally():
    @task(timeout_s=1e10)
    def quick():
        return 7

    res = run_bounded(Flow(quick, log=False))
    assert res["quick"].value == 7


def test_a_limit_with_a_huge_period_admits_its_first_start_at_once():
    slow_rate = Limit(rate=(1, 1e9))

    @task(limit=slow_rate)
    def once():
        return "ran"

    res = run_bounded(Flow(once, log=False))
    assert res["once"].value == "ran"


def test_a_body_raising_system_exit_or_keyboard_interrupt_on_a_worker_is_a_failure():
    @task
    def exits():
        raise SystemExit(3)

    @task
    def interrupts():
        raise KeyboardInterrupt  # on a worker thread this is just an exception

    res = run_bounded(Flow(exits, interrupts, fail_fast=False, log=False))
    assert res["exits"].state is F and isinstance(res["exits"].error, SystemExit)
    assert res["interrupts"].state is F


def test_a_for_each_source_whose_iteration_raises_fails_the_task():
    class BadIter:
        def __iter__(self):
            raise OSError("disk gone")

    @task
    def source():
        return BadIter()

    @task(depends_on=[source], for_each="source")
    def each(source):
        return source

    res = run_bounded(Flow(each, log=False))
    assert res["each"].state is F and isinstance(res["each"].error, OSError)


def test_a_hook_raising_and_a_logger_whose_handler_raises_do_not_break_the_run():
    import logging

    class Exploding(logging.Handler):
        def emit(self, record):
            raise RuntimeError("handler broken")

    logger = logging.getLogger("test-exploding")
    logger.handlers[:] = [Exploding()]
    logger.propagate = False
    logger.raiseExceptions = False

    @task
    def a():
        raise BadStrError()

    def hook(event):
        raise BadStrError()

    res = run_bounded(Flow(a, log=logger, on_event=hook))
    assert res["a"].state is F


# ----- the property: random graphs of hostile gates and bodies ---------------------

HOSTILE = ["ok", "raise", "raise_bad_str", "return_no_truth", "return_bad_repr",
           "system_exit", "retry_after_raises"]


def _behave(kind, value):
    if kind == "ok":
        return value
    if kind == "raise":
        raise ValueError("plain failure")
    if kind == "raise_bad_str":
        raise BadStrError()
    if kind == "return_no_truth":
        return NoTruth()
    if kind == "return_bad_repr":
        return BadRepr()
    if kind == "system_exit":
        raise SystemExit(1)
    if kind == "retry_after_raises":
        class Throttled(Exception):
            @property
            def retry_after(self):
                raise RuntimeError("no")
        raise Throttled()
    raise AssertionError(kind)


@st.composite
def hostile_dags(draw):
    n = draw(st.integers(1, 7))
    specs = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if i else []
        specs.append({
            "deps": deps,
            "body": draw(st.sampled_from(HOSTILE)),
            "when": draw(st.sampled_from([None, *HOSTILE])),
            "retry_until": draw(st.sampled_from([None, *HOSTILE])),
            "retry": draw(st.integers(0, 1)),
            "async": draw(st.booleans()),
            "for_each": bool(deps) and draw(st.booleans()),
        })
    return specs


def _build(specs):
    tds = []
    for i, spec in enumerate(specs):
        deps = [tds[d] for d in spec["deps"]]
        names = [f"t{d}" for d in spec["deps"]]

        def make(spec=spec, i=i):
            if spec["async"]:
                async def body(**kw):
                    return _behave(spec["body"], i)
            else:
                def body(**kw):
                    return _behave(spec["body"], i)
            return body

        def gate(kind):
            if kind is None:
                return None
            return lambda *a, **kw: _behave(kind, True)

        tds.append(task(make(), name=f"t{i}", depends_on=deps, retry=spec["retry"],
                        retry_backoff_base_ms=0, when=gate(spec["when"]),
                        retry_until=gate(spec["retry_until"]),
                        for_each=names[0] if spec["for_each"] else None))
    return tds


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=hostile_dags(), fail_fast=st.booleans(), max_workers=st.integers(1, 3))
def test_every_run_of_hostile_tasks_returns_with_a_result_for_every_task(specs, fail_fast,
                                                                         max_workers):
    from flowing import clear_registry

    clear_registry()
    tds = _build(specs)
    flow = Flow(*tds, fail_fast=fail_fast, max_workers=max_workers, log=False)
    res = run_bounded(flow, seconds=30)
    assert set(res) == {td.name for td in tds}
    for r in res.values():
        assert r.state in (S, F, K)
        repr(r)
    flow.summary()
    json.dumps(flow.report())
    flow.to_mermaid()


def test_system_exit_from_a_for_each_sources_iteration_fails_that_task_only():
    class Exits(list):
        def __iter__(self):
            raise SystemExit("bad input")

    @task
    def src():
        return Exits([1])

    @task(depends_on=[src], for_each="src")
    def each(src):
        return src

    @task
    def other():
        return "fine"

    res = run_bounded(Flow(each, other, fail_fast=False, log=False))
    assert res["each"].state is F and isinstance(res["each"].error, SystemExit)
    assert res["other"].state is S


def test_system_exit_from_a_values_reduce_does_not_escape_a_journaled_run(tmp_path):
    class Handle:
        def __reduce_ex__(self, protocol):
            raise SystemExit("cannot pickle Handle")

    @task
    def names():
        return ["a", "b"]

    @task(depends_on=[names], for_each="names")
    def open_each(names):
        return Handle()

    @task
    def other():
        return "fine"

    res = run_bounded(Flow(open_each, other, journal_path=str(tmp_path / "j.jsonl"),
                           fail_fast=False, log=False))
    assert res["open_each"].state is S and res["other"].state is S


LIMIT_CTRL_C = """
import os, signal, sys, threading, time
from flowing import Flow, Limit, task

api = Limit(max_concurrency=1)

@task(limit=api)
def slow():
    time.sleep(1.0)
    return "done"

flow = Flow(slow, log=False)
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    flow.run()
    print("NOT INTERRUPTED")
except KeyboardInterrupt:
    print("IN_FLIGHT_AFTER_CTRL_C", api.in_flight)
done = threading.Event()
threading.Thread(target=lambda: (flow.resume(), done.set()), daemon=True).start()
print("RESUMED", done.wait(10), flow.results["slow"].state.value, flush=True)
"""


def test_a_limit_slot_held_when_ctrl_c_came_is_given_back(repo_env):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LIMIT_CTRL_C], env=repo_env,
                         capture_output=True, text=True, timeout=60)
    assert "IN_FLIGHT_AFTER_CTRL_C 0" in out.stdout, (out.stdout, out.stderr)
    assert "RESUMED True succeeded" in out.stdout, (out.stdout, out.stderr)


ENDLESS_SOURCE = """
import os, signal, threading, time
from flowing import Flow, task

@task
def source():
    def forever():
        n = 0
        while True:
            n += 1
            time.sleep(0.0001)  # a slow endless source: memory stays small
            yield n
    return forever()

@task(depends_on=[source], for_each="source")
def each(source):
    return source

threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
started = time.monotonic()
try:
    Flow(each, log=False).run()
except KeyboardInterrupt:
    print("INTERRUPTED AFTER", round(time.monotonic() - started, 1), flush=True)
os._exit(0)
"""


def test_ctrl_c_stops_a_run_whose_for_each_source_never_ends(repo_env):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ENDLESS_SOURCE], env=repo_env,
                         capture_output=True, text=True, timeout=60)
    assert "INTERRUPTED AFTER" in out.stdout, (out.stdout, out.stderr[-2000:])
