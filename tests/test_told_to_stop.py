"""A body that stopped because it was told to (fail_fast, Ctrl-C, its deadline) is never
journaled, whatever it returns, and nothing reaches the journal once run() has returned
or raised. Each case: two runs in fresh processes over one journal; run 2 computes the
truth."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flowing import Cancelled, Flow, StepState, current, task

FAIL_FAST = textwrap.dedent("""
    import json, os, sys, time
    from flowing import Flow, current, task

    @task
    def flaky():
        time.sleep(0.5)
        if os.environ.get("BROKEN") == "1":
            raise ConnectionError("transient")
        return 0

    @task
    def count():                 # polls cancelled(), as the docs recommend
        n = 0
        for _ in range(100):
            if current().cancelled():
                break
            time.sleep(0.02)
            n += 1
        return n

    @task
    def steady():                # never asks: finishes its whole work
        time.sleep(1.5)
        return 100

    @task(depends_on=[flaky, count, steady])
    def total(flaky, count, steady):
        return count + steady

    flow = Flow(total, journal_path=sys.argv[1], log=False)
    flow.run()
    print("RESULT " + json.dumps({n: [r.state.value, r.value if not isinstance(r.value, Exception)
                                      else None, r.cached, type(r.error).__name__, r.reason]
                                  for n, r in flow.results.items()}), flush=True)
""")


def _result(proc_out):
    line = next(line for line in proc_out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _run(script, args, env, timeout=60):
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return _result(p.stdout)


def test_fail_fast_partial_value_is_never_replayed(tmp_path, repo_env):
    journal = str(tmp_path / "run.jsonl")
    first = _run(FAIL_FAST, [journal], {**repo_env, "BROKEN": "1"})
    assert first["flaky"][0] == "failed"
    # heard the stop and returned early: FAILED (Cancelled), its partial value kept
    state, partial, _, error, reason = first["count"]
    assert state == "failed" and error == "Cancelled" and 0 < partial < 100, first
    assert "fail_fast" in reason
    # never asked: its value is whole and shown, but not journaled either
    assert first["steady"][:3] == ["succeeded", 100, False], first
    assert "not journaled" in first["steady"][4]
    assert first["total"][0] == "skipped"

    second = _run(FAIL_FAST, [journal], {**repo_env, "BROKEN": "0"})
    assert second["count"][:3] == ["succeeded", 100, False], second
    assert second["steady"][:3] == ["succeeded", 100, False], second
    assert second["total"][:2] == ["succeeded", 200], second


CTRL_C = textwrap.dedent("""
    import json, sys, time
    from flowing import Flow, current, task

    @task
    def count():
        n = 0
        for _ in range(100):
            if sys.argv[2] == "interrupt":
                if current().cancelled():
                    time.sleep(1.0)      # returns its partial count after run() raised
                    return n
                sys.stdout.write("counting\\n"); sys.stdout.flush()
                time.sleep(0.05)
                n += 0 if n >= 5 else 1  # stays partial however long it waits
                continue
            n += 1
        return n

    flow = Flow(count, journal_path=sys.argv[1], log=False)
    try:
        flow.run()
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        time.sleep(2.0)  # the worker returns meanwhile and must not write
    r = flow.results.get("count")
    print("RESULT " + json.dumps(None if r is None else [r.state.value, r.value, r.cached]),
          flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_late_return_is_never_journaled(tmp_path, repo_env):
    journal = str(tmp_path / "run.jsonl")
    proc = subprocess.Popen([sys.executable, "-u", "-c", CTRL_C, journal, "interrupt"],
                            env=repo_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "counting"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "INTERRUPTED" in out.split(), (out, err)
    assert _result(out) is None  # still running when run() raised: no result
    second = _run(CTRL_C, [journal, "finish"], repo_env)
    assert second == ["succeeded", 100, False]


def test_told_to_stop_outcomes_in_process():
    """The verdict, in one process: a body that heard the stop fails with Cancelled and
    keeps its value; a timed-out body that returns late changes nothing."""

    @task
    def boom():
        time.sleep(0.1)
        raise ValueError("boom")

    @task
    def partial():
        n = 0
        while not current().cancelled() and n < 500:
            time.sleep(0.01)
            n += 1
        return n

    flow = Flow(boom, partial, log=False)
    flow.run()
    r = flow.results["partial"]
    assert r.state is StepState.FAILED and isinstance(r.error, Cancelled)
    assert 0 < r.value < 500 and r.attempts == 1
    assert "told to" in str(r.error) and "'partial'" in str(r.error)
    with pytest.raises(RuntimeError, match="failed"):
        flow.value(partial)
