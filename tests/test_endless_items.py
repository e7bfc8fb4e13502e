"""An endless or huge for_each source never hangs run(): listing its items is part of the
attempt (timeout_s, Ctrl-C, fail_fast) and bounded by ``attempt.MAX_ITEMS``."""

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from flowing import Cancelled, Flow, StepState, task
from flowing.runners import attempt as A


def listing(make_source, *others, timeout_s=None):
    """Run ``each`` over ``make_source()`` (with ``others`` beside it); its result."""

    @task
    def src():
        return make_source()

    @task(depends_on=[src], for_each="src", timeout_s=timeout_s)
    def each(src):
        return src

    flow = Flow(each, *others, log=False)
    flow.run()
    return flow.results["each"]


def test_endless_source_with_timeout_fails_with_timeout_error(monkeypatch):
    monkeypatch.setattr(A, "MAX_ITEMS", 10**12)  # only the deadline can end this listing
    r = listing(lambda: itertools.repeat(0), timeout_s=0.3)  # endless, listed at C speed
    assert r.state is StepState.FAILED and isinstance(r.error, TimeoutError)
    assert "timeout_s=0.3" in str(r.error) and "'each'" in str(r.error)


def test_the_reported_case_returns():
    """``itertools.count()`` with timeout_s=1, as reported: whichever comes first on this
    machine, the deadline or the ceiling, the task fails and run() returns."""
    r = listing(itertools.count, timeout_s=1)
    assert r.state is StepState.FAILED and isinstance(r.error, (TimeoutError, ValueError))


def test_endless_source_without_timeout_fails_at_the_ceiling(monkeypatch):
    monkeypatch.setattr(A, "MAX_ITEMS", 5_000)
    r = listing(lambda: (i for i in itertools.count()))
    assert r.state is StepState.FAILED and isinstance(r.error, ValueError)
    assert "5,000" in str(r.error) and "batches" in str(r.error)
    assert r.items is None  # no item ran


def test_a_list_over_the_ceiling_fails_and_one_at_it_runs(monkeypatch):
    monkeypatch.setattr(A, "MAX_ITEMS", 3)
    assert listing(lambda: [0, 1, 2]).value == [0, 1, 2]
    r = listing(lambda: [0, 1, 2, 3])
    assert r.state is StepState.FAILED and "more than 3 items" in r.reason


def test_source_blocked_in_next_is_failed_at_its_deadline():
    never = threading.Event()

    def blocked():
        yield 1
        never.wait()  # a daemon worker thread stays here: abandoned, as a timed-out body
        yield 2

    r = listing(blocked, timeout_s=0.5)
    assert r.state is StepState.FAILED and isinstance(r.error, TimeoutError)
    never.set()


def test_fail_fast_stops_the_listing(monkeypatch):
    monkeypatch.setattr(A, "MAX_ITEMS", 10**12)  # only fail_fast can end this listing

    @task
    def boom():
        time.sleep(0.2)
        raise ValueError("boom")

    r = listing(lambda: itertools.repeat(0), boom)
    assert r.state is StepState.FAILED and isinstance(r.error, Cancelled), r
    assert "fail_fast" in str(r.error)


SCRIPT = textwrap.dedent("""
    import itertools, sys
    from flowing import Flow, task
    import flowing.runners.attempt
    flowing.runners.attempt.MAX_ITEMS = 10**12  # the listing must be stopped by Ctrl-C alone

    @task
    def src():
        sys.stdout.write("listing\\n"); sys.stdout.flush()
        return itertools.repeat(0)   # endless, and cheap in memory

    @task(depends_on=[src], for_each="src")
    def each(src):
        return src

    try:
        Flow(each, log=False).run()
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_listing(repo_env):
    proc = subprocess.Popen([sys.executable, "-u", "-c", SCRIPT], env=repo_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "listing"
        time.sleep(0.3)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        lines = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(20)  # a listing that ignores Ctrl-C must not hang the test
        took = time.monotonic() - sent
        line = lines[0].strip() if lines else "(nothing)"
        if lines:
            proc.wait(timeout=30)  # the abandoned listing stops too: the process exits
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert line == "INTERRUPTED", proc.stderr.read()
    # generous bound: the spec promises about a second
    assert took < 5, took
