"""Ctrl-C during run(): KeyboardInterrupt comes back quickly, finished results stay,
and resume() continues. Runs in a child process that receives a real SIGINT."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    from flowing import Flow, task

    release = threading.Event()
    calls = {"fast": 0, "after_fast": 0, "slow": 0, "after_slow": 0, "queued": 0,
             "waiting": 0}

    @task
    def fast():
        calls["fast"] += 1
        return 1

    @task(depends_on=[fast])
    def after_fast(fast):
        calls["after_fast"] += 1
        sys.stdout.write("after_fast done\\n"); sys.stdout.flush()  # one write: no interleaving
        return fast + 1

    @task
    def slow():
        calls["slow"] += 1
        sys.stdout.write("slow started\\n"); sys.stdout.flush()  # one write: no interleaving
        while not release.is_set():
            time.sleep(0.02)
        return "slow"

    @task(depends_on=[slow])
    def after_slow(slow):
        calls["after_slow"] += 1
        return slow + "!"

    # still running (blocked) when the interrupt comes: it must have no result
    @task(depends_on=[after_fast])
    def queued(after_fast):
        calls["queued"] += 1
        while not release.is_set():
            time.sleep(0.02)
        return "queued"

    # both workers are blocked (slow; fast -> after_fast -> queued): never starts
    @task
    def waiting():
        calls["waiting"] += 1
        return "waited"

    executor = None
    if sys.argv[1] == "executor":
        from concurrent.futures import ThreadPoolExecutor
        executor = ThreadPoolExecutor(2)
    flow = Flow(after_slow, queued, waiting, max_workers=2, log=False, executor=executor)

    def states():
        return {n: r.state.value for n, r in flow.results.items()}

    try:
        flow.run()
        print("NOT INTERRUPTED", flush=True)
        sys.exit(3)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    print("AFTER " + json.dumps({"states": states(), "calls": dict(calls),
                                 "ok": flow.ok}), flush=True)
    release.set()
    flow.resume()
    print("RESUMED " + json.dumps({"states": states(), "calls": dict(calls),
                                   "values": {n: r.value for n, r in flow.results.items()},
                                   "ok": flow.ok}), flush=True)
""")


_lines = {}  # proc -> queue of its stdout lines (None at EOF), filled by a reader thread


def _read_until(proc, marker, seen, timeout=30):
    """The next line starting with ``marker``; fails (never hangs) after ``timeout`` s."""
    import queue
    import threading

    if proc not in _lines:
        q = _lines[proc] = queue.Queue()

        def pump():
            for line in proc.stdout:
                q.put(line)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = _lines[proc].get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {marker!r} line within {timeout}s: {seen}") from None
        if line is None:
            raise AssertionError(f"child ended before {marker!r}: {seen}\n{proc.stderr.read()}")
        seen.append(line.rstrip("\n"))
        if line.startswith(marker):
            return line


@pytest.mark.parametrize("pool", ["own-workers", "executor"])
def test_ctrl_c_stops_the_run_keeps_finished_results_and_resume_continues(pool, repo_env):
    proc = subprocess.Popen([sys.executable, "-u", "-c", SCRIPT, pool], env=repo_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen = []
    try:
        # wait for `slow` to be running and `after_fast` to have finished
        pending = {"slow started", "after_fast done"}
        while pending:
            line = _read_until(proc, "", seen)
            pending.discard(line.strip())
        time.sleep(0.3)  # let the scheduler record after_fast's result
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _read_until(proc, "INTERRUPTED", seen)
        # generous bound: the spec promises about a second, without waiting for `slow`
        assert time.monotonic() - sent < 5, "KeyboardInterrupt took too long to come back"
        after = json.loads(_read_until(proc, "AFTER ", seen)[len("AFTER "):])
        resumed = json.loads(_read_until(proc, "RESUMED ", seen)[len("RESUMED "):])
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, (seen, proc.stderr.read())

    # finished results kept; running / never-started tasks have no result
    assert after["states"].get("fast") == "succeeded"
    assert after["states"].get("after_fast") == "succeeded"
    assert "slow" not in after["states"]
    assert "after_slow" not in after["states"]
    assert "queued" not in after["states"], after
    assert "waiting" not in after["states"], after
    assert after["calls"]["waiting"] == 0
    assert after["ok"] is False

    # resume continues: succeeded tasks are not run again
    assert resumed["states"] == {"fast": "succeeded", "after_fast": "succeeded",
                                 "slow": "succeeded", "after_slow": "succeeded",
                                 "queued": "succeeded", "waiting": "succeeded"}
    assert resumed["calls"]["fast"] == 1 and resumed["calls"]["after_fast"] == 1
    assert resumed["calls"]["after_slow"] == 1 and resumed["calls"]["waiting"] == 1
    assert resumed["values"]["after_slow"] == "slow!"
    assert resumed["ok"] is True


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    from flowing import Flow, task

    release = threading.Event()
    broken = [True]
    calls = {"first": 0, "second": 0, "third": 0}

    @task
    def first():
        calls["first"] += 1
        return 1

    @task(depends_on=[first])
    def second(first):
        calls["second"] += 1
        if broken[0]:
            raise ValueError("not yet")
        sys.stdout.write("second running\\n"); sys.stdout.flush()  # one write: no interleaving
        while not release.is_set():
            time.sleep(0.02)
        return first + 1

    @task(depends_on=[second])
    def third(second):
        calls["third"] += 1
        return second + 1

    flow = Flow(third, log=False)
    flow.run()
    broken[0] = False
    try:
        flow.resume()
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    states = {n: r.state.value for n, r in flow.results.items()}
    print("AFTER " + json.dumps(states), flush=True)
    release.set()
    flow.resume()
    print("RESUMED " + json.dumps({"calls": calls, "value": flow.value(third)}), flush=True)
""")


def test_ctrl_c_during_resume(repo_env):
    proc = subprocess.Popen([sys.executable, "-u", "-c", RESUME_SCRIPT], env=repo_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen = []
    try:
        _read_until(proc, "second running", seen)
        time.sleep(0.2)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _read_until(proc, "INTERRUPTED", seen)
        assert time.monotonic() - sent < 5, "KeyboardInterrupt took too long to come back"
        after = json.loads(_read_until(proc, "AFTER ", seen)[len("AFTER "):])
        resumed = json.loads(_read_until(proc, "RESUMED ", seen)[len("RESUMED "):])
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, (seen, proc.stderr.read())
    # the kept success of the first run survives the interrupted resume
    assert after == {"first": "succeeded"}, after
    assert resumed == {"calls": {"first": 1, "second": 3, "third": 1}, "value": 3}
