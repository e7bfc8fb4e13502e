"""Bodies on process pools (SPEC §7b): a real ProcessPoolExecutor in each start
method, and loky. Scheduling, gates, retries, Limit and the journal stay in the
flow's process; only the body call travels. Every wait is bounded; child
scripts run in their own process group, killed on failure.

The tasks below are module-level: under spawn and forkserver the workers
import this module by name and find each task in it (``TaskRef``).
"""

import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from flowing import Flow, Limit, StepState, current, task
from flowing.errors import CannotShip, PoolBroken, WorkerLost

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX start methods")

METHODS = ["fork", "spawn", "forkserver"]
FLOW_PID = os.getpid()


@pytest.fixture(scope="module")
def pools():
    """One ProcessPoolExecutor(2) per start method, made on first use."""
    made = {}

    def get(method):
        if method not in made:
            made[method] = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))
        return made[method]

    yield get
    for ex in made.values():
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def spawn_pool(pools):
    return pools("spawn")


def healthy(ex):
    """The pool still runs work (a timed-out or failed body left it usable)."""
    assert ex.submit(pow, 2, 5).result(timeout=20) == 32


# ----- module-level tasks (found by name in the workers) --------------------------


@task
def where():
    c = current()
    return {"pid": os.getpid(), "task": c.task, "attempt": c.attempt,
            "max_attempts": c.max_attempts, "item": c.item_index}


@task(depends_on=[where])
def doubled(where):
    return {"pid": os.getpid(), "from": where["pid"], "task": current().task}


@task
def numbers():
    return [3, 1, 4, 1, 5]


@task(depends_on=[numbers], for_each=numbers, retry=1, retry_backoff_base_ms=0)
def squared(numbers):
    c = current()
    if c.item_index == 2 and c.attempt == 1:
        raise ConnectionError("item 2 fails once")
    return {"value": numbers * numbers, "index": c.item_index, "item": c.item,
            "attempt": c.attempt, "pid": os.getpid()}


class Throttled(Exception):
    """Carries the server's wait hint, as HTTP 429 clients do."""

    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


@task(retry=2, retry_backoff_base_ms=1, retry_max_backoff_ms=1, retry_on=Throttled)
def throttled(log_path):
    with open(log_path, "a") as f:
        f.write(f"{time.time()}\n")
    if current().attempt < 3:
        raise Throttled("slow down", retry_after=0.3)
    return current().attempt


@task(retry=3, retry_backoff_base_ms=1, retry_on=ConnectionError)
def wrong_kind():
    raise KeyError("not retried: retry_on is ConnectionError")


@task(timeout_s=0.5)
def sleeps_30s():
    time.sleep(30)


@task(timeout_s=0.3, retry=1, retry_backoff_base_ms=0, retry_on=TimeoutError)
def slow_then_fast():
    if current().attempt == 1:
        time.sleep(30)
    return "fast"


@task(timeout_s=0.5)
def cooperative(marker):
    while not current().cancelled():
        time.sleep(0.01)
    with open(marker, "w") as f:
        f.write(f"stopped after {current().remaining_s()}")


@task
async def coroutine_body():
    import asyncio

    await asyncio.sleep(0.01)
    c = current()
    return {"pid": os.getpid(), "task": c.task}


@task(timeout_s=0.3)
async def coroutine_overruns(marker):
    import asyncio

    try:
        await asyncio.sleep(30)
    finally:  # runs: the coroutine is cancelled for real in the worker
        with open(marker, "w") as f:
            f.write("cancelled")


GATE_PIDS = []  # appended by gates: they run in the flow's process


def _note_pid(*args, **kwargs):
    GATE_PIDS.append(os.getpid())


def _never(**deps):
    _note_pid()
    return False


def _reject(**deps):
    _note_pid()
    raise ValueError("bad input")


def _accept_second(value):
    _note_pid()
    return value >= 2


@task
def source():
    return 1


@task(depends_on=[source], when=_never)
def gated_off(source):
    return "never"


@task(depends_on=[gated_off])
def after_gated_off(gated_off):
    return "never"


@task(depends_on=[source], validate=_reject)
def invalid(source):
    return "never"


@task(depends_on=[source], retry=2, retry_backoff_base_ms=0, retry_until=_accept_second)
def until_second(source):
    return current().attempt


SHARED = Limit(max_concurrency=2)


@task
def batch():
    return list(range(6))


@task(depends_on=[batch], for_each=batch, limit=SHARED)
def limited_a(batch):
    start = time.time()
    time.sleep(0.15)
    return (start, time.time())


@task(depends_on=[batch], for_each=batch, limit=SHARED)
def limited_b(batch):
    start = time.time()
    time.sleep(0.15)
    return (start, time.time())


@task
def makes_generator():
    return (i for i in range(3))


@task
def takes_lock(lock):
    return "never"


class Unreducible:
    def __reduce__(self):
        raise RuntimeError("hostile __reduce__")


class Unloadable:
    """Pickles fine, but cannot be rebuilt on the other side."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def _refuse_to_load():
    raise RuntimeError("cannot rebuild this here")


@task
def returns_unloadable():
    return Unloadable()


class ExitsOnLoad:
    """Pickles fine; rebuilding it raises SystemExit (in the flow's process)."""

    def __reduce__(self):
        return (_exit_on_load, ())


def _exit_on_load():
    raise SystemExit("exit while unpickling")


@task
def returns_exits_on_load():
    return ExitsOnLoad()


class NeedsTwoArgs(Exception):
    """Pickles, but unpickling calls NeedsTwoArgs(message) and fails."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


class CarriesALock(Exception):
    def __init__(self):
        super().__init__("has a lock")
        self.lock = threading.Lock()


@task
def raises_carries_a_lock():
    raise CarriesALock()


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("hostile __str__")


@task
def raises_needs_two_args():
    raise NeedsTwoArgs("x", "y")


@task
def raises_str_raises():
    raise StrRaises()


@task
def kills_its_worker():
    os.kill(os.getpid(), signal.SIGKILL)


@task
def slow_bystander():
    time.sleep(0.5)
    return "done"


# ----- results, pids, current() --------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_graph_runs_in_worker_processes(method, pools):
    ex = pools(method)
    res = Flow(doubled, executor=ex, log=False).run()
    assert res["where"].ok and res["doubled"].ok, res
    w, d = res["where"].value, res["doubled"].value
    assert w["pid"] != FLOW_PID and d["pid"] != FLOW_PID
    assert d["from"] == w["pid"]
    assert (w["task"], w["attempt"], w["max_attempts"], w["item"]) == ("where", 1, 1, None)
    assert d["task"] == "doubled"
    healthy(ex)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_for_each_items_and_current_in_workers(method, pools):
    res = Flow(squared, executor=pools(method), log=False).run()
    r = res["squared"]
    assert r.ok, r.error
    assert [v["value"] for v in r.value] == [9, 1, 16, 1, 25]
    assert [(v["index"], v["item"]) for v in r.value] == list(enumerate([3, 1, 4, 1, 5]))
    assert [v["attempt"] for v in r.value] == [1, 1, 2, 1, 1]  # item 2 retried on its own
    assert all(v["pid"] != FLOW_PID for v in r.value)
    assert r.attempts == 2 and [i.attempts for i in r.items] == [1, 1, 2, 1, 1]


def test_coroutine_bodies_run_with_asyncio_in_the_worker(spawn_pool):
    r = Flow(coroutine_body, executor=spawn_pool, log=False).run()["coroutine_body"]
    assert r.ok, r.error
    assert r.value["pid"] != FLOW_PID and r.value["task"] == "coroutine_body"


# ----- retries, retry_after, errors crossing processes ----------------------------


def test_retry_after_is_honoured_between_remote_attempts(spawn_pool, tmp_path):
    log_path = tmp_path / "attempts.txt"
    r = Flow(throttled, executor=spawn_pool, log=False,
             inputs={"log_path": str(log_path)}).run()["throttled"]
    assert r.ok and r.value == 3 and r.attempts == 3, r.error
    times = [float(line) for line in log_path.read_text().split()]
    assert len(times) == 3
    # the backoff is 1 ms; the server's hint (0.3 s) wins
    assert all(b - a >= 0.29 for a, b in zip(times, times[1:])), times


def test_retry_on_sees_the_bodys_own_exception_class(spawn_pool):
    r = Flow(wrong_kind, executor=spawn_pool, log=False).run()["wrong_kind"]
    assert r.state is StepState.FAILED and r.attempts == 1
    assert isinstance(r.error, KeyError)
    assert "in wrong_kind" in r.traceback  # the worker's traceback travels with it


def test_exceptions_that_cannot_travel_back_are_described(spawn_pool):
    res = Flow(raises_needs_two_args, raises_str_raises, raises_carries_a_lock,
               executor=spawn_pool, log=False, fail_fast=False).run()
    a = res["raises_needs_two_args"]
    assert a.state is StepState.FAILED
    assert isinstance(a.error, NeedsTwoArgs) and str(a.error) == "x/y"  # rebuilt by state
    c = res["raises_carries_a_lock"]
    assert c.state is StepState.FAILED and isinstance(c.error, RuntimeError)
    assert "CarriesALock: has a lock" in str(c.error) and "could not be sent back" in str(c.error)
    b = res["raises_str_raises"]
    assert b.state is StepState.FAILED and isinstance(b.error, StrRaises)
    healthy(spawn_pool)  # the pool was not broken by an exception it could not rebuild


# ----- timeouts ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_body_sleeping_30s_times_out_and_frees_its_worker(method, pools):
    ex = pools(method)
    t0 = time.monotonic()
    r = Flow(sleeps_30s, executor=ex, log=False).run()["sleeps_30s"]
    elapsed = time.monotonic() - t0
    assert r.state is StepState.FAILED and isinstance(r.error, TimeoutError)
    assert "sleeps_30s" in str(r.error) and "0.5s" in str(r.error)
    assert elapsed < 30, elapsed  # the run did not wait for the body (30 s)
    # the worker gave up on the body at its deadline: both workers take work again
    futures = [ex.submit(time.sleep, 0.2) for _ in range(2)]
    for f in futures:
        f.result(timeout=10)


def test_a_timeout_is_retried_when_retry_on_allows(spawn_pool):
    r = Flow(slow_then_fast, executor=spawn_pool, log=False).run()["slow_then_fast"]
    assert r.ok and r.value == "fast" and r.attempts == 2, r.error


def test_a_cooperative_body_sees_cancelled_at_its_deadline(spawn_pool, tmp_path):
    marker = tmp_path / "stopped"
    r = Flow(cooperative, executor=spawn_pool, log=False,
             inputs={"marker": str(marker)}).run()["cooperative"]
    assert isinstance(r.error, TimeoutError)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the body never saw current().cancelled() turn True"


def test_a_coroutine_is_cancelled_for_real_in_the_worker(spawn_pool, tmp_path):
    marker = tmp_path / "cancelled"
    r = Flow(coroutine_overruns, executor=spawn_pool, log=False,
             inputs={"marker": str(marker)}).run()["coroutine_overruns"]
    assert isinstance(r.error, TimeoutError)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == "cancelled"


# ----- Limit across remote bodies ---------------------------------------------------


def peak_overlap(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_a_shared_limit_bounds_remote_bodies_in_flight():
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as ex:
        res = Flow(limited_a, limited_b, executor=ex, max_workers=8, log=False).run()
    intervals = res["limited_a"].value + res["limited_b"].value
    assert res["limited_a"].ok and res["limited_b"].ok and len(intervals) == 12
    assert peak_overlap(intervals) <= 2, intervals


# ----- gates stay in the flow's process, with their semantics -------------------------


def test_gates_run_in_the_flow_process_with_the_same_semantics(spawn_pool):
    GATE_PIDS.clear()
    res = Flow(after_gated_off, invalid, until_second, executor=spawn_pool, log=False,
               fail_fast=False).run()
    assert res["gated_off"].state is StepState.SKIPPED
    assert res["gated_off"].reason.startswith("when() returned")
    assert res["after_gated_off"].state is StepState.SKIPPED
    assert res["invalid"].state is StepState.FAILED and res["invalid"].attempts == 0
    assert "bad input" in str(res["invalid"].error)
    assert res["until_second"].value == 2 and res["until_second"].attempts == 2
    assert GATE_PIDS and set(GATE_PIDS) == {FLOW_PID}


@task
def boom(marker):
    deadline = time.time() + 20
    while not os.path.exists(marker) and time.time() < deadline:
        time.sleep(0.01)  # fail only once slow_ok is running
    raise ValueError("boom")


@task
def slow_ok(marker):
    open(marker, "w").close()
    time.sleep(0.3)
    return os.getpid()


@task(depends_on=[slow_ok])
def after_slow(slow_ok):
    return "never: fail_fast stopped the run"


@task(depends_on=[slow_ok], detached=True)
def side_effect(slow_ok):
    return os.getpid()


def test_fail_fast_and_detached_tasks_behave_as_on_threads(spawn_pool, tmp_path):
    flow = Flow(boom, after_slow, side_effect, executor=spawn_pool, max_workers=2, log=False,
                inputs={"marker": str(tmp_path / "slow_ok-started")})
    res = flow.run()
    assert res["boom"].state is StepState.FAILED and isinstance(res["boom"].error, ValueError)
    assert res["slow_ok"].ok  # already running: it finished and its result was kept
    assert res["after_slow"].state is StepState.SKIPPED
    assert "fail_fast" in res["after_slow"].reason
    assert res["side_effect"].ok and res["side_effect"].value != FLOW_PID
    assert not flow.ok and [r.name for r in flow.failures] == ["boom"]


# ----- what cannot be shipped ---------------------------------------------------------


def test_an_unpicklable_body_fails_its_task_with_a_clear_message(spawn_pool):
    lam = task(lambda: 1, name="lam")
    r = Flow(lam, executor=spawn_pool, log=False).run()["lam"]
    assert r.state is StepState.FAILED and isinstance(r.error, CannotShip)
    msg = str(r.error)
    assert "task 'lam'" in msg and "body" in msg and "cannot be pickled" in msg
    assert "module level" in msg
    assert r.attempts == 1  # not retried: no retry can mend it


def test_an_unpicklable_argument_is_named(spawn_pool):
    for value, what in [(threading.Lock(), "lock"), (Unreducible(), "Unreducible")]:
        r = Flow(takes_lock, executor=spawn_pool, log=False,
                 inputs={"lock": value}).run()["takes_lock"]
        assert r.state is StepState.FAILED and isinstance(r.error, CannotShip)
        msg = str(r.error)
        assert "task 'takes_lock'" in msg and "argument 'lock'" in msg and what in msg, msg


def test_an_unpicklable_return_value_is_named(spawn_pool):
    r = Flow(makes_generator, executor=spawn_pool, log=False).run()["makes_generator"]
    assert r.state is StepState.FAILED and isinstance(r.error, CannotShip)
    msg = str(r.error)
    assert "task 'makes_generator'" in msg and "return value (generator)" in msg, msg
    healthy(spawn_pool)


def test_a_value_that_cannot_be_rebuilt_here_fails_its_task_not_the_pool(spawn_pool):
    r = Flow(returns_unloadable, executor=spawn_pool, log=False).run()["returns_unloadable"]
    assert r.state is StepState.FAILED and isinstance(r.error, CannotShip)
    assert "returns_unloadable" in str(r.error) and "cannot rebuild" in str(r.error)
    healthy(spawn_pool)


def test_a_value_whose_unpickling_raises_system_exit_is_cannot_ship(spawn_pool):
    r = Flow(returns_exits_on_load, executor=spawn_pool, log=False).run()["returns_exits_on_load"]
    assert r.state is StepState.FAILED and isinstance(r.error, CannotShip), r
    assert "return value" in str(r.error) and "SystemExit" in str(r.error)
    assert r.attempts == 1  # CannotShip is never retried


# ----- a killed worker ------------------------------------------------------------------


def test_a_killed_worker_fails_its_task_and_nothing_hangs():
    ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    try:
        killer = task(kills_its_worker.fn, name="killer", retry=2, retry_backoff_base_ms=0)
        t0 = time.monotonic()
        res = Flow(killer, slow_bystander, executor=ex, log=False, fail_fast=False).run()
        assert time.monotonic() - t0 < 30
        r = res["killer"]
        assert r.state is StepState.FAILED and isinstance(r.error, PoolBroken)
        assert isinstance(r.error, WorkerLost)
        assert "task 'killer'" in str(r.error) and "died" in str(r.error)
        assert "create a new one" in str(r.error)
        assert r.attempts == 1  # a broken pool runs nothing more: no retry
        # the bystander either finished before the pool broke or failed as clearly
        b = res["slow_bystander"]
        assert b.ok or isinstance(b.error, PoolBroken)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


# ----- loky -------------------------------------------------------------------------------


def test_loky_runs_the_graph_and_ships_lambdas():
    loky = pytest.importorskip("loky")
    ex = loky.get_reusable_executor(max_workers=2)
    lam = task(lambda where: where["pid"] + 0, name="lam", depends_on=[where])
    res = Flow(lam, executor=ex, log=False).run()
    assert res["where"].ok and res["lam"].ok, res
    assert res["lam"].value == res["where"].value["pid"] != FLOW_PID
    r = Flow(sleeps_30s, executor=ex, log=False).run()["sleeps_30s"]
    assert isinstance(r.error, TimeoutError)


def test_the_core_never_imports_an_engine(repo_env):
    code = textwrap.dedent("""
        import sys
        from concurrent.futures import ProcessPoolExecutor
        import flowing
        heavy = ("dask", "distributed", "loky", "cloudpickle")
        before = [m for m in heavy if m in sys.modules]
        def neg(x):
            return -x
        t = flowing.task(neg, name="t")
        with ProcessPoolExecutor(1) as ex:
            assert flowing.Flow(t, executor=ex, log=False, inputs={"x": -1}).run()["t"].ok
        print(before, [m for m in heavy if m in sys.modules])
    """)
    status, out, err = run_child([sys.executable, "-c", code], repo_env)
    assert status == 0, err[-3000:]
    assert out.strip() == "[] []"


# ----- scripts run as __main__ in a child process ----------------------------------------

HELPER = textwrap.dedent("""
    import os
    from flowing import task

    @task
    def helper_pid():
        return os.getpid()
""")

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from flowing import Flow, task, current
    import helper_tasks

    @task(depends_on=[helper_tasks.helper_pid])
    def from_main(helper_pid):
        return {"pid": os.getpid(), "helper": helper_pid, "task": current().task}

    @task(depends_on=[from_main])
    def tail(from_main):
        if os.environ.get("FAIL_TAIL"):
            raise RuntimeError("tail fails this time")
        return from_main["pid"]

    def make_executor(kind):
        if kind == "loky":
            import loky
            return loky.get_reusable_executor(max_workers=2)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(kind))

    if __name__ == "__main__":
        ex = make_executor(sys.argv[1])
        journal = sys.argv[2] if len(sys.argv) > 2 else None
        res = Flow(tail, executor=ex, log=False, journal_path=journal).run()
        out = {n: [r.state.value, r.value, r.cached, str(r.error) if r.error else None]
               for n, r in res.items()}
        out["flow_pid"] = os.getpid()
        print("RESULT " + json.dumps(out), flush=True)
        ex.shutdown()
""")


def run_child(args, env, timeout=60, cwd=None):
    """Run a child in its own process group; kill the group if it overruns."""
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"child {args} hung\nstdout: {out}\nstderr: {err[-3000:]}")
    return proc.returncode, out, err


def result_of(out, err):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, (out, err[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def script(tmp_path):
    (tmp_path / "helper_tasks.py").write_text(HELPER)
    path = tmp_path / "flow_script.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("kind", METHODS + ["loky"])
def test_a_script_run_as_main_ships_its_tasks(kind, script, repo_env):
    if kind == "loky":
        pytest.importorskip("loky")
    code, out, err = run_child([sys.executable, str(script), kind], repo_env)
    assert code == 0, err[-3000:]
    res = result_of(out, err)
    state, value, _, error = res["from_main"]
    assert state == "succeeded", error
    assert value["task"] == "from_main" and value["pid"] != res["flow_pid"]
    assert value["helper"] != res["flow_pid"]
    assert res["tail"][0] == "succeeded"


def test_journal_replays_in_a_fresh_process(script, repo_env, tmp_path):
    journal = str(tmp_path / "run.journal")
    env = dict(repo_env, FAIL_TAIL="1")
    code, out, err = run_child([sys.executable, str(script), "spawn", journal], env)
    assert code == 0, err[-3000:]
    first = result_of(out, err)
    assert first["from_main"][0] == "succeeded" and first["tail"][0] == "failed"
    code, out, err = run_child([sys.executable, str(script), "spawn", journal], repo_env)
    assert code == 0, err[-3000:]
    second = result_of(out, err)
    # replayed from the journal (written by the first flow process), not re-run
    assert second["from_main"][:3] == [first["from_main"][0], first["from_main"][1], True]
    assert second["helper_pid"][2] is True
    assert second["tail"][0] == "succeeded" and second["tail"][2] is False
    assert second["tail"][1] == first["from_main"][1]["pid"]


EXIT_SCRIPT = textwrap.dedent("""
    import sys, time
    from flowing import Flow, task

    @task(timeout_s=0.5)
    def sleeps():
        time.sleep(30)

    if __name__ == "__main__":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1])) as ex:
            res = Flow(sleeps, executor=ex, log=False).run()
        print("RESULT", res["sleeps"].state.value, flush=True)
""")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_timed_out_body_does_not_hold_the_pool_shutdown_or_the_exit(method, tmp_path,
                                                                      repo_env):
    """ProcessPoolExecutor's shutdown (and its atexit hook) join running work: the
    worker gives up on the body at its deadline, so neither waits for the 30 s sleep."""
    path = tmp_path / "exit_script.py"
    path.write_text(EXIT_SCRIPT)
    t0 = time.monotonic()
    code, out, err = run_child([sys.executable, str(path), method], repo_env, timeout=25)
    assert code == 0, err[-3000:]
    assert "RESULT failed" in out
    assert time.monotonic() - t0 < 30  # neither shutdown nor exit waited for the 30 s body


# ----- Ctrl-C ---------------------------------------------------------------------------

INTERRUPT_SCRIPT = textwrap.dedent("""
    import sys, time
    from flowing import Flow, task

    @task
    def long_a():
        time.sleep(20)

    @task
    def long_b():
        time.sleep(20)

    if __name__ == "__main__":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]))
        ex.submit(int, 1).result()  # workers up
        print("READY", flush=True)
        t0 = time.monotonic()
        try:
            Flow(long_a, long_b, executor=ex, log=False).run()
            print("RETURNED", flush=True)
        except KeyboardInterrupt:
            print(f"INTERRUPTED {time.monotonic() - t0:.2f}", flush=True)
""")


def _lines(stream, q):
    for line in stream:
        q.put(line)
    q.put(None)


@pytest.mark.parametrize("target", ["flow-process", "process-group"])
def test_ctrl_c_returns_promptly(target, tmp_path, repo_env):
    path = tmp_path / "interrupt_script.py"
    path.write_text(INTERRUPT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(path), "spawn"], env=repo_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        assert lines.get(timeout=30).startswith("READY")
        time.sleep(0.5)  # both bodies are running in the workers
        sent = time.monotonic()
        if target == "flow-process":
            os.kill(proc.pid, signal.SIGINT)  # the flow's process only
        else:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        line = lines.get(timeout=10)
        assert line is not None and line.startswith("INTERRUPTED"), line
        assert time.monotonic() - sent < 5
        if target == "process-group":
            # the bodies got the interrupt too: the pool lets the process exit at once
            proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@task
def naps():
    return list(range(16))


@task(depends_on=[naps], for_each=naps)
def nap(naps):
    time.sleep(0.2)
    return os.getpid()


@pytest.mark.parametrize("method", ["fork"])
def test_no_flow_thread_waits_for_a_remote_body(method, pools):
    """16 bodies in flight on a pool of 2: the flow holds no thread per body (they
    complete through the engine's callbacks), unlike one blocked thread each."""
    seen: list[int] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            seen.append(sum(t.name.startswith("flowing-") for t in threading.enumerate()))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        r = Flow(nap, executor=pools(method), max_workers=16, log=False).run()["nap"]
    finally:
        done.set()
        sampler.join(5)
    assert r.state is StepState.SUCCEEDED and FLOW_PID not in r.value and len(r.value) == 16
    assert seen and max(seen) <= 3, max(seen)  # finishers and deadlines, not one per body
