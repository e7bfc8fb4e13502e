"""Every exception class a user may catch is importable from ``flowing`` and is the
class flowing actually raises (SPEC §8)."""

import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import flowing
from flowing import (
    Cancelled,
    CannotRun,
    CannotShip,
    Flow,
    ItemsFailed,
    JournalError,
    PoolBroken,
    StepState,
    WorkerLost,
    current,
    task,
)

NAMES = ["CycleError", "ItemsFailed", "JournalError", "CannotShip", "WorkerLost", "PoolBroken",
         "CannotRun", "Cancelled"]


def test_each_is_exported_and_an_exception():
    for name in NAMES:
        cls = getattr(flowing, name)
        assert isinstance(cls, type) and issubclass(cls, Exception), name
        assert name in flowing.__all__


def test_import_flowing_stays_lazy():
    code = ("import sys, flowing; from flowing import JournalError; "
            "print(sorted(m for m in ('flowing.keys.stepkey', 'flowing.keys.digest', 'numpy', 'pandas', "
            "'distributed', 'concurrent.futures') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(
                             os.path.dirname(os.path.abspath(flowing.__file__)))})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_items_failed_and_cancelled_are_the_classes_raised():
    @task
    def src():
        return [1, 0]

    @task(depends_on=[src], for_each="src")
    def inv(src):
        return 1 / src

    r = Flow(inv, log=False, fail_fast=False).run()["inv"]
    assert type(r.error) is ItemsFailed

    @task
    def boom():
        time.sleep(0.2)  # polls is running by then
        raise ValueError("boom")

    @task
    def polls():
        while True:
            time.sleep(0.01)
            current().raise_if_cancelled()

    r = Flow(boom, polls, log=False).run()["polls"]
    assert type(r.error) is Cancelled


def test_journal_error_is_the_class_raised(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not a journal\n")

    @task
    def t():
        return 1

    with pytest.raises(JournalError):
        Flow(t, journal_path=path, log=False)


@task
def unpicklable_value():
    import threading

    return threading.Lock()


def test_cannot_ship_pool_broken_and_cannot_run_are_the_classes_raised():
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        r = Flow(unpicklable_value, executor=ex, log=False).run()["unpicklable_value"]
        assert type(r.error) is CannotShip
    # a shut-down executor refuses the job
    r = Flow(unpicklable_value, executor=ex, log=False).run()["unpicklable_value"]
    assert type(r.error) is CannotRun and r.state is StepState.FAILED
    assert issubclass(PoolBroken, WorkerLost)  # raised for a dead pool worker:
    # tests/test_remote_process.py::test_a_killed_worker_fails_its_task_and_nothing_hangs
