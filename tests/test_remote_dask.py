"""Bodies on a Dask cluster (SPEC §7b): a real ``distributed.LocalCluster`` with
two worker processes, one per test module, driven through a ``Client`` and
through ``client.get_executor()``. Scheduling, gates, retries, Limit and the
journal stay in the flow's process; only the body call travels (cloudpickle).

The cluster's scheduler gives up on a task after the first worker that died
running it (``allowed_failures=0``, Dask's default is 3 reschedules): a dead
worker then reaches the flow at once, as ``WorkerLost``.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")

from dask_cluster import local_client  # noqa: E402

from flowing import Flow, Limit, StepState, current, task  # noqa: E402
from flowing.errors import CannotShip, WorkerLost  # noqa: E402

FLOW_PID = os.getpid()


@pytest.fixture(scope="module")
def client():
    with local_client(2, 1, allowed_failures=0) as c:
        yield c


@pytest.fixture(params=["client", "executor"])
def engine(request, client):
    """The Client itself, or its concurrent.futures face."""
    return client if request.param == "client" else client.get_executor()


def worker_pids(client):
    return set(client.run(os.getpid, wait=True).values())


# ----- module-level tasks ------------------------------------------------------------


@task
def where():
    c = current()
    return {"pid": os.getpid(), "task": c.task, "attempt": c.attempt}


@task(depends_on=[where])
def doubled(where):
    return {"pid": os.getpid(), "from": where["pid"], "task": current().task}



@task(depends_on=[doubled], detached=True)
def notify(doubled):
    return os.getpid()


@task
async def coroutine_body():
    import asyncio

    await asyncio.sleep(0.01)
    return {"pid": os.getpid(), "task": current().task}


@task
def numbers():
    return [3, 1, 4]


@task(depends_on=[numbers], for_each=numbers)
def squared(numbers):
    c = current()
    return {"value": numbers * numbers, "index": c.item_index, "item": c.item,
            "pid": os.getpid()}


class Throttled(Exception):
    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


@task(retry=2, retry_backoff_base_ms=1, retry_max_backoff_ms=1, retry_on=Throttled)
def throttled():
    if current().attempt < 3:
        raise Throttled("slow down", retry_after=0.3)
    return current().attempt


@task(retry=3, retry_backoff_base_ms=1, retry_on=ConnectionError)
def wrong_kind():
    raise KeyError("not retried")


@task(timeout_s=0.5)
def sleeps_30s():
    time.sleep(30)


GATE_PIDS = []


def _never(**deps):
    GATE_PIDS.append(os.getpid())
    return False


def _reject(**deps):
    GATE_PIDS.append(os.getpid())
    raise ValueError("bad input")


def _accept_second(value):
    GATE_PIDS.append(os.getpid())
    return value >= 2


@task
def source():
    return 1


@task(depends_on=[source], when=_never)
def gated_off(source):
    return "never"


@task(depends_on=[source], validate=_reject)
def invalid(source):
    return "never"


@task(depends_on=[source], retry=2, retry_backoff_base_ms=0, retry_until=_accept_second)
def until_second(source):
    return current().attempt


ONE_AT_A_TIME = Limit(max_concurrency=1)  # the cluster has two slots


@task
def batch():
    return list(range(4))


@task(depends_on=[batch], for_each=batch, limit=ONE_AT_A_TIME)
def limited_a(batch):
    start = time.time()
    time.sleep(0.1)
    return (start, time.time())


@task(depends_on=[batch], for_each=batch, limit=ONE_AT_A_TIME)
def limited_b(batch):
    start = time.time()
    time.sleep(0.1)
    return (start, time.time())


@task
def makes_generator():
    return (i for i in range(3))


@task
def takes_lock(lock):
    return "never"


@task(retry=1, retry_backoff_base_ms=0)
def kills_its_worker_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return current().attempt


@task
def kills_its_worker():
    os.kill(os.getpid(), signal.SIGKILL)


# ----- tests ----------------------------------------------------------------------------


def test_graph_runs_on_the_cluster(engine, client):
    res = Flow(doubled, notify, coroutine_body, executor=engine, log=False).run()
    assert all(r.ok for r in res.values()), res
    pids = worker_pids(client)
    w, d = res["where"].value, res["doubled"].value
    assert w["pid"] in pids and d["pid"] in pids and FLOW_PID not in pids
    assert d["from"] == w["pid"]
    assert (w["task"], w["attempt"], d["task"]) == ("where", 1, "doubled")
    assert res["notify"].detached and res["notify"].value in pids
    c = res["coroutine_body"].value  # run with asyncio.run in the worker
    assert c["pid"] in pids and c["task"] == "coroutine_body"


def test_for_each_items_see_their_item(client):
    r = Flow(squared, executor=client, log=False).run()["squared"]
    assert r.ok, r.error
    assert [(v["value"], v["index"], v["item"]) for v in r.value] == [
        (9, 0, 3), (1, 1, 1), (16, 2, 4)]


def test_retries_retry_after_and_retry_on_across_the_cluster(client):
    res = Flow(throttled, wrong_kind, executor=client, log=False, fail_fast=False).run()
    r = res["throttled"]
    assert r.ok and r.value == 3 and r.attempts == 3, r.error
    assert r.finished_at - r.started_at >= 0.55  # two waits of >= 0.3 s (the hint)
    w = res["wrong_kind"]
    assert w.state is StepState.FAILED and w.attempts == 1 and isinstance(w.error, KeyError)
    assert "in wrong_kind" in w.traceback  # the worker's traceback travels with it


@task
def long_complaint():
    raise ValueError("x" * 50_000)


def test_a_long_error_from_a_kept_task_arrives_whole_and_is_the_bodys(client, capfd):
    """A failing body whose value would have stayed on the worker: its exception comes
    back as itself, whole (Dask cuts exceptions it holds past 10,000 characters,
    and would log each as a failed task)."""
    r = Flow(long_complaint, executor=client, log=False).run()["long_complaint"]
    assert r.state is StepState.FAILED and type(r.error) is ValueError, r.error
    assert str(r.error) == "x" * 50_000 and r.attempts == 1
    assert "Compute Failed" not in capfd.readouterr().err


def test_a_body_sleeping_30s_times_out_and_its_dask_task_is_cancelled(engine, client):
    t0 = time.monotonic()
    r = Flow(sleeps_30s, executor=engine, log=False).run()["sleeps_30s"]
    assert time.monotonic() - t0 < 30  # the run did not wait for the 30 s body
    assert r.state is StepState.FAILED and isinstance(r.error, TimeoutError)
    assert "sleeps_30s" in str(r.error)

    def keys(dask_scheduler):
        return [str(k) for k in dask_scheduler.tasks]

    deadline = time.monotonic() + 10
    while any(k.startswith("sleeps_30s-") for k in client.run_on_scheduler(keys)):
        assert time.monotonic() < deadline, "the timed-out task was never cancelled"
        time.sleep(0.05)
    # the worker gave up on the body at its deadline: both slots take work at once
    futures = [client.submit(time.sleep, 0.2, pure=False) for _ in range(2)]
    distributed.wait(futures, timeout=10)
    assert all(f.status == "finished" for f in futures)


def test_a_shared_limit_bounds_bodies_across_the_cluster(client):
    res = Flow(limited_a, limited_b, executor=client, max_workers=8, log=False).run()
    intervals = sorted(res["limited_a"].value + res["limited_b"].value)
    assert len(intervals) == 8
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert start >= end - 0.005, intervals  # one at a time, though two slots are free


def test_gates_run_in_the_flow_process(client):
    GATE_PIDS.clear()
    res = Flow(gated_off, invalid, until_second, executor=client, log=False,
               fail_fast=False).run()
    assert res["gated_off"].state is StepState.SKIPPED
    assert res["invalid"].state is StepState.FAILED and res["invalid"].attempts == 0
    assert res["until_second"].value == 2 and res["until_second"].attempts == 2
    assert GATE_PIDS and set(GATE_PIDS) == {FLOW_PID}


def test_lambdas_ship_but_unpicklable_things_are_named(client):
    lam = task(lambda where: where["pid"], name="lam", depends_on=[where])
    assert Flow(lam, executor=client, log=False).run()["lam"].value in worker_pids(client)

    lock = threading.Lock()
    grabs = task(lambda: lock.locked(), name="grabs")  # a closure over a lock
    res = Flow(grabs, makes_generator, takes_lock, executor=client, log=False,
               fail_fast=False, inputs={"lock": threading.Lock()}).run()
    for name, words in [("grabs", ["its body", "cannot be pickled"]),
                        ("makes_generator", ["return value (generator)"]),
                        ("takes_lock", ["argument 'lock'", "lock"])]:
        r = res[name]
        assert r.state is StepState.FAILED and isinstance(r.error, CannotShip), (name, r)
        msg = str(r.error)
        assert f"task '{name}'" in msg and all(w in msg for w in words), msg
        assert r.attempts == 1


def test_a_killed_worker_is_retried_or_fails_clearly(client, tmp_path):
    try:
        marker = str(tmp_path / "killed-once")
        t0 = time.monotonic()
        r = Flow(kills_its_worker_once, executor=client, log=False,
                 inputs={"marker": marker}).run()["kills_its_worker_once"]
        assert r.ok and r.value == 2 and r.attempts == 2, r.error  # retried by the flow
        client.wait_for_workers(2, timeout=60)
        r = Flow(kills_its_worker, executor=client, log=False).run()["kills_its_worker"]
        assert r.state is StepState.FAILED and isinstance(r.error, WorkerLost)
        msg = str(r.error)
        assert "task 'kills_its_worker'" in msg and "KilledWorker" in msg, msg
        assert time.monotonic() - t0 < 60
    finally:
        client.wait_for_workers(2, timeout=60)


SCRIPT = textwrap.dedent("""
    import json, os, sys
    from flowing import Flow, task, current

    @task
    def from_main():
        return {"pid": os.getpid(), "task": current().task}

    @task(depends_on=[from_main])
    def tail(from_main):
        if os.environ.get("FAIL_TAIL"):
            raise RuntimeError("tail fails this time")
        return from_main["pid"]

    if __name__ == "__main__":
        from distributed import Client, LocalCluster

        # a real cluster: Client("tcp://scheduler-host:8786") instead
        with LocalCluster(processes=True, n_workers=1, threads_per_worker=1,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            res = Flow(tail, executor=client, log=False, journal_path=sys.argv[1]).run()
        out = {n: [r.state.value, r.value, r.cached] for n, r in res.items()}
        out["flow_pid"] = os.getpid()
        print("RESULT " + json.dumps(out), flush=True)
""")


def run_child(args, env, timeout=90):
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"child hung\nstdout: {out}\nstderr: {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, (out, err[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def test_a_script_as_main_on_dask_and_journal_replay_in_a_fresh_process(tmp_path, repo_env):
    path = tmp_path / "dask_script.py"
    path.write_text(SCRIPT)
    journal = str(tmp_path / "run.journal")
    first = run_child([sys.executable, str(path), journal], dict(repo_env, FAIL_TAIL="1"))
    assert first["from_main"][0] == "succeeded" and first["tail"][0] == "failed"
    value = first["from_main"][1]
    assert value["task"] == "from_main" and value["pid"] != first["flow_pid"]
    second = run_child([sys.executable, str(path), journal], repo_env)
    assert second["from_main"] == ["succeeded", value, True]  # replayed, not re-run
    assert second["tail"] == ["succeeded", value["pid"], False]


@task(depends_on=[where], local=True)
def kept_here(where):
    return {"pid": os.getpid(), "from": where["pid"]}


async def _kept_async(where):
    return {"pid": os.getpid(), "from": where["pid"]}


kept_here_async = task(_kept_async, name="kept_here_async", depends_on=[where], local=True)


@pytest.mark.parametrize("local", [kept_here, kept_here_async], ids=["sync", "async"])
def test_a_local_step_runs_in_the_flow_process_between_remote_ones(engine, client, local):
    @task(depends_on=[local])
    def after(**deps):
        (value,) = deps.values()
        return {"pid": os.getpid(), "got": value}

    results = Flow(after, executor=engine, log=False).run()
    pids = worker_pids(client)
    assert all(r.state is StepState.SUCCEEDED for r in results.values()), results
    w, k, a = (results[n].value for n in ("where", local.name, "after"))
    assert w["pid"] in pids and a["pid"] in pids
    assert k == {"pid": FLOW_PID, "from": w["pid"]}  # its input came back from a worker
    assert a["got"] == k  # and its value went out to a worker


def test_the_dask_example_runs_on_a_local_cluster(repo_env, tmp_path):
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "examples", "dask_cluster.py")
    proc = subprocess.run([sys.executable, example], cwd=tmp_path, env=repo_env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "8 items on 2 Dask worker slot(s)" in proc.stdout
    assert re.search(r"bodies ran in [12] worker process\(es\)", proc.stdout), proc.stdout


@task
def two_megabytes():
    return b"y" * (2 << 20)


@task(depends_on=[two_megabytes])
def measured(two_megabytes):
    return {"pid": os.getpid(), "size": len(two_megabytes)}


def test_a_value_stays_on_the_worker_until_it_is_read(client):
    results = Flow(measured, executor=client, log=False).run()
    big, small = results["two_megabytes"], results["measured"]
    assert big.state is StepState.SUCCEEDED and small.state is StepState.SUCCEEDED
    assert not big.value_loaded  # handed worker to worker, never brought here
    assert small.value["size"] == 2 << 20 and small.value["pid"] in worker_pids(client)
    assert big.value == b"y" * (2 << 20)  # fetched on first access
    assert big.value_loaded


def megabytes():
    return b"m" * (2 << 20)


def test_dask_keys_group_calls_by_task_name(client):
    # Dask groups tasks by the key's first words (its dashboard shows those groups,
    # its scheduler keeps statistics per group): each flowing task is its own
    # group, whatever its body function (see the reference, "Where bodies run").
    tasks = [task(megabytes, name=f"copy{i}") for i in range(3)]
    results = Flow(*tasks, executor=client, log=False).run()  # (holds the kept values)
    assert all(r.ok and not r.value_loaded for r in results.values())
    groups = client.run_on_scheduler(lambda dask_scheduler: sorted(
        ts.group_key for k, ts in dask_scheduler.tasks.items()
        if isinstance(k, str) and k.startswith("copy")))
    assert groups == ["copy0", "copy1", "copy2"]
    assert results["copy1"].value == b"m" * (2 << 20)


@task(depends_on=[measured])
def scalars(measured):
    return None


@task(depends_on=[scalars, measured])
def seven(scalars, measured):
    return 7


def test_small_values_are_readable_after_the_client_closes_big_ones_say_why(client):
    with distributed.Client(client.scheduler.address, timeout=30) as other:
        results = Flow(seven, executor=other, log=False).run()
    assert results["measured"].value["size"] == 2 << 20  # fetched at the end of the run
    assert results["scalars"].value is None and results["seven"].value == 7  # (unmeasured)
    with pytest.raises(WorkerLost, match="task 'two_megabytes'.*before the client closes"):
        _ = results["two_megabytes"].value


def test_a_kept_value_reaches_gates_local_steps_and_items_as_itself(client):
    seen = []

    @task(depends_on=[two_megabytes], when=lambda two_megabytes: seen.append(
        type(two_megabytes).__name__) or True, local=True)
    def here(two_megabytes):
        seen.append(type(two_megabytes).__name__)
        return [len(two_megabytes)] * 3

    @task(depends_on=[here, two_megabytes], for_each=here)
    def each(here, two_megabytes):
        return here == len(two_megabytes)

    r = Flow(each, executor=client, log=False).run()["each"]
    assert r.state is StepState.SUCCEEDED and r.value == [True] * 3
    assert seen == ["bytes", "bytes"]
