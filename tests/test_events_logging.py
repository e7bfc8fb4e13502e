"""Observing a run: typed events, log lines, progress (spec section 7)."""

import io
import logging
import threading
import time

import pytest
from helpers import ListHandler

import flowing.engine.admission
from flowing import Flow, StepState, task
from flowing import text as tx
from flowing.observe import events as ev
from flowing.observe import progress
from flowing.observe import reporter as rep


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
    logger = logging.getLogger(tx.LOGGER_NAME)
    handler = ListHandler()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def fast_ticks(monkeypatch):
    """Progress ticks every 50 ms and heartbeats every 0.2 s, so a short task is 'long'."""
    monkeypatch.setattr(flowing.engine.admission, "MAX_WAIT_S", 0.05)
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
    assert handler.messages[-1].startswith("flow ok: 1 task: 1 succeeded; 1 cached")


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
    assert lines[0].startswith("flowing: flow start: 1 task in 1 layer")
    assert "flowing: start   hello attempt=1" in lines
    assert lines[-1].startswith("flowing: flow ok: 1 task: 1 succeeded")


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
    assert tx.error_line(ValueError("first\nsecond")) == "ValueError: first"
    assert tx.error_line(KeyError()) == "KeyError"
    assert len(tx.error_line(ValueError("x" * 500), width=50)) == 50

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert tx.error_line(Unprintable()) == "Unprintable: <unprintable message>"


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
    monkeypatch.setattr(flowing.engine.admission, "MAX_WAIT_S", 0.05)

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
    logger = logging.getLogger(tx.LOGGER_NAME)
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    assert rep.resolve_logger(True) is logger  # installs the stderr handler

    reporter = rep.Reporter(logger)
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
    p = progress.Progress(logging.getLogger(tx.LOGGER_NAME), time.time())
    assert not p.live
    p.tick(0, 1, {"x": time.time()})
    assert pipe.getvalue() == ""  # nothing running for 10 s yet: no heartbeat either
    reporter = rep.Reporter(None, on_event=lambda e: None)
    reporter.emit(ev.FlowStarted(time.time(), 1, 1, 5, "eager"))
    reporter.tick(0, 1, {"x": time.time() - 100})
    assert pipe.getvalue() == ""


def test_running_list_fits():
    now = 1000.0
    running = {f"task_{k}": now - k for k in range(50)}
    text = progress.running_list(running, now, 80)
    assert len(text) <= 80
    assert text.startswith("task_49 49.0s") and "more" in text


# ----- retry policy: a hint that cannot be used is ignored, and said so ---------------

import math  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flowing import retry as rt  # noqa: E402


def _with_hint(hint):
    error = ConnectionError("429")
    error.retry_after = hint
    return error


class RaisingHint(Exception):
    @property
    def retry_after(self):
        raise RuntimeError("no header")


class HintRaisingBase(Exception):
    @property
    def retry_after(self):
        raise AttributeError("looks absent")


class OddReal(float):
    def __float__(self):
        raise ValueError("no float for you")


@pytest.mark.parametrize("hint, seconds", [
    (0, 0.0), (2, 2.0), (2.5, 2.5), (None, None),
    (float("nan"), None), (float("inf"), None), (-1, None), (-0.0, 0.0),
    (True, None), (False, None), ("120", None), (b"1", None), (1j, None), ([1], None),
    (1e300, rt.MAX_RETRY_AFTER_S), (10 ** 400, rt.MAX_RETRY_AFTER_S),
])
def test_retry_after_hint(hint, seconds):
    assert rt.retry_after_hint(_with_hint(hint)) == seconds


def test_retry_after_hint_of_other_numbers_and_odd_objects():
    from decimal import Decimal
    from fractions import Fraction

    assert rt.retry_after_hint(_with_hint(Decimal("1.5"))) == 1.5
    assert rt.retry_after_hint(_with_hint(Fraction(1, 4))) == 0.25
    assert rt.retry_after_hint(_with_hint(Decimal("NaN"))) is None
    assert rt.retry_after_hint(_with_hint(Decimal("sNaN"))) is None
    assert rt.retry_after_hint(_with_hint(OddReal(3))) is None
    assert rt.retry_after_hint(RaisingHint()) is None
    assert rt.retry_after_hint(HintRaisingBase()) is None
    assert rt.retry_after_hint(None) is None
    assert rt.retry_after_hint(ValueError()) is None


def test_retry_after_problem_says_why_in_one_line():
    assert rt.retry_after_problem(ValueError("no hint at all")) is None
    assert rt.retry_after_problem(_with_hint(None)) is None  # None: no hint, not a problem
    assert rt.retry_after_problem(_with_hint(3)) is None
    assert rt.retry_after_problem(RaisingHint(), task="fetch") == (
        "task 'fetch': RaisingHint: its retry_after raised RuntimeError: no header; ignored")
    assert rt.retry_after_problem(_with_hint("120")) == (
        "ConnectionError: its retry_after is '120' (str), not a number of seconds; ignored")
    assert rt.retry_after_problem(_with_hint(float("nan"))) == (
        "ConnectionError: its retry_after is nan (float), not a finite number of "
        "seconds >= 0; ignored")
    assert "True (bool)" in rt.retry_after_problem(_with_hint(True))
    assert rt.retry_after_problem(_with_hint(1e300)).endswith("more than 86400s; waiting 86400s")

    class Unprintable:
        def __repr__(self):
            raise RuntimeError("no")

    line = rt.retry_after_problem(_with_hint(Unprintable()), task="t\nx" * 100)
    assert "<unprintable Unprintable>" in line and "\n" not in line and len(line) <= 300


class RaisingCheck(type):
    def __instancecheck__(cls, instance):
        raise RuntimeError("isinstance exploded")


class Sneaky(Exception, metaclass=RaisingCheck):
    pass


def _TD(retry=3, base=1000, cap=30_000, retry_on=(Exception,)):
    """Just the retry settings of a TaskDef (``TaskDef.retry_policy``)."""
    return rt.RetryPolicy(retry, base, cap, retry_on)


def _next_delay(policy, attempt, error):
    """What the attempt module asks: the task's policy for its next delay."""
    return policy.next_delay(attempt, error)


def test_next_delay_never_raises():
    assert _next_delay(_TD(), 1, ValueError()) is not None
    assert _next_delay(_TD(), 4, ValueError()) is None            # budget spent
    assert _next_delay(_TD(retry_on=(KeyError,)), 1, ValueError()) is None
    assert _next_delay(_TD(retry_on=(Sneaky,)), 1, ValueError()) is None
    assert _next_delay(_TD(), 1, RaisingHint()) <= 1.0             # hint ignored
    assert _next_delay(_TD(), 1, _with_hint(5)) >= 5.0             # hint honoured
    assert _next_delay(_TD(), 1, _with_hint(1e300)) == rt.MAX_RETRY_AFTER_S
    assert _next_delay(_TD(), 1, None) is not None                 # retry_until rejection
    assert _next_delay(_TD(retry="3"), 1, ValueError()) is None     # settings not numbers
    assert _next_delay(_TD(retry="three"), 1, ValueError()) is None


@pytest.mark.parametrize("base, cap", [(float("nan"), 1000), (1000, float("nan")),
                                       (float("inf"), 1000), (1000, float("inf")),
                                       (-5, 1000), (1000, -5), ("x", None)])
def test_backoff_delay_with_unusable_settings_stays_finite_and_capped(base, cap):
    for attempt in (1, 2, 50, 10 ** 6):
        d = rt.backoff_delay(attempt, base, cap)
        assert math.isfinite(d) and 0 <= d <= rt.DEFAULT_MAX_BACKOFF_MS / 1000


def test_backoff_delay_with_an_odd_random_source():
    assert rt.backoff_delay(1, 1000, 30_000, rand=lambda: float("nan")) == 0.75
    assert rt.backoff_delay(1, 1000, 30_000, rand=lambda: 7.0) == 1.0
    assert rt.backoff_delay(1, 1000, 30_000, rand=lambda: 1 / 0) == 0.75


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10 ** 9),
       st.floats(min_value=0, max_value=1e12), st.floats(min_value=0, max_value=1e12),
       st.floats(min_value=0, max_value=1))
def test_backoff_delay_is_capped_equal_jitter(attempt, base, cap, share):
    d = rt.backoff_delay(attempt, base, cap, rand=lambda: share)
    try:
        grown = base * 2.0 ** (attempt - 1)
    except OverflowError:
        grown = math.inf if base else 0.0
    nominal = min(grown, cap) / 1000
    assert math.isfinite(d)
    assert nominal / 2 - 1e-9 * nominal <= d <= nominal + 1e-9 * nominal


# ----- real runs: hostile errors and items in the log ----------------------------------

class BadStrError(Exception):
    def __str__(self):
        raise RuntimeError("cannot print me")


class BadRepr:
    def __init__(self, n):
        self.n = n

    def __repr__(self):
        raise RuntimeError("no repr")


def test_hostile_errors_and_items_are_logged_and_the_run_returns(user_logger):
    logger, handler = user_logger

    @task
    def source():
        return [1, BadRepr(2), "three"]

    @task(depends_on=[source], for_each="source")
    def per_item(source):
        if isinstance(source, BadRepr):
            raise BadStrError()
        return 1

    @task(retry=1, retry_backoff_base_ms=1)
    def plain():
        raise BadStrError()

    flow = Flow(per_item, plain, log=logger, fail_fast=False)
    results = flow.run()
    assert results["per_item"].state is StepState.FAILED
    assert results["plain"].state is StepState.FAILED
    lines = handler.messages
    assert all(len("flowing: " + m) <= tx.MAX_LINE and "\n" not in m for m in lines)
    failed = [m for m in lines if m.startswith("FAILED  per_item")]
    assert failed and "item 1 (<unprintable BadRepr>)" in failed[0], lines
    assert any(m.startswith("FAILED  plain") and "BadStrError: <unprintable message>" in m
               for m in lines)
    assert any(m.startswith("retry   plain") and "BadStrError" in m for m in lines)


def test_item_retry_line_names_the_index_and_the_item(user_logger):
    logger, handler = user_logger
    seen = []

    @task
    def ids():
        return [10, 17, 20]

    @task(depends_on=[ids], for_each="ids", retry=1, retry_backoff_base_ms=1)
    def fetch(ids):
        if ids == 17 and not [e for e in seen if isinstance(e, ev.TaskRetrying)]:
            raise ConnectionError("HTTP 500")
        return ids

    Flow(fetch, log=logger, on_event=seen.append).run()
    (retry,) = [e for e in seen if isinstance(e, ev.TaskRetrying)]
    assert retry.item == 1
    if retry.item_repr is None:
        pytest.xfail("the scheduler does not pass TaskRetrying(item_repr=...) yet")
    assert retry.item_repr == "17"
    (line,) = [m for m in handler.messages if m.startswith("retry")]
    assert line.startswith("retry   fetch[1] (17) attempt=1/2 failed")
    assert line.endswith("ConnectionError: HTTP 500")


def test_for_each_result_lines_count_the_items(user_logger):
    logger, handler = user_logger
    seen = []

    @task
    def ids():
        return ["a", "b", "c"]

    @task(depends_on=[ids], for_each="ids")
    def each(ids):
        return ids.upper()

    Flow(each, log=logger, on_event=seen.append).run()
    (done,) = [e for e in seen if isinstance(e, ev.TaskSucceeded) and e.task == "each"]
    if done.items is None:
        pytest.xfail("the scheduler does not pass TaskSucceeded(items=...) yet")
    assert [it.item for it in done.items] == ["a", "b", "c"]
    assert any(m.startswith("ok      each ") and m.endswith(": 3 items: 3 ok")
               for m in handler.messages), handler.messages


def test_start_line_says_why_a_journaled_task_ran_again(tmp_path, user_logger):
    logger, handler = user_logger
    data = tmp_path / "data.txt"
    data.write_text("one")
    try:
        listing = task(name="listing", cache=False)(lambda: data.read_text())
    except TypeError:
        pytest.skip("@task(cache=...) is not there yet")

    @task(depends_on=[listing])
    def size(listing):
        return len(listing)

    path = tmp_path / "j.jsonl"
    Flow(size, journal_path=path, log=False).run()
    data.write_text("three")
    Flow(size, journal_path=path, log=logger).run()
    starts = {m.split()[1]: m for m in handler.messages if m.startswith("start")}
    assert starts["listing"] == "start   listing attempt=1 (cache=False)"
    assert starts["size"] == "start   size attempt=1 ('listing' returned a different value)"


# ----- progress of a long for_each in a pipe ------------------------------------------------

import re  # noqa: E402


def test_heartbeat_of_a_for_each_names_items_in_flight_and_time_left(user_logger, fast_ticks):
    logger, handler = user_logger

    @task
    def ids():
        return list(range(24))

    @task(depends_on=[ids], for_each="ids")
    def work(ids):
        time.sleep(0.05)
        return ids

    Flow(work, max_workers=3, log=logger).run()
    beats = [m for m in handler.messages if m.startswith("still running")]
    assert beats, handler.messages
    pattern = re.compile(r"work \d+\.\ds \((\d+)/24 items, (\d+) in flight, (~\S+|\?) left\)")
    seen = [pattern.search(m) for m in beats]
    assert all(seen), beats
    done = [int(m.group(1)) for m in seen if m]
    assert done == sorted(done) and all(0 <= d <= 24 for d in done)
    assert all(int(m.group(2)) <= 3 for m in seen if m)  # never more than max_workers
    assert any(m.group(3).startswith("~") for m in seen if m)  # an estimate once items are done


def test_items_progress_estimates_from_the_pace_so_far():
    now = 1000.0
    assert progress.items_progress((10, 40, 3, now - 5.0), now) == (
        "10/40 items, 3 in flight, ~15.0s left")
    assert progress.items_progress((0, 40, 3, now - 5.0), now) == "0/40 items, 3 in flight, ? left"
    assert progress.items_progress((40, 40, 0, now - 5.0), now).endswith("~0.0s left")
    text = progress.running_list({"work": now - 2.0}, now, 200, {"work": (1, 4, 1, now - 2.0)})
    assert text == "work 2.0s (1/4 items, 1 in flight, ~6.0s left)"
