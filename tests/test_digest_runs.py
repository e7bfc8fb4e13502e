"""Digests within runs: no size cliff, one digest per value, and the check that
a body did not change its dependencies in place (flowing.replay.inplace)."""

import logging
import threading

import pytest
from helpers import ListHandler
from test_replay import Calls

from flowing import Flow, task
from flowing.keys.digest import inputs_digest, value_digest
from flowing.replay import inplace


@pytest.fixture
def calls(tmp_path):
    return Calls(tmp_path / "calls.txt")


def test_a_25_million_element_list_is_big_not_unstable(tmp_path, calls):
    journal = str(tmp_path / "run.jsonl")

    def build():
        @task(cache=False)
        def big():
            return [0] * 25_000_000

        @task(depends_on=[big])
        def size(big):
            calls.hit("size")
            return len(big)

        return size

    first = Flow(build(), journal_path=journal, log=False)
    first.run()
    assert first.value("size") == 25_000_000
    second = Flow(build(), journal_path=journal, log=False)
    second.run()
    assert second.results["size"].cached  # the source re-ran to the same value
    assert calls.take() == {"size": 1}


def test_items_that_change_a_side_input_in_place_are_not_journaled(tmp_path, calls):
    journal = str(tmp_path / "run.jsonl")

    def build():
        @task
        def seen():
            return []

        @task
        def nums():
            return [1, 2, 3, 4]

        @task(depends_on=[nums, seen], for_each="nums")
        def each(nums, seen):
            calls.hit("each")
            seen.append(nums)  # changes a value every item reads
            return nums * 10

        return each

    handler = ListHandler()
    logger = logging.getLogger("test-side-input-in-place")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    first = Flow(build(), journal_path=journal, log=logger)
    first.run()
    assert first.value("each") == [10, 20, 30, 40]
    assert calls.take() == {"each": 4}
    warned = [m for m in handler.messages if "changed in place" in m]
    assert len(warned) == 1 and "task 'each'" in warned[0], handler.messages
    second = Flow(build(), journal_path=journal, log=False)
    second.run()
    assert second.value("each") == [10, 20, 30, 40]
    assert calls.take() == {"each": 4}  # nothing was journaled as computed from []


def test_items_reading_an_unchanged_side_input_replay(tmp_path, calls):
    journal = str(tmp_path / "run.jsonl")

    def build():
        @task
        def table():
            return {f"k{i}": [i] for i in range(1000)}

        @task
        def keys():
            return [f"k{i}" for i in range(0, 1000, 50)]

        @task(depends_on=[keys, table], for_each="keys")
        def look(keys, table):
            calls.hit("look")
            return table[keys][0]

        return look

    Flow(build(), journal_path=journal, log=False).run()
    assert calls.take() == {"look": 20}
    again = Flow(build(), journal_path=journal, log=False)
    again.run()
    assert again.value("look") == list(range(0, 1000, 50))
    assert calls.take() == {}


def test_immutable_values_are_digested_once_mutable_ones_at_each_check(monkeypatch):
    seen = []
    real = inplace.digest_info

    def counting(value):
        seen.append(type(value).__name__)
        return real(value)

    monkeypatch.setattr(inplace, "digest_info", counting)
    digests = inplace.RunDigests()
    frozen = tuple(range(1000))
    table = {"a": [1, 2]}
    expected = inputs_digest([("frozen", digests(frozen)), ("table", digests(table))])
    assert expected == inputs_digest([("frozen", value_digest(frozen)),
                                      ("table", value_digest(table))])
    seen.clear()
    for _ in range(3):
        assert digests.unchanged([("frozen", frozen), ("table", table)], expected)
    assert seen == ["dict"] * 3  # the tuple cannot change: never read again
    table["a"].append(3)  # a change deep inside is seen
    assert not digests.unchanged([("frozen", frozen), ("table", table)], expected)



def test_items_reading_a_side_input_changed_between_checks_are_never_replayed(tmp_path, repo_env):
    # The fifth item changes the side input; the items after it read the changed value.
    # None of them may be journaled as computed from the original: a fresh run over the
    # original input must compute what a first run computes, never mix in their values.
    import subprocess
    import sys
    import textwrap

    (tmp_path / "f.py").write_text(textwrap.dedent('''
        from flowing import Flow, task

        @task
        def cfg():
            return {"scale": 1}

        @task
        def src():
            return list(range(8))

        @task(depends_on=[src, cfg], for_each="src")
        def item(src, cfg):
            if src == 4:
                cfg["scale"] = 100
            return src * cfg["scale"]

        print(Flow(item, journal_path="run.jsonl", log=False, max_workers=1).run()["item"].value)
    '''))

    def run() -> str:
        p = subprocess.run([sys.executable, "f.py"], cwd=tmp_path, env=repo_env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    want = "[0, 1, 2, 3, 400, 500, 600, 700]"
    assert run() == want
    assert run() == want  # items 0-3 replay; item 4 runs again, and so what reads its change
    assert run() == want


@pytest.mark.parametrize("changes", [True, False])
def test_a_big_dependency_is_checked_beside_the_value_digest_and_a_change_still_seen(
        tmp_path, calls, changes, monkeypatch):
    """A dependency slow to digest (a 40 MB array) is checked on a thread of its own
    while the task's value is digested: a body that changed it in place is still not
    journaled (and its sibling, run after it, neither), one that did not is."""
    np = pytest.importorskip("numpy")
    journal = str(tmp_path / "run.jsonl")
    monkeypatch.setattr(inplace, "_SLOW_S", 0.0)  # (however fast this machine hashes)
    beside = []
    real_check = inplace.RunDigests.check_job

    def check_job(self, job):
        beside.append(threading.current_thread().name)
        return real_check(self, job)

    monkeypatch.setattr(inplace.RunDigests, "check_job", check_job)

    def build():
        @task
        def load():
            return np.arange(5_000_000, dtype=np.float64)

        @task(depends_on=[load])
        def scale(load):
            calls.hit("scale")
            if changes:
                load[7] = -1.0  # in place: the entry would say "computed from the original"
            return load * 2.0

        @task(depends_on=[load, scale])
        def total(load, scale):
            calls.hit("total")
            return float(load.sum() + scale.sum())

        return total

    records = ListHandler()
    log = logging.getLogger(f"flowing.test.bigcheck.{changes}")
    log.addHandler(records)
    first = Flow(build(), journal_path=journal, log=log)
    first.run()
    assert first.ok
    assert calls.take() == {"scale": 1, "total": 1}
    warned = [m for m in records.messages if "changed in place" in m]
    assert bool(warned) is changes and (not warned or "scale" in warned[0])
    assert "flowing-inplace-check" in beside
    second = Flow(build(), journal_path=journal, log=False)
    second.run()
    # load replays its original; what scale computed from the changed array does not
    assert calls.take() == ({"scale": 1, "total": 1} if changes else {})


def test_small_dependencies_are_checked_on_the_tasks_own_thread(tmp_path, monkeypatch):
    """Only a dependency slow to digest gets a check thread: not None (once taken
    for a slow value: a lookup's default), not small values, however busy the run."""
    started = []
    real_start = threading.Thread.start

    def start(self):
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)

    @task
    def root():
        return None

    @task
    def small():
        return {"a": [1, 2, 3]}

    mids = [task(lambda root, small, i=i: i, name=f"m{i}", depends_on=[root, small])
            for i in range(40)]
    flow = Flow(*mids, journal_path=str(tmp_path / "run.jsonl"), log=False, max_workers=5)
    flow.run()
    assert flow.ok
    assert "flowing-inplace-check" not in started
