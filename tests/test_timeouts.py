"""timeout_s for sync bodies: the attempt fails with a retryable TimeoutError, the
body is abandoned on a daemon thread, and nothing waits for it."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from flowing import Flow, StepState, task


@pytest.fixture
def release():
    """An event the blocked bodies wait on; set at teardown so no thread lingers."""
    ev = threading.Event()
    yield ev
    ev.set()


def test_timeout_error_message_and_attempts(release):
    @task(timeout_s=0.2)
    def hangs():
        release.wait(60)

    r = Flow(hangs, log=False).run()["hangs"]
    assert r.state is StepState.FAILED
    assert isinstance(r.error, TimeoutError)
    assert str(r.error) == "task 'hangs' timed out after 0.2s (attempt 1)"
    assert r.attempts == 1
    assert "TimeoutError" in r.traceback


def test_timeout_is_retried_and_names_the_attempt(release):
    calls = []

    @task(timeout_s=0.2, retry=1, retry_backoff_base_ms=0)
    def hangs():
        calls.append(1)
        release.wait(60)

    flow = Flow(hangs, log=False)
    r = flow.run()["hangs"]
    assert r.attempts == 2 and len(calls) == 2
    assert str(r.error) == "task 'hangs' timed out after 0.2s (attempt 2)"
    assert len(flow.retries) == 1
    assert isinstance(flow.retries[0][5], TimeoutError)


def test_timeout_then_success_on_retry(release):
    calls = []

    @task(timeout_s=0.3, retry=2, retry_backoff_base_ms=0)
    def sometimes_slow():
        calls.append(1)
        if len(calls) == 1:
            release.wait(60)
        return "fast this time"

    r = Flow(sometimes_slow, log=False).run()["sometimes_slow"]
    assert r.ok and r.value == "fast this time" and r.attempts == 2


def test_timeout_not_retried_when_retry_on_excludes_it(release):
    calls = []

    @task(timeout_s=0.2, retry=3, retry_backoff_base_ms=0, retry_on=(ConnectionError,))
    def hangs():
        calls.append(1)
        release.wait(60)

    r = Flow(hangs, log=False).run()["hangs"]
    assert r.state is StepState.FAILED and r.attempts == 1 and len(calls) == 1


def test_a_body_within_its_timeout_succeeds():
    @task(timeout_s=30)
    def quick():
        return threading.current_thread().name

    r = Flow(quick, log=False).run()["quick"]
    assert r.ok


def test_errors_and_values_pass_through_the_deadline_thread():
    @task(timeout_s=30)
    def boom():
        raise KeyError("inner")

    @task(timeout_s=30)
    def value():
        return {"a": [1, 2]}

    res = Flow(boom, value, log=False, fail_fast=False).run()
    assert isinstance(res["boom"].error, KeyError)
    assert res["value"].value == {"a": [1, 2]}


def test_abandoned_body_does_not_keep_the_worker_slot(release):
    # One worker: once `hangs` times out, the others must still run while its body
    # is still blocked in the background.
    ran = []

    @task(timeout_s=0.2)
    def hangs():
        release.wait(60)

    others = [task(lambda i=i: ran.append(i) or i, name=f"other{i}") for i in range(3)]
    res = Flow(hangs, *others, max_workers=1, log=False, fail_fast=False).run()
    assert res["hangs"].state is StepState.FAILED
    assert all(res[f"other{i}"].ok for i in range(3))
    assert sorted(ran) == [0, 1, 2]
    assert not release.is_set()  # the abandoned body was still blocked all along


def test_dependents_of_a_timed_out_task_are_skipped(release):
    @task(timeout_s=0.2)
    def hangs():
        release.wait(60)

    @task(depends_on=[hangs])
    def after(hangs):
        return 1

    res = Flow(after, log=False).run()
    assert res["after"].state is StepState.SKIPPED
    assert res["after"].reason == "dependency 'hangs' failed"


def test_result_of_an_abandoned_body_is_discarded(release):
    finished = threading.Event()

    @task(timeout_s=0.2)
    def late():
        release.wait(60)
        finished.set()
        return "too late"

    flow = Flow(late, log=False)
    flow.run()
    release.set()
    assert finished.wait(10)
    time.sleep(0.05)
    assert flow.results["late"].state is StepState.FAILED
    assert flow.results["late"].value is None


def test_abandoned_body_never_blocks_process_exit(repo_env):
    script = textwrap.dedent("""
        import time
        from flowing import Flow, task

        @task(timeout_s=0.2)
        def stuck():
            time.sleep(3600)

        @task
        def fine():
            return 1

        flow = Flow(stuck, fine, log=False, fail_fast=False)
        res = flow.run()
        print(res["stuck"].state.value, res["fine"].state.value, flush=True)
    """)
    # the guard only stops a hang; a correct run exits right after printing
    proc = subprocess.run([sys.executable, "-c", script], env=repo_env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["failed", "succeeded"]


def test_fused_chain_respects_each_tasks_timeout(release):
    # a -> b -> c is a chain the scheduler may run on one worker; b's timeout still applies
    @task
    def a():
        return 1

    @task(depends_on=[a], timeout_s=0.2)
    def b(a):
        release.wait(60)

    @task(depends_on=[b])
    def c(b):
        return 3

    res = Flow(c, log=False).run()
    assert res["a"].ok
    assert isinstance(res["b"].error, TimeoutError)
    assert res["c"].state is StepState.SKIPPED
