"""A body that calls os.fork() and whose child returns (or raises) instead of calling
os._exit: the child exits at once when it comes back into flowing's code, instead of
running on as a copy of the run's worker."""

import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from flowing import Flow, StepState, task

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _child_outcome(pid):
    """The child's exit code, or "still running" (then killed) after 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "still running"


def forks(how):
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        if how == "raise":
            raise ValueError("raised in the child")
        return "the child's value"  # back into flowing's code, in the child
    assert os.getpid() == parent
    return _child_outcome(child)


@task
def forks_and_returns():
    return forks("return")


@task
def forks_and_raises():
    return forks("raise")


@pytest.mark.parametrize("timeout_s", [None, 30])
@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_forked_child_that_returns_exits_at_once(how, timeout_s):
    body = task(forks, name="forks", timeout_s=timeout_s)
    flow = Flow(body, log=False, inputs={"how": how})
    flow.run()  # not from the child: it never gets back to here
    r = flow.results["forks"]
    assert r.state is StepState.SUCCEEDED, r
    assert r.value == (0 if how == "return" else 1)


def test_a_forked_child_of_a_remote_body_exits_at_once():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
        res = Flow(forks_and_returns, forks_and_raises, executor=ex, max_workers=1,
                   log=False, fail_fast=False).run()
        assert res["forks_and_returns"].value == 0
        assert res["forks_and_raises"].value == 1
        assert ex.submit(pow, 2, 3).result(timeout=20) == 8  # the pool is intact


@pytest.mark.skipif(sys.version_info < (3, 9), reason="waitstatus_to_exitcode")
def test_an_async_body_whose_child_returns():
    async def body():
        return forks("return")

    flow = Flow(task(body, name="async_forks"), log=False)
    flow.run()
    assert flow.results["async_forks"].value == 0
