"""A journal on Dask (SPEC §6, §7b): the values of remote steps stay on the workers,
and what the journal needs of each is made where the value is — its content digest,
and its pickle, written here as it arrives without being unpickled here.

A real ``distributed.LocalCluster``, one per module: one worker process with two
threads, so that two bodies of one run share the worker's objects (the case the
in-place check on the worker is for)."""

import logging
import os
import signal

import pytest

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")

from dask_cluster import local_client  # noqa: E402

from flowing import Flow, StepState, task  # noqa: E402
from flowing.journal.store import Journal  # noqa: E402
from flowing.keys.digest import value_digest  # noqa: E402

N = 1 << 20  # 8 MB of float64: far beyond the journal's 64 KiB threshold
LOG = logging.getLogger("test-remote-journal")


@pytest.fixture(scope="module")
def client():
    with local_client(1, 2) as c:
        yield c


def entries(path):
    """The newest entry per task name: (enc, digest)."""
    with Journal.open(str(path), LOG) as j:
        return {e.name: (e.enc, e.digest) for e in j.entries()}


def array():
    return np.arange(N, dtype=np.float64)


def array_too():  # another function, the same value
    return np.arange(N, dtype=np.float64) * 1.0


def total(load):
    return {"pid": os.getpid(), "sum": float(load.sum())}


def report(total):
    return {"pid": os.getpid(), "sum": total["sum"]}


def chain(load_fn):
    load = task(load_fn, name="load")
    t = task(total, name="total", depends_on=[load])
    return task(report, name="report", depends_on=[t], local=True)


def test_a_big_value_is_digested_and_pickled_on_its_worker_and_replays(client, tmp_path):
    path = tmp_path / "run.jsonl"
    flow = Flow(chain(array), executor=client, journal_path=str(path), log=False)
    results = flow.run()
    assert flow.ok, flow.failures
    workers = set(client.run(os.getpid).values())
    assert results["total"].value["pid"] in workers
    assert results["report"].value["pid"] == os.getpid()
    assert not results["load"].value_loaded  # journaled, yet never unpickled here
    assert results["load"]._value.stored is None  # its frames were let go once written
    found = entries(path)
    assert found["load"][0] == "file"
    # the digest made on the worker is the one this process makes of the same value
    assert found["load"][1] == value_digest(array())
    stored = list((tmp_path / "run.jsonl.values").iterdir())
    assert len(stored) == 1 and stored[0].stat().st_size > N * 8

    # a fresh flow on threads replays all three, reading the worker's pickle back
    again = Flow(chain(array), journal_path=str(path), log=False).run()
    assert all(r.cached for r in again.values())
    value = again["load"].value
    assert isinstance(value, np.ndarray) and value.flags.writeable
    assert np.array_equal(value, array())


def quarter_megabyte():
    return np.arange(1 << 15, dtype=np.float64)  # 256 KiB: stored, and "small" to read back


def test_a_journaled_value_read_back_at_the_end_is_not_fetched_twice(client, tmp_path):
    # Its pickle came here for the journal: the end of the run reads the value from
    # those bytes rather than fetching it from the cluster a second time.
    gathered: list[object] = []
    real_gather = client.gather

    def counting_gather(futures, *args, **kwargs):
        gathered.extend(getattr(f, "key", f) for f in futures)
        return real_gather(futures, *args, **kwargs)

    flow = Flow(chain(quarter_megabyte), executor=client, journal_path=str(tmp_path / "j"),
                log=False)
    client.gather = counting_gather
    try:
        results = flow.run()
    finally:
        del client.gather
    assert flow.ok, flow.failures
    assert entries(tmp_path / "j")["load"][0] == "file"
    assert results["load"]._value.fetched and results["load"]._value.stored is None
    assert np.array_equal(results["load"].value, quarter_megabyte())
    assert not [k for k in gathered if str(k).startswith("load-")], gathered


class PicklesOnce:
    """A value that pickles once (the worker's check that it travels), then refuses."""

    def __init__(self) -> None:
        self.data = bytes(200_000)
        self.pickled = 0

    def __reduce__(self):
        self.pickled += 1
        if self.pickled > 1:
            raise RuntimeError("refuses the second time")
        return (_rebuilt, (self.data,))


def _rebuilt(data):
    value = PicklesOnce.__new__(PicklesOnce)
    value.data, value.pickled = data, 0
    return value


def pickles_once():
    return PicklesOnce()


def uses(a):
    return 1


def test_a_kept_value_that_then_cannot_be_pickled_is_cannot_ship_not_a_lost_worker(
        client, tmp_path):
    # Its worker cannot make its journal form, so the flow fetches it: the worker
    # cannot pickle it then either. That is the value's fault, said so, not a dead worker.
    a = task(pickles_once, name="a")
    flow = Flow(task(uses, name="u", depends_on=[a]), task(uses, name="here", depends_on=[a],
                local=True), executor=client, journal_path=str(tmp_path / "j"), log=False)
    results = flow.run()
    assert results["a"].state is StepState.FAILED
    assert type(results["a"].error).__name__ == "CannotShip", results["a"].error
    assert "task 'a'" in str(results["a"].error) and "pickle" in str(results["a"].error)
    assert results["u"].state is results["here"].state is StepState.SKIPPED


class LoadsOnlyThere:
    """A value whose rebuilding fails in the process named by an environment variable."""

    def __init__(self) -> None:
        self.data = bytes(200_000)

    def __reduce__(self):
        return (_rebuilt_there, (self.data,))


def _rebuilt_there(data):
    if os.environ.get("FLOWING_TEST_NO_REBUILD") == str(os.getpid()):
        raise RuntimeError("cannot be rebuilt in this process")
    value = LoadsOnlyThere.__new__(LoadsOnlyThere)
    value.data = data
    return value


def loads_only_there():
    return LoadsOnlyThere()


def test_a_journaled_value_that_cannot_be_read_back_here_leaves_the_run_whole(
        client, tmp_path, monkeypatch):
    # The end of the run cannot rebuild it from the journal's pickle nor from the
    # cluster: the run still returns, the step succeeded, and its value says why on read.
    monkeypatch.setenv("FLOWING_TEST_NO_REBUILD", str(os.getpid()))  # (here, not the workers)
    a = task(loads_only_there, name="a")
    flow = Flow(task(uses, name="u", depends_on=[a]), executor=client,
                journal_path=str(tmp_path / "j"), log=False)
    results = flow.run()
    assert flow.ok, flow.failures
    assert entries(tmp_path / "j")["a"][0] == "file"
    assert not results["a"]._value.fetched
    with pytest.raises(Exception, match="cannot be rebuilt in this process"):
        _ = results["a"].value


def test_dependents_replay_by_the_worker_digest_on_another_engine(client, tmp_path):
    """Early cutoff across engines: the load step edited to give the same value runs
    again (here, on threads) and its dependents replay: the digest its worker made
    in the first run is the one this process makes now."""
    path = str(tmp_path / "run.jsonl")
    assert Flow(chain(array), executor=client, journal_path=path, log=False).run()["report"].ok
    edited = Flow(chain(array_too), journal_path=path, log=False).run()
    assert not edited["load"].cached and edited["load"].attempts == 1
    assert edited["total"].cached and edited["report"].cached


def mutable():
    return bytearray(200_000)


def poke(load):
    load[0] = 7  # in place: on one worker, every body gets this very object
    return list(range(5000))  # (a result too long to travel inside an exception)


def first(load, poke):
    return load[0]


def test_a_body_changing_a_kept_value_in_place_is_caught_on_the_worker(client, tmp_path,
                                                                        capfd):
    load = task(mutable, name="load")
    p = task(poke, name="poke", depends_on=[load])
    f = task(first, name="first", depends_on=[load, p])
    path = tmp_path / "run.jsonl"
    results = Flow(f, executor=client, journal_path=str(path)).run()
    assert results["poke"].ok and results["poke"].value == list(range(5000))
    assert results["first"].state is StepState.SUCCEEDED
    assert results["first"].value == 7  # it ran on the changed object
    found = entries(path)
    assert found["load"][0] == "file"  # the value as it was made
    assert found["poke"][0] == "none" and found["first"][0] == "none"  # markers only
    err = capfd.readouterr().err
    assert "task 'poke': not journaled: its dependency 'load', kept on the Dask" in err
    # nothing replays a value computed from the changed object as if from the original
    stored = Flow(load, journal_path=str(path), log=False).run()["load"]
    assert stored.cached and bytes(stored.value) == bytes(200_000)
    again = Flow(f, journal_path=str(path), log=False).run()
    assert again["load"].cached
    assert not again["poke"].cached and not again["first"].cached
    assert again["first"].value == 7


def slow(load):
    return len(load)


def here(load, slow, poke):
    return load[0]


def test_a_value_fetched_here_after_its_worker_changed_it_is_not_journaled_as_made(
        client, tmp_path):
    """A local step receives a kept value that a body on its worker changed before
    it was fetched: its result is not journaled as computed from the value made."""
    load = task(mutable, name="load")
    p = task(poke, name="poke", depends_on=[load])
    s = task(slow, name="slow", depends_on=[load])
    h = task(here, name="here", depends_on=[load, s, p], local=True)
    path = tmp_path / "run.jsonl"
    results = Flow(h, executor=client, journal_path=str(path), log=False).run()
    assert results["here"].ok and results["here"].value == 7
    found = entries(path)
    assert found["load"][0] == "file" and found["here"][0] == "none"


def listing():
    return [1, 2, 3]


def poke_item(listing, load):
    load[listing] = 1
    return listing


def test_an_item_changing_a_kept_side_input_stops_its_fan_out_journal(client, tmp_path,
                                                                       capfd):
    load = task(mutable, name="load")
    src = task(listing, name="listing")
    each = task(poke_item, name="each", depends_on=[src, load], for_each=src)
    path = tmp_path / "run.jsonl"
    results = Flow(each, executor=client, journal_path=str(path)).run()
    assert results["each"].state is StepState.SUCCEEDED and results["each"].value == [1, 2, 3]
    with Journal.open(str(path), LOG) as j:
        kinds = [(e.name, e.enc) for e in j.entries()]
    assert not [name for name, enc in kinds if name.startswith("each[") and enc != "none"]
    assert ("each", "json") not in kinds
    assert "task 'each': a dependency's value changed in place" in capfd.readouterr().err


class Opaque:
    """No stable content (an attribute holding a lambda): the worker makes no digest."""

    def __init__(self):
        self.data = bytearray(100_000)
        self.fn = lambda: None


def opaque():
    return Opaque()


def change(opaque):
    opaque.data[0] = 9
    return True


def read(opaque, change):
    return opaque.data[0]


def test_a_value_its_worker_cannot_digest_reaches_dependents_as_copies(client, tmp_path):
    """When the worker cannot make the journal's form of a value, the flow does it
    here, and the value's dependents get copies from here: none can change it for
    another unseen on the worker."""
    o = task(opaque, name="opaque")
    c = task(change, name="change", depends_on=[o])
    r = task(read, name="read", depends_on=[o, c])
    results = Flow(r, executor=client, journal_path=str(tmp_path / "run.jsonl"),
                   log=False).run()
    assert results["read"].state is StepState.SUCCEEDED
    assert results["read"].value == 0
    assert results["opaque"].value.data[0] == 0


def test_the_pickle_made_on_the_worker_is_the_one_made_here(client, tmp_path):
    """The stored file is byte for byte what this process would have written."""
    path = tmp_path / "run.jsonl"
    assert Flow(chain(array), executor=client, journal_path=str(path), log=False).run()["report"].ok
    here = tmp_path / "here.jsonl"
    assert Flow(chain(array), journal_path=str(here), log=False).run()["report"].ok
    remote = sorted(p.name for p in (tmp_path / "run.jsonl.values").iterdir())
    local = sorted(p.name for p in (tmp_path / "here.jsonl.values").iterdir())
    assert remote == local  # named by the sha256 of their bytes


SCRIPT = """\
import json, sys
from dataclasses import dataclass

from distributed import Client
from flowing import Flow, task
from flowing.journal.store import Journal
from flowing.keys.digest import value_digest


@dataclass
class Row:  # a class of the script itself: shipped to the workers by value
    n: int
    label: str


def make():
    return [Row(i, "row %d" % i) for i in range(5000)]


@task(cache=False)  # never stored: its digest alone is made on the worker
def rows():
    return make()


@task(depends_on=[rows], local=True)
def count(rows):
    return len(rows)


if __name__ == "__main__":
    with Client(sys.argv[1], timeout=30) as client:
        results = Flow(count, executor=client, journal_path="run.jsonl", log=False).run()
    import logging
    with Journal.open("run.jsonl", logging.getLogger("x")) as j:
        found = {e.name: [e.enc, e.digest] for e in j.entries()}
    print("RESULT " + json.dumps({"count": results["count"].value, "found": found,
                                  "here": value_digest(make()),
                                  "cached": [r.cached for r in results.values()]}))
"""


def test_classes_of_the_script_digest_on_the_worker_as_in_the_script(client, tmp_path,
                                                                    repo_env):
    """A value made of the script's own classes (``__main__``, shipped by value) is
    digested on its worker under the script's name, as the script digests it: the
    local step that receives it (and digests it here on arrival) is journaled, and
    a fresh process replays that step on the value made again."""
    import json
    import subprocess
    import sys

    (tmp_path / "rows_flow.py").write_text(SCRIPT)

    def run():
        proc = subprocess.run([sys.executable, "rows_flow.py", client.scheduler.address],
                              cwd=tmp_path, env=repo_env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        assert line, proc.stdout + proc.stderr[-3000:]
        return json.loads(line[0][len("RESULT "):])

    first = run()
    assert first["count"] == 5000
    assert first["found"].get("rows", ["none"])[0] == "none"  # not stored (cache=False)
    assert first["found"]["count"][0] == "json"
    assert run()["cached"] == [False, True]


def fresh():
    return os.urandom(100_000)  # another value each time it runs


def kill_worker(fresh, worker_pid):
    os.kill(worker_pid, signal.SIGKILL)  # the only copy of fresh's value is lost
    return True


def use(fresh, kill_worker):
    return fresh[:4].hex()


def test_a_kept_value_dask_computes_again_is_not_the_journaled_one(client, tmp_path, capfd):
    """(Last in the module: it kills the worker.) The worker holding a journaled
    value dies; Dask computes the value again for its dependent, and gets another
    one: the dependent's result is not journaled as computed from the first."""
    [pid] = client.run(os.getpid).values()
    f = task(fresh, name="fresh")
    k = task(kill_worker, name="kill_worker", depends_on=[f], local=True)
    u = task(use, name="use", depends_on=[f, k])
    path = tmp_path / "run.jsonl"
    try:
        results = Flow(u, executor=client, journal_path=str(path),
                       inputs={"worker_pid": pid}).run()
        assert results["use"].ok, results["use"].error
        found = entries(path)
        assert found["fresh"][0] == "file" and found["use"][0] == "none"
        err = capfd.readouterr().err
        assert "task 'use': not journaled: its dependency 'fresh', kept on the Dask" in err
    finally:
        client.wait_for_workers(1, timeout=60)
