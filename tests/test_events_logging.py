"""Observing a run: typed events, log lines, progress (spec section 7)."""

import io
import logging
import threading
import time

import pytest
from helpers import ListHandler

import flowing.scheduler
from flowing import Flow, StepState, progress, task
from flowing import events as ev


@pytest.fixture
def user_logger():
    """A logger of the test's own, with a handler that keeps every record."""
    logger = logging.getLogger(f"test.flowing.{time.monotonic_ns()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


@pytest.fixture
def flowing_records():
    """Every record that reaches the "flowing" logger itself."""
    logger = logging.getLogger(ev.LOGGER_NAME)
    handler = ListHandler()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def fast_ticks(monkeypatch):
    """Progress ticks every 50 ms and heartbeats every 0.2 s, so a short task is 'long'."""
    monkeypatch.setattr(flowing.scheduler, "MAX_WAIT_S", 0.05)
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.2)


def small_flow(name_prefix=""):
    """a -> flaky (fails once, then succeeds), a -> bad (fails) -> after_bad (skipped),
    a -> side (detached)."""
    calls = {"flaky": 0}

    @task(name=name_prefix + "a")
    def a():
        return 1

    @task(depends_on=[a], retry=1, retry_backoff_base_ms=1, name=name_prefix + "flaky")
    def flaky(**deps):
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("reset by peer")
        return 2

    @task(depends_on=[a], name=name_prefix + "bad")
    def bad(**deps):
        raise ValueError("bad input\nsecond line of the message")

    @task(depends_on=[bad], name=name_prefix + "after_bad")
    def after_bad(**deps):
        return 3

    @task(depends_on=[a], detached=True, name=name_prefix + "side")
    def side(**deps):
        return "sent"

    return [flaky, after_bad]


# ----- events -------------------------------------------------------------------

def test_events_in_order_from_one_thread():
    seen = []
    threads = set()

    def hook(event):
        seen.append(event)
        threads.add(threading.get_ident())

    flow = Flow(*small_flow(), fail_fast=False, log=False, on_event=hook)
    results = flow.run()

    assert threads == {threading.get_ident()}  # the thread that called run()
    assert isinstance(seen[0], ev.FlowStarted) and isinstance(seen[-1], ev.FlowFinished)
    assert seen[0].tasks == 5 and seen[0].layers >= 3
    assert sum(isinstance(e, (ev.FlowStarted, ev.FlowFinished)) for e in seen) == 2

    def of(name):
        return [e for e in seen if getattr(e, "task", None) == name]

    kinds = lambda name: [type(e).__name__ for e in of(name)]  # noqa: E731
    assert kinds("a") == ["TaskStarted", "TaskSucceeded"]
    assert kinds("flaky") == ["TaskStarted", "TaskRetrying", "TaskStarted", "TaskSucceeded"]
    assert kinds("bad") == ["TaskStarted", "TaskFailed"]
    assert kinds("after_bad") == ["TaskSkipped"]
    assert kinds("side") == ["TaskStarted", "TaskSucceeded"]

    start1, retry, start2, ok = of("flaky")
    assert (start1.attempt, start2.attempt) == (1, 2)
    assert retry.attempt == 1 and retry.max_attempts == 2 and retry.item is None
    assert isinstance(retry.error, ConnectionError) and retry.delay_s >= 0
    assert ok.attempts == 2 and ok.duration_ms >= 0 and not ok.detached

    failed = of("bad")[1]
    assert isinstance(failed.error, ValueError) and failed.attempts == 1
    assert of("after_bad")[0].reason == "dependency 'bad' failed"

    side_start, side_ok = of("side")
    assert side_start.detached and side_ok.detached
    # detached tasks start only after every main task has its final event
    finals = (ev.TaskSucceeded, ev.TaskFailed, ev.TaskSkipped)
    last_main = max(k for k, e in enumerate(seen)
                    if isinstance(e, finals) and e.task != "side")
    assert seen.index(side_start) > last_main

    done = seen[-1]
    assert done.ok is False and done.interrupted is False
    assert done.counts == {"succeeded": 3, "failed": 1, "skipped": 1}
    assert results["flaky"].value == 2 and results["side"].value == "sent"


def test_logging_does_not_change_the_events(user_logger):
    logger, _ = user_logger
    quiet, logged = [], []
    Flow(*small_flow(), fail_fast=False, log=False, on_event=quiet.append).run()
    Flow(*small_flow("x_"), fail_fast=False, log=logger, on_event=logged.append).run()

    def shape(events):
        return sorted((type(e).__name__, getattr(e, "task", "").removeprefix("x_"))
                      for e in events)

    assert quiet and shape(quiet) == shape(logged)


def test_cached_event_with_a_journal(tmp_path):
    @task
    def one():
        return 1

    @task(depends_on=[one])
    def two(one):
        return one + 1

    path = tmp_path / "j.jsonl"
    Flow(two, journal_path=path, log=False).run()
    seen = []
    results = Flow(two, journal_path=path, log=False, on_event=seen.append).run()
    cached = [e for e in seen if isinstance(e, ev.TaskCached)]
    assert [e.task for e in cached] == ["one", "two"]
    assert all(isinstance(e.step_key, str) and e.step_key for e in cached)
    assert results["two"].cached and results["two"].value == 2


def test_broken_hook_never_breaks_the_run(user_logger):
    logger, handler = user_logger
    calls = []

    def hook(event):
        calls.append(event)
        raise RuntimeError("hook is broken\nand says more")

    flow = Flow(*small_flow(), fail_fast=False, log=logger, on_event=hook)
    results = flow.run()

    assert len(calls) > 5  # the hook kept being called
    assert isinstance(calls[-1], ev.FlowFinished)
    assert results["flaky"].state is StepState.SUCCEEDED and results["flaky"].value == 2
    assert results["a"].value == 1 and results["side"].value == "sent"
    assert results["bad"].state is StepState.FAILED
    assert results["after_bad"].state is StepState.SKIPPED
    warnings = [m for m in handler.messages if "on_event hook raised" in m]
    assert len(warnings) == 1
    assert "RuntimeError: hook is broken" in warnings[0] and "says more" not in warnings[0]


def test_broken_hook_with_log_false_is_still_reported_once(flowing_records):
    def hook(event):
        raise KeyError("nope")

    @task
    def only():
        return 1

    flow = Flow(only, log=False, on_event=hook)
    assert flow.run()["only"].value == 1
    assert len([m for m in flowing_records.messages if "on_event hook raised" in m]) == 1
    # ... once per run
    flow.run()
    assert len([m for m in flowing_records.messages if "on_event hook raised" in m]) == 2


def test_hook_must_be_callable():
    @task
    def only():
        return 1

    with pytest.raises(TypeError, match="on_event"):
        Flow(only, on_event="print")


# ----- log lines ----------------------------------------------------------------

def test_log_lines_are_concise_and_greppable(user_logger):
    logger, handler = user_logger
    flow = Flow(*small_flow(), fail_fast=False, log=logger)
    flow.run()
    lines = handler.messages
    assert lines[0].startswith("flow start: 5 tasks in ")
    assert "layers" in lines[0]
    assert "start   a attempt=1" in lines
    assert any(m.startswith("ok      a ") and "attempts=1" in m for m in lines)
    retry = [m for m in lines if m.startswith("retry   flaky")]
    assert len(retry) == 1
    assert "attempt=1/2 failed" in retry[0] and "ConnectionError: reset by peer" in retry[0]
    assert "start   flaky attempt=2" in lines
    assert any(m.startswith("ok      flaky ") and "attempts=2" in m for m in lines)
    failed = [m for m in lines if m.startswith("FAILED  bad")]
    assert len(failed) == 1
    assert "attempts=1" in failed[0] and failed[0].endswith("ValueError: bad input")
    assert "skipped after_bad: dependency 'bad' failed" in lines
    assert any(m.startswith("start   side attempt=1") and "[detached]" in m for m in lines)
    assert lines[-1].startswith("flow FAILED: 5 tasks: 3 succeeded, 1 failed, 1 skipped")
    assert "1 retry" in lines[-1]
    # failures are warnings, the rest is info
    levels = {r.getMessage().split()[0]: r.levelno for r in handler.records}
    assert levels["FAILED"] == logging.WARNING and levels["ok"] == logging.INFO
    # every task shows up with a duration on its final line
    for name in ("a", "flaky", "bad", "side"):
        assert any(m.split()[1:2] == [name] and ("ms" in m or "s " in m)
                   for m in lines if m.split()[0] in ("ok", "FAILED"))


def test_cached_line_and_totals(tmp_path, user_logger):
    logger, handler = user_logger

    @task
    def one():
        return 1

    path = tmp_path / "j.jsonl"
    Flow(one, journal_path=path, log=False).run()
    Flow(one, journal_path=path, log=logger).run()
    assert any(m.startswith("cached  one key=") and "(journal)" in m for m in handler.messages)
    assert handler.messages[-1].startswith("flow ok: 1 tasks: 1 succeeded; 1 cached")


def test_log_false_is_silent(capfd, caplog, flowing_records, fast_ticks):
    caplog.set_level(logging.DEBUG)

    @task
    def slow():
        time.sleep(0.4)  # long enough for (patched) progress heartbeats
        return 1

    @task(depends_on=[slow], retry=1, retry_backoff_base_ms=1)
    def boom(slow):
        raise ValueError("boom")

    flow = Flow(boom, log=False)
    flow.run()
    assert flow.results["boom"].attempts == 2
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert caplog.records == []
    assert flowing_records.records == []


def test_log_logger_routes_everything_there(user_logger, flowing_records, capfd, fast_ticks):
    logger, handler = user_logger

    @task
    def slow():
        time.sleep(0.5)
        return 1

    @task(depends_on=[slow])
    def boom(slow):
        raise ValueError("boom")

    Flow(boom, log=logger).run()
    messages = handler.messages
    assert messages[0].startswith("flow start")
    assert any(m.startswith("FAILED  boom") for m in messages)
    assert any(m.startswith("still running: slow") for m in messages)
    assert messages[-1].startswith("flow FAILED")
    assert flowing_records.records == []  # nothing went to the "flowing" logger
    out, err = capfd.readouterr()
    assert err == ""


def test_log_true_writes_to_stderr(capfd):
    @task
    def hello():
        return 1

    Flow(hello).run()  # log=True is the default
    out, err = capfd.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("flowing: flow start: 1 tasks in 1 layers")
    assert "flowing: start   hello attempt=1" in lines
    assert lines[-1].startswith("flowing: flow ok: 1 tasks: 1 succeeded")


def test_log_must_be_bool_or_logger():
    @task
    def only():
        return 1

    with pytest.raises(TypeError, match="log"):
        Flow(only, log="yes")


def test_no_line_longer_than_200(user_logger, capfd):
    logger, handler = user_logger
    long_name = "n" * 500
    message = "m" * 1000

    @task(name=long_name, retry=1, retry_backoff_base_ms=1)
    def first():
        raise ValueError(message)

    @task(depends_on=[first], name="after_" + "x" * 300)
    def after(**deps):
        return 1

    Flow(after, log=logger).run()
    lines = ["flowing: " + m for m in handler.messages]
    assert len(lines) >= 5
    assert max(len(line) for line in lines) <= 200
    failed = [m for m in handler.messages if m.startswith("FAILED")]
    assert failed and "ValueError: mmm" in failed[0] and failed[0].endswith("...")
    retry = [m for m in handler.messages if m.startswith("retry")]
    assert retry and "attempt=1/2" in retry[0]

    # the same through the default stderr handler, prefix included
    Flow(after).run()
    err = capfd.readouterr().err
    assert err and max(len(line) for line in err.splitlines()) <= 200


def test_error_line_is_type_and_first_line():
    assert ev.error_line(ValueError("first\nsecond")) == "ValueError: first"
    assert ev.error_line(KeyError()) == "KeyError"
    assert len(ev.error_line(ValueError("x" * 500), width=50)) == 50

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert ev.error_line(Unprintable()) == "Unprintable: <unprintable message>"


def test_control_characters_never_split_a_line(user_logger):
    logger, handler = user_logger

    @task(name="two\nlines")
    def odd():
        raise ValueError("x")

    Flow(odd, log=logger).run()
    assert all("\n" not in m and "\r" not in m for m in handler.messages)


# ----- progress -----------------------------------------------------------------

def test_heartbeat_names_what_is_running(user_logger, fast_ticks):
    logger, handler = user_logger

    @task
    def quick():
        return 1

    @task(depends_on=[quick])
    def sleepy(quick):
        time.sleep(0.8)
        return 2

    Flow(sleepy, log=logger).run()
    beats = [m for m in handler.messages if m.startswith("still running:")]
    assert beats, handler.messages
    assert all("sleepy" in m and "quick" not in m.split(";")[0] for m in beats)
    assert all("1/2 done" in m and "elapsed" in m for m in beats)
    assert len(beats) <= 6  # at most one per (patched) interval


def test_no_heartbeat_for_short_tasks(user_logger, monkeypatch):
    logger, handler = user_logger
    monkeypatch.setattr(flowing.scheduler, "MAX_WAIT_S", 0.05)

    @task
    def brief():
        time.sleep(0.3)
        return 1

    Flow(brief, log=logger).run()  # default interval: 10 s
    assert not [m for m in handler.messages if m.startswith("still running")]


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_live_line_on_a_terminal(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    logger = logging.getLogger(ev.LOGGER_NAME)
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    assert ev.resolve_logger(True) is logger  # installs the stderr handler

    reporter = ev.Reporter(logger)
    t0 = time.time()
    reporter.emit(ev.FlowStarted(t0, 3, 2, 5, "eager"))
    reporter.emit(ev.TaskStarted(t0, "fetch", 1))
    reporter.tick(0, 3, {"fetch": t0 - 2.0, "parse": t0 - 0.5})
    live = tty.getvalue().rsplit("\n", 1)[1]  # drawn in place: no newline after it
    assert live.startswith(progress._CLEAR + "flowing: 0/3 done, ")
    assert "running: fetch 2.0s, parse 0.5s" in live
    reporter.emit(ev.TaskSucceeded(time.time(), "fetch", 1, 2000.0))
    out = tty.getvalue()
    ok_at = out.index("flowing: ok      fetch")
    # the live line was wiped just before the log line, which starts its own line
    assert out[:ok_at].endswith(progress._CLEAR)
    reporter.tick(1, 3, {"parse": t0 - 0.5})
    reporter.emit(ev.FlowFinished(time.time(), True, 2500.0, {"succeeded": 3}))
    out = tty.getvalue()
    tail = out[out.rindex("\n", 0, out.index("flowing: flow ok")) + 1:]
    assert tail.startswith(progress._CLEAR) or tail.startswith("flowing: flow ok")
    assert out.endswith("\n")  # nothing left drawn after the totals line
    assert progress._shown_on is None


def test_no_live_line_when_not_a_terminal_or_log_false(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    p = progress.Progress(logging.getLogger(ev.LOGGER_NAME), time.time())
    assert not p.live
    p.tick(0, 1, {"x": time.time()})
    assert pipe.getvalue() == ""  # nothing running for 10 s yet: no heartbeat either
    reporter = ev.Reporter(None, on_event=lambda e: None)
    reporter.emit(ev.FlowStarted(time.time(), 1, 1, 5, "eager"))
    reporter.tick(0, 1, {"x": time.time() - 100})
    assert pipe.getvalue() == ""


def test_running_list_fits():
    now = 1000.0
    running = {f"task_{k}": now - k for k in range(50)}
    text = progress.running_list(running, now, 80)
    assert len(text) <= 80
    assert text.startswith("task_49 49.0s") and "more" in text
