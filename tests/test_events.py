"""Observing a run: typed events for on_event, log lines on the "flowing" logger."""

import logging
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers import ListHandler

from flowing import Flow, StepState, task
from flowing.events import (
    FlowFinished,
    FlowStarted,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)


@pytest.fixture
def logger(request):
    log = logging.getLogger(f"tests.flowing.{request.node.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = ListHandler()
    log.addHandler(handler)
    log.handler = handler
    yield log
    log.removeHandler(handler)


def _sample_flow():
    attempts = []

    @task
    def fetch():
        return 1

    @task(depends_on=[fetch], retry=1, retry_backoff_base_ms=0)
    def flaky(fetch):
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("reset")
        return fetch + 1

    @task(depends_on=[fetch])
    def broken(fetch):
        raise ValueError("bad row 7")

    @task(depends_on=[broken])
    def report(broken):
        return 0

    return [flaky, report]


def test_event_sequence():
    events = []
    flow = Flow(*_sample_flow(), log=False, on_event=events.append, fail_fast=False)
    flow.run()
    assert isinstance(events[0], FlowStarted)
    assert events[0].tasks == 4
    assert events[0].max_workers == 5 and events[0].schedule == "eager"
    assert isinstance(events[-1], FlowFinished)
    assert events[-1].ok is False
    assert events[-1].interrupted is False
    assert events[-1].counts == {"succeeded": 2, "failed": 1, "skipped": 1}
    assert sum(isinstance(e, (FlowStarted, FlowFinished)) for e in events) == 2

    def of(kind, name):
        return [e for e in events if isinstance(e, kind) and e.task == name]

    # each task that ran: started before it finished
    for name in ("fetch", "flaky", "broken"):
        started = of(TaskStarted, name)
        assert started
        end = (of(TaskSucceeded, name) or of(TaskFailed, name))
        assert len(end) == 1
        assert events.index(started[0]) < events.index(end[0])
    (succ,) = of(TaskSucceeded, "flaky")
    assert succ.attempts == 2 and succ.duration_ms >= 0 and succ.detached is False
    (retry,) = of(TaskRetrying, "flaky")
    assert retry.attempt == 1 and retry.max_attempts == 2
    assert isinstance(retry.error, ConnectionError)
    assert retry.delay_s >= 0 and retry.item is None
    assert [e.attempt for e in of(TaskStarted, "flaky")] == [1, 2]
    (failed,) = of(TaskFailed, "broken")
    assert isinstance(failed.error, ValueError) and failed.attempts == 1
    (skipped,) = of(TaskSkipped, "report")
    assert skipped.reason == "dependency 'broken' failed"
    assert of(TaskStarted, "report") == []
    # times are epoch seconds and non-decreasing
    stamps = [e.at for e in events]
    assert stamps == sorted(stamps)


def test_events_come_from_the_thread_that_called_run():
    threads = set()
    Flow(*_sample_flow(), log=False, fail_fast=False,
         on_event=lambda e: threads.add(threading.get_ident())).run()
    assert threads == {threading.get_ident()}


def test_flow_finished_ok_on_success():
    events = []
    t = task(lambda: 1, name="t")
    Flow(t, log=False, on_event=events.append).run()
    assert events[-1].ok is True
    assert events[-1].counts["succeeded"] == 1


def test_a_raising_hook_never_breaks_the_run(logger):
    calls = []

    def hook(event):
        calls.append(event)
        raise RuntimeError("hook is broken")

    flow = Flow(*_sample_flow(), log=logger, on_event=hook, fail_fast=False)
    res = flow.run()
    assert res["flaky"].value == 2 and res["broken"].state is StepState.FAILED
    assert len(calls) > 5  # the hook kept being called
    warnings = [r for r in logger.handler.records
                if r.levelno >= logging.WARNING and "hook" in r.getMessage()]
    assert len(warnings) == 1
    assert "hook is broken" in warnings[0].getMessage()


def test_a_raising_hook_without_logging_still_never_breaks_the_run():
    def hook(event):
        raise RuntimeError("hook is broken")

    t = task(lambda: 1, name="t")
    assert Flow(t, log=False, on_event=hook).run()["t"].ok


def test_custom_logger_gets_greppable_lines(logger):
    Flow(*_sample_flow(), log=logger, fail_fast=False).run()
    lines = logger.handler.lines

    def has(*words):
        return any(all(w in line for w in words) for line in lines)

    assert has("start", "fetch")
    assert has("ok", "fetch")
    assert has("retry", "flaky", "ConnectionError")
    assert has("ok", "flaky")
    assert has("FAILED", "broken", "ValueError", "bad row 7")
    assert has("skipped", "report", "dependency 'broken' failed")
    assert has("flow")
    failed = [r for r in logger.handler.records if "broken" in r.getMessage()
              and "FAILED" in r.getMessage()]
    assert failed[0].levelno == logging.WARNING
    assert all("\n" not in line for line in lines)


def test_long_error_messages_stay_on_one_short_line(logger):
    @task
    def verbose():
        raise ValueError("first line " + "x" * 5000 + "\nsecond line")

    Flow(verbose, log=logger).run()
    failed = [line for line in logger.handler.lines if "verbose" in line and "FAILED" in line]
    assert failed and "\n" not in failed[0] and len(failed[0]) < 400


def test_log_false_writes_nothing():
    handler = ListHandler()
    flowing_logger = logging.getLogger("flowing")
    flowing_logger.addHandler(handler)
    try:
        Flow(*_sample_flow(), log=False, fail_fast=False).run()
    finally:
        flowing_logger.removeHandler(handler)
    assert handler.records == []


def _run_script(body, env):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_default_logs_to_stderr_and_stdout_stays_clean(repo_env):
    proc = _run_script("""
        from flowing import Flow, task

        @task
        def fetch():
            return 1

        @task(depends_on=[fetch])
        def boom(fetch):
            raise ValueError("nope")

        Flow(boom).run()
        print("done")
    """, repo_env)
    assert proc.stdout == "done\n"
    err = proc.stderr.splitlines()
    assert any("fetch" in line and "ok" in line for line in err), proc.stderr
    assert any("boom" in line and "FAILED" in line and "nope" in line for line in err)
    assert all(line.startswith("flowing") for line in err if line.strip()), proc.stderr


def test_log_false_subprocess_is_silent(repo_env):
    proc = _run_script("""
        from flowing import Flow, task

        @task
        def boom():
            raise ValueError("nope")

        Flow(boom, log=False).run()
    """, repo_env)
    assert proc.stderr == ""
    assert proc.stdout == ""
