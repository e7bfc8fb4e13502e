"""Flow(executor=...): bodies run on the caller's executor, which is never shut down."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from flowing import Flow, StepState, task


def test_bodies_run_on_the_callers_executor():
    names = []

    @task
    def a():
        names.append(threading.current_thread().name)
        return 1

    @task(depends_on=[a])
    def b(a):
        names.append(threading.current_thread().name)
        return a + 1

    @task
    def c():
        names.append(threading.current_thread().name)
        return 3

    with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="callers-pool") as ex:
        res = Flow(b, c, executor=ex, log=False).run()
        assert res["b"].value == 2 and res["c"].value == 3
        assert len(names) == 3
        assert all(n.startswith("callers-pool") for n in names), names
        # not shut down by the flow: still usable
        assert ex.submit(lambda: 42).result(timeout=10) == 42


def test_executor_can_be_reused_by_several_runs():
    t = task(lambda: 1, name="t")
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        flow = Flow(t, executor=ex, log=False)
        for _ in range(3):
            assert flow.run()["t"].ok


def test_max_workers_bounds_bodies_on_a_larger_executor():
    lock = threading.Lock()
    now, peak = [0], [0]

    def body():
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1

    tasks = [task(body, name=f"t{i}") for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        res = Flow(*tasks, executor=ex, max_workers=2, log=False).run()
    assert all(r.ok for r in res.values())
    assert 1 <= peak[0] <= 2


def test_single_thread_executor_runs_everything():
    @task
    def a():
        return 1

    bs = [task(lambda a, i=i: a + i, name=f"b{i}", depends_on=[a]) for i in range(5)]

    @task(depends_on=bs)
    def total(**kw):
        return sum(kw.values())

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        res = Flow(total, executor=ex, max_workers=4, log=False).run()
    assert res["total"].value == sum(1 + i for i in range(5))


def test_shut_down_executor_fails_the_tasks_with_a_clear_error():
    ex = concurrent.futures.ThreadPoolExecutor(1)
    ex.shutdown()
    t = task(lambda: 1, name="t")
    res = Flow(t, executor=ex, log=False).run()  # does not raise or hang
    r = res["t"]
    assert r.state is StepState.FAILED
    assert "executor" in str(r.error)


def test_retries_and_timeouts_on_the_callers_executor():
    calls = []
    release = threading.Event()

    @task(retry=1, retry_backoff_base_ms=0)
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("x")
        return "ok"

    @task(timeout_s=0.2)
    def hangs():
        release.wait(60)

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            res = Flow(flaky, hangs, executor=ex, log=False, fail_fast=False).run()
    finally:
        release.set()
    assert res["flaky"].value == "ok" and res["flaky"].attempts == 2
    assert isinstance(res["hangs"].error, TimeoutError)


_FAILING_FUTURE_SCRIPT = """
import sys
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from flowing import Flow, task

@task
def step():
    return 1

class RefusingLater(Executor):
    # accepts the job, then its future fails without ever calling it
    def submit(self, fn, *args, **kwargs):
        f = Future()
        f.set_exception(RuntimeError("worker died"))
        return f

ex = ProcessPoolExecutor(1) if sys.argv[1] == "process" else RefusingLater()
try:
    res = Flow(step, executor=ex, log=False).run()
    print("RESULT", res["step"].state.value, flush=True)
except Exception as exc:
    print("RAISED", type(exc).__name__, exc, flush=True)
"""


@pytest.mark.parametrize("kind", ["failing-future", "process"])
def test_an_executor_whose_job_fails_does_not_hang_the_run(kind, repo_env):
    """A job the executor accepted but never ran (its future failed: a dead worker,
    a process pool that cannot pickle it) must end the run with a clear error."""
    proc = subprocess.Popen([sys.executable, "-c", _FAILING_FUTURE_SCRIPT, kind],
                            env=repo_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)  # hang guard only
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"Flow.run() with a {kind} executor hung: the failed future was "
                    f"never noticed")
    assert proc.returncode == 0, err
    if kind == "process":  # bodies are shipped to process pools now (SPEC §7b)
        assert out.startswith("RESULT succeeded"), (out, err)
    else:
        assert out.startswith("RESULT failed"), (out, err)
