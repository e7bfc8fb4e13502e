"""One boundary for BaseException raised by user code: a KeyboardInterrupt raised by a
value's own code while flowing digests it (a dependency value, an input, a closure
value, an item) and a SystemExit from an on_event hook never escape run()."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ListHandler

from flowing import Flow, StepState, task


class InterruptingValue:
    """A value whose pickling hook raises KeyboardInterrupt (flowing digests by it)."""

    def __init__(self, n=1):
        self.n = n

    def __reduce_ex__(self, protocol):
        raise KeyboardInterrupt("from __reduce_ex__")


class ExitingValue(InterruptingValue):
    def __reduce_ex__(self, protocol):
        raise SystemExit(3)


def _run(flow):
    try:
        return flow.run()
    except BaseException as exc:  # never let it reach pytest itself
        pytest.fail(f"run() raised {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("cls", [InterruptingValue, ExitingValue])
def test_dependency_value_raising_while_digested(tmp_path, cls):
    @task
    def make():
        return cls()

    @task(depends_on=[make])
    def use(make):
        return make.n + 1

    flow = Flow(use, journal_path=tmp_path / "j.jsonl", log=False)
    results = _run(flow)
    assert results["use"].state is StepState.SUCCEEDED and results["use"].value == 2
    assert _run(flow)["use"].cached is False  # no stable content: never replayed


@pytest.mark.parametrize("cls", [InterruptingValue, ExitingValue])
def test_input_and_closure_values_raising_while_digested(tmp_path, cls):
    captured = cls(5)

    @task
    def from_input(x):
        return x.n

    @task
    def from_closure():
        return captured.n

    handler = ListHandler()
    log = logging.getLogger("test-base-exceptions")
    log.addHandler(handler)
    log.propagate = False
    flow = Flow(from_input, from_closure, journal_path=tmp_path / "j.jsonl", log=log,
                inputs={"x": cls(4)})
    results = _run(flow)
    assert results["from_input"].value == 4 and results["from_closure"].value == 5
    assert any("not cached" in m for m in handler.messages), handler.messages


def test_for_each_item_raising_while_digested(tmp_path):
    @task
    def src():
        return [InterruptingValue(1), InterruptingValue(2)]

    @task(depends_on=[src], for_each="src")
    def each(src):
        return src.n

    flow = Flow(each, journal_path=tmp_path / "j.jsonl", log=False)
    assert _run(flow)["each"].value == [1, 2]


def test_system_exit_from_on_event_is_logged_once_and_ignored():
    calls = []

    def hook(event):
        calls.append(type(event).__name__)
        raise SystemExit("bye")

    @task
    def a():
        return 1

    @task(depends_on=[a])
    def b(a):
        return a + 1

    handler = ListHandler()
    log = logging.getLogger("test-base-exceptions-hook")
    log.addHandler(handler)
    log.propagate = False
    flow = Flow(b, log=log, on_event=hook)
    assert _run(flow)["b"].value == 2
    assert calls[0] == "FlowStarted" and calls[-1] == "FlowFinished"
    hook_lines = [m for m in handler.messages if "on_event" in m]
    assert len(hook_lines) == 1 and "SystemExit" in hook_lines[0], handler.messages


SLOW_KEY = """
import sys, time
from flowing import Flow, task

class SlowToDigest:
    def __reduce_ex__(self, protocol):
        sys.stdout.write("keying\\n"); sys.stdout.flush()
        time.sleep(30)
        return (SlowToDigest, ())

slow = SlowToDigest()

@task
def t():
    return repr(slow)

try:
    Flow(t, journal_path=sys.argv[1], log=False).run()
    print("NOT INTERRUPTED", flush=True)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_real_ctrl_c_while_keys_are_computed_still_interrupts(tmp_path, repo_env):
    """The containment never swallows the terminal's Ctrl-C, even in user code that
    flowing runs while computing keys (before the scheduler loop)."""
    proc = subprocess.Popen([sys.executable, "-u", "-c", SLOW_KEY, str(tmp_path / "j.jsonl")],
                            env=repo_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "keying"
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=25)  # the digest sleeps 30 s
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert out.split() == ["INTERRUPTED"], (out, err)
    assert took < 5, took


def test_a_logging_handler_raising_system_exit_never_ends_the_run():
    class Exiting(logging.Handler):
        def emit(self, record):
            raise SystemExit("handler")

    log = logging.getLogger("test-base-exceptions-handler")
    log.addHandler(Exiting())
    log.setLevel(logging.DEBUG)
    log.propagate = False

    @task
    def a():
        return 1

    @task(depends_on=[a])
    def b(a):
        raise ValueError("logged as a failure")

    results = _run(Flow(b, log=log))
    assert results["a"].value == 1 and results["b"].state is StepState.FAILED
