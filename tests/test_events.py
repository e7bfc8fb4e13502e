"""Observing a run: typed events for on_event, log lines on the "flowing" logger."""

import logging
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers import ListHandler

from flowing import Flow, StepState, task
from flowing.observe.events import (
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


# ----- text that never raises (SPEC 8: run() always returns) ---------------------

from hostile import (  # noqa: E402
    BaseRaiser,
    EvilStr,
    EvilStrRepr,
    Nameless,
    NoBool,
    NoEq,
    NonStrRepr,
    RaisingRepr,
    RaisingStr,
    StrEvil,
    StrNonStr,
    StrRaises,
)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flowing import text as tx  # noqa: E402
from flowing.observe import events as ev  # noqa: E402
from flowing.observe import reporter as rep  # noqa: E402
from flowing.records import Record  # noqa: E402
from flowing.results import ItemResult, StepResult  # noqa: E402

# (BaseRaiser stays out of parametrize ids and reprs: pytest itself would choke on it)
HOSTILE = [RaisingRepr(), NonStrRepr(), RaisingStr(), EvilStrRepr(), NoBool(), NoEq(),
           StrRaises(), StrNonStr(), StrEvil(), Nameless(), EvilStr("x\ny"),
           "x" * 1_000_000, 10 ** 5000, [RaisingRepr()] * 3, {NoEq(): RaisingRepr()},
           "line\nbreak\r\x1b[31mred\u2028sep\ud800", float("nan"), None]


def _one_line(text, width):
    assert type(text) is str
    assert len(text) <= width
    assert not any(c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029" for c in text)
    assert not any("\ud800" <= c <= "\udfff" for c in text)
    text.encode("utf-8")  # printable anywhere


@pytest.mark.parametrize("k", range(len(HOSTILE)))
def test_safe_str_and_repr_never_raise(k):
    value = HOSTILE[k]
    for width in (1, 10, 60, 200):
        _one_line(tx.safe_repr(value, width), max(width, 8))
        _one_line(tx.safe_str(value, width), width)
        _one_line(tx.clip(value, width), width)
    multi = tx.safe_str(value, 100, one_line=False)
    assert type(multi) is str and len(multi) <= 100


def test_unprintable_values_say_so():
    assert tx.safe_repr(RaisingRepr()) == "<unprintable RaisingRepr>"
    assert tx.safe_repr(NonStrRepr()) == "<unprintable NonStrRepr>"
    assert tx.safe_repr(BaseRaiser()) == "<unprintable BaseRaiser>"
    assert tx.safe_str(BaseRaiser()) == "<unprintable BaseRaiser>"
    assert tx.safe_str(RaisingStr()) == "<unprintable RaisingStr>"
    assert tx.safe_str(StrNonStr()) == "<unprintable StrNonStr>"
    assert tx.safe_repr(Nameless()) == "<unprintable object>"
    # inside a container, only the bad element is replaced
    assert tx.safe_repr([1, RaisingRepr()]) == "[1, <unprintable RaisingRepr>]"
    # a str subclass is read as the plain string it holds
    assert tx.safe_repr(EvilStrRepr()) == "looks fine but is not"
    assert tx.safe_str(StrEvil()) == "evil message"
    assert tx.safe_repr(NoBool()) == "NoBool()"


def test_safe_repr_of_big_values_is_short_and_cheap():
    assert tx.safe_repr("x" * 10_000_000, 20).startswith("'xxxxxx")
    assert len(tx.safe_repr(list(range(1_000_000)), 60)) <= 60
    assert tx.safe_repr(10 ** 100_000) == "<int of 332193 bits>"
    deep = []
    for _ in range(10_000):
        deep = [deep]
    assert tx.safe_repr(deep).startswith("[[[")
    loop = []
    loop.append(loop)
    assert tx.safe_repr(loop) in ("[[...]]", "[[[[...]]]]")


def test_error_line_survives_hostile_exceptions():
    assert tx.error_line(StrRaises()) == "StrRaises: <unprintable message>"
    assert tx.error_line(StrNonStr()) == "StrNonStr: <unprintable message>"
    assert tx.error_line(StrEvil()) == "StrEvil: evil"
    assert tx.error_line(ValueError("\n\n  second\nthird")) == "ValueError: second"
    huge = ValueError("y" * 50_000_000)
    assert len(tx.error_line(huge, 80)) == 80

    class Boom(Exception):
        def __str__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is never swallowed
        tx.error_line(Boom())


def test_format_duration_of_odd_numbers():
    for odd in (None, float("nan"), float("inf"), -5.0, "soon", 1e300):
        assert isinstance(tx.format_duration(odd), str)
    assert tx.format_duration(-5.0) == "0ms"
    assert tx.format_duration(float("nan")) == "?"
    assert len(tx.format_duration(1e300)) < 20


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    | st.frozensets(st.integers(), max_size=5),
    max_leaves=30), st.integers(min_value=1, max_value=300))
def test_safe_text_is_always_one_bounded_line(value, width):
    _one_line(tx.safe_repr(value, width), max(width, 8))
    _one_line(tx.safe_str(value, width), width)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(min_value=0, max_value=200))
def test_clip_bounds_any_text(text, width):
    out = tx.clip(text, width)
    _one_line(out, width)
    if len(text) <= width and text.isprintable():
        assert out == text


def test_record_repr_never_raises():
    class R(Record):
        __slots__ = ("a", "b")

    text = repr(R(RaisingRepr(), "x" * 10_000))
    assert text.startswith("R(a=<unprintable RaisingRepr>, b='xxx") and len(text) < 500
    e = ev.TaskFailed(1.0, "t", 1, 2.0, StrRaises())
    assert "TaskFailed(" in repr(e)


# ----- items: every message names the index and the item itself ---------------------

def _item(index, state, item, error=None, cached=False, attempts=1):
    return ItemResult(index, state, None, error, attempts, cached, item=item)


def test_item_label_and_failure():
    assert tx.item_label(16, 17) == "item 16 (17)"
    assert tx.item_label(0, "a.csv") == "item 0 ('a.csv')"
    assert tx.item_label(3) == "item 3"  # item unknown
    assert tx.item_label(2, None) == "item 2 (None)"  # None is an item like any other
    assert tx.item_label(1, RaisingRepr()) == "item 1 (<unprintable RaisingRepr>)"
    assert len(tx.item_label(1, "z" * 5000)) < 60
    assert (tx.item_failure(16, 17, ConnectionError("HTTP 500\ndetails"))
            == "item 16 (17): ConnectionError: HTTP 500")
    assert tx.item_failure(4, "x", None, "retry_until rejected 3") == (
        "item 4 ('x'): retry_until rejected 3")
    assert tx.item_failure(5, NoEq(), StrRaises()).endswith("StrRaises: <unprintable message>")


def test_items_line():
    S, F, K = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED
    items = [_item(k, S, k + 1, cached=k < 30) for k in range(40)]
    items[16] = _item(16, F, 17, ConnectionError("500"))
    items[28] = _item(28, F, 29, StrRaises())
    line = tx.items_line(items)
    assert line.startswith("40 items: 38 ok (28 cached), 2 failed: ")
    assert "item 16 (17): ConnectionError: 500" in line
    assert "item 28 (29): StrRaises: <unprintable message>" in line
    assert tx.items_line([]) == "0 items"
    assert tx.items_line(None) == "0 items"
    many = [_item(k, F, f"id-{k}", ValueError(k)) for k in range(10)] + [None, _item(11, K, 1)]
    line = tx.items_line(many, width=150)
    assert len(line) <= 150
    assert line.startswith("12 items: 0 ok, 10 failed, 1 skipped, 1 not run: item 0 ('id-0')")
    assert tx.items_line([object(), RaisingRepr()]) == "2 items: 0 ok, 2 not run"


# ----- log lines built from events, whatever they hold ----------------------------

def test_log_lines_from_hostile_events():
    lines = [
        rep.log_line(ev.TaskFailed(1.0, "t", 1, 5.0, StrRaises())),
        rep.log_line(ev.TaskFailed(1.0, "t", 1, float("nan"), None, RaisingStr())),
        rep.log_line(ev.TaskRetrying(1.0, "t", 1, 3, float("inf"), StrEvil(), None, 4,
                                    item_repr="'a.csv'")),
        rep.log_line(ev.TaskRetrying(1.0, "t", 1, 3, "soon", None, NoBool())),
        rep.log_line(ev.TaskSkipped(1.0, "t\nx", "reason\x1b[2J")),
        rep.log_line(ev.TaskSkipped(1.0, "t", NoBool())),
        rep.log_line(ev.TaskCached(1.0, "t", None, NoBool())),
        rep.log_line(ev.TaskStarted(1.0, "t", 1, False, RaisingStr())),
        rep.log_line(ev.TaskCached(1.0, "t", EvilStr("abcdefghij"), NoEq())),
        rep.log_line(ev.TaskSucceeded(1.0, "t", 1, 3.0, False, [None, RaisingRepr()])),
        rep.log_line(ev.FlowStarted(1.0, 1, 1, 5, RaisingStr())),
    ]
    for line in lines:
        _one_line(line, tx.MAX_LINE)
    assert lines[0].endswith("StrRaises: <unprintable message>")
    assert lines[2].startswith("retry   t[4] ('a.csv') attempt=1/3 failed")
    assert lines[7].endswith("(<unprintable RaisingStr>)")
    assert lines[5] == "skipped t: NoBool()" and lines[6] == "cached  t (NoBool())"


def test_start_line_says_why_a_journaled_task_ran():
    assert rep.log_line(ev.TaskStarted(1.0, "names", 1)) == "start   names attempt=1"
    line = rep.log_line(ev.TaskStarted(1.0, "names", 1, False, "dependency 'files' changed"))
    assert line == "start   names attempt=1 (dependency 'files' changed)"
    line = rep.log_line(ev.TaskStarted(1.0, "side", 1, True, "expired" + "!" * 500))
    assert line.startswith("start   side attempt=1 [detached] (expired!!!")
    assert len(line) < 120


def test_item_and_items_lines():
    S, F = StepState.SUCCEEDED, StepState.FAILED
    items = [_item(0, S, "a.csv", cached=True), _item(1, F, "b.csv", KeyError("col"), attempts=3)]
    failed = rep.log_line(ev.TaskFailed(1.0, "load", 3, 40.0, ValueError("x"), None, False, items))
    assert failed == ("FAILED  load 40ms attempts=3: 2 items: 1 ok (1 cached), 1 failed: "
                      "item 1 ('b.csv'): KeyError: 'col'")
    ok = rep.log_line(ev.TaskSucceeded(1.0, "load", 1, 40.0, False, items[:1]))
    assert ok == "ok      load 40ms attempts=1: 1 item: 1 ok (1 cached)"
    retry = rep.log_line(ev.TaskRetrying(1.0, "load", 1, 3, 0.5, KeyError("col"), None, 1,
                                        item_repr=tx.safe_repr("b.csv")))
    assert retry.startswith("retry   load[1] ('b.csv') attempt=1/3 failed, next in 0.5s")


def test_events_keep_their_positional_order():
    """New fields come last, with defaults: events built the 0.1 way still work."""
    e = ev.TaskStarted(1.0, "t", 2, True)
    assert (e.at, e.task, e.attempt, e.detached, e.why) == (1.0, "t", 2, True, None)
    r = ev.TaskRetrying(1.0, "t", 1, 3, 0.5, None, "rejected", 4, 12.0)
    assert (r.item, r.duration_ms, r.item_repr) == (4, 12.0, None)
    s = ev.TaskSucceeded(1.0, "t", 1, 3.0, True)
    assert s.items is None and s.detached
    f = ev.TaskFailed(1.0, "t", 1, 3.0, None, "why", True)
    assert f.items is None and f.reason == "why"
    assert list(ev.TaskStarted.__slots__) == ["at", "task", "attempt", "detached", "why"]
    assert ev.TaskCached(1.0, "t").reason == "journal"
    assert ev.FlowFinished(1.0, True, 2.0).interrupted is False
    assert e._asdict() == {"at": 1.0, "task": "t", "attempt": 2, "detached": True, "why": None}


# ----- the reporter never raises into the run --------------------------------------

class BrokenHandler(logging.Handler):
    def emit(self, record):
        raise RuntimeError("disk full")

    def handleError(self, record):  # noqa: N802  (what logging calls when emit fails)
        raise RuntimeError("and handleError too")


def test_a_broken_log_handler_never_breaks_the_run():
    log = logging.getLogger("tests.flowing.broken_handler")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = BrokenHandler()
    log.addHandler(handler)
    try:
        reporter = rep.Reporter(log, on_event=lambda e: 1 / 0)
        reporter.emit(ev.FlowStarted(1.0, 1, 1, 5, "eager"))
        reporter.emit(ev.TaskFailed(2.0, "t", 1, 3.0, StrRaises()))
        reporter.warning(RaisingStr())
        reporter.tick(0, 1, {"t": 1.0})
        reporter.emit(ev.FlowFinished(3.0, False, 2000.0, {"failed": 1}))

        @task
        def boom():
            raise StrRaises()

        flow = Flow(boom, log=log)
        assert flow.run()["boom"].state is StepState.FAILED
    finally:
        log.removeHandler(handler)


def test_result_reprs_never_raise():
    r = StepResult("t", StepState.FAILED, RaisingRepr(), StrRaises(), reason="x")
    assert "StrRaises" in repr(r)
    it = ItemResult(0, StepState.FAILED, RaisingRepr(), StrRaises())
    assert "ItemResult(0" in repr(it)
