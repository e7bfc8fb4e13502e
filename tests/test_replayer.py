"""The Replayer's decisions, driven directly (no scheduler, no runner).

A first run in a FRESH PROCESS writes the journal; this process then builds
the run's ``JournalPlan`` over that journal, gives the Replayer the values of
the finished dependencies, and asks it what a released task does: replay
(a cached result), or run and why (``Why`` records, worded by ``str``).
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flowing import StepState
from flowing.graph import Graph
from flowing.journal.store import Journal
from flowing.replay.policy import JournalPlan
from flowing.replay.replayer import Replayer
from flowing.replay.why import Why, WhyKind
from flowing.results import StepResult

ROOT = Path(__file__).resolve().parent.parent
S = StepState.SUCCEEDED

TASKS = '''
import threading

from flowing import task

LOCK = threading.Lock()  # no stable content: a task reading it is not cached


@task
def up():
    return [1, 2, 3]


@task(depends_on=[up])
def down(up):
    return sum(up)


@task(depends_on=[up], cache=False)
def fresh(up):
    return len(up)


@task(depends_on=[up])
def locked(up):
    with LOCK:
        return list(up)


@task(depends_on=[up], cache_ttl_s=0.001)
def short(up):
    return up[0]


@task(depends_on=[up], for_each="up")
def each(up):
    return up * 10


@task
def big():
    return b"x" * 200_000  # stored beside the journal, read when needed


@task(depends_on=[big])
def uses(big):
    return len(big)


@task(depends_on=[down, fresh, locked, short, each, uses])
def end(down, fresh, locked, short, each, uses):
    return None
'''

_names = itertools.count()


class Case:
    """The tasks above as a module of their own, a journal, and one run's Replayer."""

    def __init__(self, tmp_path: Path, first_run: bool = True) -> None:
        self.module = f"replayer_case_{os.getpid()}_{next(_names)}"
        (tmp_path / f"{self.module}.py").write_text(TASKS)
        self.journal_path = str(tmp_path / "run.jsonl")
        if first_run:
            script = textwrap.dedent(f"""
                from flowing import Flow
                import {self.module} as m
                assert Flow(m.end, journal_path={self.journal_path!r}, log=False).run()
                """)
            env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{ROOT}")
            env.pop("FLOWING_DRY_RUN", None)
            p = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
        sys.path.insert(0, str(tmp_path))
        try:
            mod = __import__(self.module)
        finally:
            sys.path.remove(str(tmp_path))
        self.graph = Graph.build((mod.end,), inputs=())
        self.journal = Journal.open(self.journal_path, logging.getLogger("test.replayer"))
        self.warnings: list[str] = []
        self.recorded: list[object] = []

    def replayer(self, force: set[str] = frozenset(), up: object = (1, 2, 3),
                 record: object = None) -> Replayer:
        """A run's Replayer, with ``up`` already finished with value ``up``."""
        g = self.graph
        plan = JournalPlan.build(self.journal, g, {}, {g.index_of(n) for n in force},
                                 self.warnings.append)
        results: list[StepResult | None] = [None] * len(g)
        results[self.i("up")] = StepResult("up", S, list(up) if type(up) is tuple else up)
        return Replayer(plan, g, results, inputs={}, parts=[None] * len(g),
                        record=record or self.recorded.append, warn=self.warnings.append)

    def i(self, name: str) -> int:
        return self.graph.index_of(name)

    def close(self) -> None:
        self.journal.close()
        sys.modules.pop(self.module, None)


@pytest.fixture
def case(tmp_path):
    c = Case(tmp_path)
    yield c
    c.close()


@pytest.fixture(scope="module")
def shared_case(tmp_path_factory):
    c = Case(tmp_path_factory.mktemp("replayer"))
    yield c
    c.close()


def test_replays_an_entry_whose_key_matches(case):
    r = case.replayer()
    done = r.released(case.i("down"))
    assert done is not None and done.cached and done.state is S
    assert done.value == 6
    assert done.step_key == r.keys[case.i("down")]
    assert r.why == {}


def test_a_dependency_that_returned_another_value_runs_the_task_and_says_so(case):
    r = case.replayer(up=[1, 2, 4])
    i = case.i("down")
    assert r.released(i) is None
    assert r.why[i] == Why(WhyKind.CHANGED, ("dep:up",))
    assert str(r.why[i]) == "'up' returned a different value"
    in_digest, store = r.job_inputs(i)
    assert in_digest is not None and store  # it will be journaled under its new key


def test_forced_tasks_run_whatever_the_journal_holds(case):
    r = case.replayer(force={"down"})
    i = case.i("down")
    assert r.released(i) is None
    assert r.why[i] == Why(WhyKind.FORCED)
    assert str(r.why[i]) == "re-run on request"


def test_cache_false_runs_and_is_not_stored(case):
    r = case.replayer()
    i = case.i("fresh")
    assert r.released(i) is None
    assert str(r.why[i]) == "cache=False"
    assert r.job_inputs(i)[1] is False


def test_uncacheable_task_runs_with_its_reason_as_data(case):
    r = case.replayer()
    i = case.i("locked")
    # one warning while the plan is built, naming the task and the value
    assert [w for w in case.warnings if w.startswith("task 'locked': not cached this run: ")]
    why = r.plan.uncacheable[i]
    assert why.kind is WhyKind.NOT_CACHED and "LOCK" in why.detail
    assert r.released(i) is None
    assert r.why[i] == why
    assert str(r.why[i]) == f"not cached: {why.detail}"
    assert r.job_inputs(i)[1] is False


def test_a_dependency_value_without_stable_content_runs_the_task(case):
    r = case.replayer(up=threading.Lock())
    i = case.i("down")
    assert r.released(i) is None
    assert r.why[i] == Why(WhyKind.UNSTABLE_DEP)
    assert str(r.why[i]) == "a dependency's value has no stable content"
    assert r.job_inputs(i) == (None, False)  # computed from it: never stored


def test_an_expired_entry_runs_the_task(case):
    r = case.replayer()
    i = case.i("short")
    assert r.released(i) is None
    assert r.why[i] == Why(WhyKind.EXPIRED, detail="0.001")
    assert str(r.why[i]) == "expired (older than cache_ttl_s=0.001)"


def test_no_entry_runs_without_explaining_a_first_run(tmp_path):
    c = Case(tmp_path, first_run=False)
    try:
        r = c.replayer()
        i = c.i("down")
        assert r.released(i) is None
        assert r.why == {}  # a first run needs no explaining
        assert r.job_inputs(i)[1] is True
        assert r.plan.verdict(i, c.graph.tasks[i], r.keys[i], "x", {}, explain=False) \
            == Why(WhyKind.NO_ENTRY)
    finally:
        c.close()


def test_items_replay_by_content_and_a_new_item_gets_a_key(case):
    r = case.replayer(up=[1, 2, 4])
    i = case.i("each")
    assert r.released(i) is None  # its source changed: the task itself runs
    keys = r.items(i)
    key, known = keys.lookup(0, 1)
    assert key is not None and known is not None
    assert known.cached and known.value == 10 and known.item == 1
    key, new = keys.lookup(2, 4)
    assert key is not None and new is None
    assert keys.store


class _Job:
    def __init__(self, task: int) -> None:
        self.task = task

    def label(self) -> str:
        return "task 'up'"


class _Outcome:
    """The fields of a runner's outcome the Replayer reads."""

    def __init__(self, task: int, journaled: bool = False, digest: str | None = None) -> None:
        self.job = _Job(task)
        self.journaled = journaled
        self.digest = digest


def test_a_journal_write_that_raises_is_a_warning_not_an_error(case):
    def record(outcome: object) -> None:
        raise OSError("disk full")

    r = case.replayer(record=record)
    r.succeeded(_Outcome(case.i("up")))
    assert case.warnings[-1] == "task 'up': could not journal its result (disk full)"


def test_a_task_that_ran_is_journaled_and_its_workers_digest_keys_its_dependents(case):
    r = case.replayer()
    up = case.i("up")
    worker_digest = r.digest([1, 2, 3])
    # the value in results is not digested again: the digest the worker journaled counts
    r.results[up] = StepResult("up", S, "not the value the digest was taken of")
    ran = _Outcome(up, journaled=True, digest=worker_digest)
    r.succeeded(ran)
    assert case.recorded == [ran]
    done = r.released(case.i("down"))
    assert done is not None and done.cached and done.value == 6


def test_a_replayed_value_that_cannot_be_loaded_fails_its_dependent_not_the_run(case, tmp_path):
    r = case.replayer(force={"uses"})  # it runs, so it needs the value of big
    big = r.released(case.i("big"))
    assert big is not None and big.cached and not big.value_loaded  # not read yet
    r.results[case.i("big")] = big
    stored = [p for p in tmp_path.rglob("*.pkl")]
    assert len(stored) == 1
    stored[0].unlink()
    failed = r.released(case.i("uses"))
    assert failed is not None and failed.state is StepState.FAILED
    assert failed.reason == ("dependency 'big': its journaled value could not be loaded; "
                             "the next run computes it again")


@settings(max_examples=40, deadline=None)
@example(up=[1, 2, 3])
@example(up=(1, 2, 3))
@example(up=[1, 2, 3, 0])
@given(up=st.lists(st.integers(-3, 3), max_size=4)
       | st.lists(st.integers(-3, 3), max_size=4).map(tuple))
def test_never_replays_a_value_computed_from_another_dependency_value(shared_case, up):
    """``down`` replays exactly when ``up`` has the value it was journaled from: the
    list [1, 2, 3] (a tuple of the same items is another value)."""
    r = shared_case.replayer(up=up)
    r.results[shared_case.i("up")] = StepResult("up", S, up)
    done = r.released(shared_case.i("down"))
    if type(up) is list and up == [1, 2, 3]:
        assert done is not None and done.cached and done.value == 6
    else:
        assert done is None
        assert str(r.why[shared_case.i("down")]) == "'up' returned a different value"
