"""Sound replay along the graph (SPEC §6): early cutoff, cache=False, cache_ttl_s,
content-keyed items, inputs and version in keys, items on replay."""

import dataclasses
import datetime
import decimal
import json
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from flowing import Flow, StepState, task

S, F, K = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED


@pytest.fixture
def journal(tmp_path):
    return str(tmp_path / "run.jsonl")


class Calls:
    """Counts body calls per name in a file.

    Bodies reach it through a closure, and a closure value is part of the step
    key by content: so it holds nothing but its path (a counter in memory would
    change every key as it counts, and a lock would make every task uncacheable).
    """

    def __init__(self, path):
        self.path = str(path)

    def hit(self, name):
        with open(self.path, "a") as f:
            f.write(name + "\n")

    def take(self):
        try:
            with open(self.path) as f:
                lines = f.read().split()
        except FileNotFoundError:
            lines = []
        open(self.path, "w").close()
        out = {}
        for name in lines:
            out[name] = out.get(name, 0) + 1
        return out


class World:
    """The outside world a cache=False task reads: a JSON file (see Calls for why)."""

    def __init__(self, path, **state):
        self.path = str(path)
        self.set(**state)

    def set(self, **state):
        with open(self.path, "w") as f:
            json.dump(state, f)

    def get(self, key):
        with open(self.path) as f:
            return json.load(f)[key]


@pytest.fixture
def calls(tmp_path):
    return Calls(tmp_path / "calls.txt")


# ----- what was seen: wrong values replayed, stale dependents --------------------

@dataclasses.dataclass(frozen=True)
class Source:
    name: str


class Plain:
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize("make", [
    pathlib.Path, lambda s: datetime.date(2026, 1, 1 + len(s)),
    lambda s: decimal.Decimal(len(s)), Source, Plain,
], ids=["path", "date", "decimal", "dataclass", "plain-object"])
def test_loop_built_tasks_over_values_never_replay_each_others_values(journal, make):
    def build():
        tasks = []
        for name in ["a.csv", "bb.csv"]:
            value = make(name)

            def read(value=value, name=name):
                return f"contents of {name}"

            tasks.append(task(read, name=f"read_{name[0]}"))

        @task(depends_on=tasks)
        def gather(**kw):
            return [kw[k] for k in sorted(kw)]

        return gather

    first = Flow(build(), journal_path=journal, log=False)
    first.run()
    again = Flow(build(), journal_path=journal, log=False)
    again.run()
    assert again.value("gather") == ["contents of a.csv", "contents of bb.csv"]
    assert again.results["read_a"].cached and again.results["read_b"].cached


def test_a_dependent_of_a_generator_runs_again_and_sees_the_new_file(journal, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("1")

    def build():
        @task
        def files():
            return folder.glob("*.csv")  # a generator: no stable content, never journaled

        @task(depends_on=[files])
        def names(files):
            return sorted(p.name for p in files)

        return names

    first = Flow(build(), journal_path=journal, log=False)
    first.run()
    assert first.value("names") == ["a.csv"]
    (folder / "b.csv").write_text("2")
    again = Flow(build(), journal_path=journal, log=False)
    again.run()
    assert again.value("names") == ["a.csv", "b.csv"]
    assert not again.results["names"].cached
    assert "no stable content" in again.why.get("names", "")


# ----- early cutoff, cache=False, cache_ttl_s ---------------------------------------

def test_cache_false_source_early_cutoff_and_changed_value(journal, calls, tmp_path):
    world = World(tmp_path / "world.json", prices=[1, 2])

    def build():
        @task(cache=False)
        def latest():
            calls.hit("latest")
            return world.get("prices")

        @task(depends_on=[latest])
        def total(latest):
            calls.hit("total")
            return sum(latest)

        @task(depends_on=[total])
        def report(total):
            calls.hit("report")
            return f"total={total}"

        return report

    Flow(build(), journal_path=journal, log=False).run()
    assert calls.take() == {"latest": 1, "total": 1, "report": 1}

    same = Flow(build(), journal_path=journal, log=False)
    same.run()
    assert calls.take() == {"latest": 1}  # the world did not change: one cheap step
    assert same.results["total"].cached and same.results["report"].cached
    assert not same.results["latest"].cached

    world.set(prices=[5, 5])
    changed = Flow(build(), journal_path=journal, log=False)
    changed.run()
    assert calls.take() == {"latest": 1, "total": 1, "report": 1}
    assert changed.value("report") == "total=10"
    assert changed.why["total"] == "'latest' returned a different value"
    assert "cache=False" in changed.why["latest"]
    assert "(ran: 'latest' returned a different value)" in changed.summary()


def test_a_dependency_that_reran_to_the_same_value_does_not_force_dependents(journal, calls):
    def build():
        @task(cache=False)
        def source():
            calls.hit("source")
            return {"rows": 3}

        @task(depends_on=[source])
        def parity(source):  # re-runs whenever source's value changes
            calls.hit("parity")
            return source["rows"] % 2

        @task(depends_on=[parity])
        def label(parity):
            calls.hit("label")
            return "odd" if parity else "even"

        return label

    Flow(build(), journal_path=journal, log=False).run()
    calls.take()
    Flow(build(), journal_path=journal, log=False).run()
    assert calls.take() == {"source": 1}


def test_cache_ttl_expires_a_journaled_result(journal, calls):
    def build():
        @task(cache_ttl_s=0.4)
        def quote():
            calls.hit("quote")
            return 42

        return quote

    Flow(build(), journal_path=journal, log=False).run()
    fresh = Flow(build(), journal_path=journal, log=False)
    fresh.run()
    assert fresh.results["quote"].cached
    time.sleep(0.6)
    stale = Flow(build(), journal_path=journal, log=False)
    stale.run()
    assert not stale.results["quote"].cached
    assert "expired" in stale.why["quote"]
    assert calls.take() == {"quote": 2}


def test_cache_false_with_resume_and_override(journal, calls, tmp_path):
    broken = World(tmp_path / "broken.json", on=True)

    @task(cache=False)
    def listing():
        calls.hit("listing")
        return ["a"]

    @task(depends_on=[listing])
    def process(listing):
        calls.hit("process")
        if broken.get("on"):
            raise ValueError("bug")
        return len(listing)

    flow = Flow(process, journal_path=journal, log=False)
    flow.run()
    assert flow.results["process"].state is F
    broken.set(on=False)
    flow.resume()  # resume continues this run: the listing it already has is kept
    assert calls.take() == {"listing": 1, "process": 2}
    assert flow.value(process) == 1

    flow.override(listing, ["x", "y"])
    flow.resume(from_tasks=[process])
    assert flow.value(process) == 2
    assert calls.take() == {"process": 1}


# ----- for_each items keyed by content --------------------------------------------

def test_items_are_keyed_by_content_insert_reorder_remove(journal, calls, tmp_path):
    items = World(tmp_path / "items.json", now=["b", "c", "d"])

    def build():
        @task(cache=False)
        def names():
            return items.get("now")

        @task(depends_on=[names], for_each="names")
        def upper(names):
            calls.hit(names)
            return names.upper()

        return upper

    def run():
        flow = Flow(build(), journal_path=journal, log=False)
        flow.run()
        return flow

    run()
    assert calls.take() == {"b": 1, "c": 1, "d": 1}
    items.set(now=["a", "b", "c", "d"])  # a new item that sorts first: positions shift
    flow = run()
    assert calls.take() == {"a": 1}
    assert flow.value("upper") == ["A", "B", "C", "D"]
    assert [it.cached for it in flow.results["upper"].items] == [False, True, True, True]
    items.set(now=["d", "a", "c"])  # reordered and one removed
    flow = run()
    assert calls.take() == {}
    assert flow.value("upper") == ["D", "A", "C"]
    assert flow.results["upper"].cached


def test_items_without_stable_content_are_never_replayed(journal, calls, tmp_path):
    class Handle:
        def __init__(self, n):
            self.n = n
            self.lock = threading.Lock()  # no stable content

    n_items = World(tmp_path / "n.json", n=2)

    def build():
        @task(cache=False)
        def handles():
            return [Handle(i) for i in range(n_items.get("n"))]

        @task(depends_on=[handles], for_each="handles")
        def use(handles):
            calls.hit("use")
            return handles.n

        return use

    Flow(build(), journal_path=journal, log=False).run()
    assert calls.take() == {"use": 2}
    n_items.set(n=3)  # the list grows: nothing may take another item's value
    flow = Flow(build(), journal_path=journal, log=False)
    flow.run()
    assert calls.take() == {"use": 3}
    assert flow.value("use") == [0, 1, 2]


def test_a_for_each_task_replayed_whole_fills_its_items(journal):
    @task
    def ids():
        return [10, 20]

    @task(depends_on=[ids], for_each="ids")
    def double(ids):
        return ids * 2

    Flow(double, journal_path=journal, log=False).run()
    flow = Flow(double, journal_path=journal, log=False)
    flow.run()
    r = flow.results["double"]
    assert r.cached
    assert [(it.index, it.item, it.value, it.cached) for it in r.items] == [
        (0, 10, 20, True), (1, 20, 40, True)]


# ----- inputs and version in keys ---------------------------------------------------

def test_one_script_journaled_for_two_inputs_keeps_separate_entries(journal, calls):
    @task
    def load(case_dir):
        calls.hit(case_dir)
        return f"loaded {case_dir}"

    for case in ["a", "b", "a", "b"]:
        flow = Flow(load, journal_path=journal, inputs={"case_dir": case}, log=False)
        flow.run()
        assert flow.value(load) == f"loaded {case}"
    assert calls.take() == {"a": 1, "b": 1}


def _script(tmp_path, body_line, version):
    path = tmp_path / "job.py"
    version_arg = f", version={version!r}" if version else ""
    path.write_text(textwrap.dedent(f"""
        import json, sys
        from flowing import Flow, task

        @task(name="step"{version_arg})
        def step():
            {body_line}

        flow = Flow(step, journal_path=sys.argv[1], log=False)
        flow.run()
        print(json.dumps([flow.value(step), flow.results["step"].cached]))
    """))
    return path


def _run_script(path, journal, repo_env):
    out = subprocess.run([sys.executable, str(path), journal], env=repo_env, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_version_pins_the_key_across_code_edits_and_a_bump_reruns(tmp_path, journal, repo_env):
    path = _script(tmp_path, "return 1", "v1")
    assert _run_script(path, journal, repo_env) == [1, False]
    path = _script(tmp_path, "return 2  # edited, same version", "v1")
    assert _run_script(path, journal, repo_env) == [1, True]  # the user said: same results
    path = _script(tmp_path, "return 2", "v2")
    assert _run_script(path, journal, repo_env) == [2, False]
    path = _script(tmp_path, "return 3", None)
    assert _run_script(path, journal, repo_env) == [3, False]
    path = _script(tmp_path, "return 4", None)  # without version=, the code decides
    assert _run_script(path, journal, repo_env) == [4, False]


def test_override_is_replayed_in_a_fresh_flow(journal, calls):
    def build():
        @task
        def expensive():
            calls.hit("expensive")
            return "computed"

        @task(depends_on=[expensive])
        def use(expensive):
            return expensive + "!"

        return use

    flow = Flow(build(), journal_path=journal, log=False)
    flow.override("expensive", "given")
    fresh = Flow(build(), journal_path=journal, log=False)
    fresh.run()
    assert fresh.value("use") == "given!"
    assert calls.take() == {}


def test_an_uncacheable_task_warns_once_runs_and_is_not_journaled(journal, calls):
    import logging

    from helpers import ListHandler

    lock = threading.Lock()  # a closure value with no stable content

    def build():
        @task
        def guarded():
            with lock:
                calls.hit("guarded")
            return 1

        @task(depends_on=[guarded])
        def after(guarded):
            calls.hit("after")
            return guarded + 1

        return after

    handler = ListHandler()
    logger = logging.getLogger("test-uncacheable")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    Flow(build(), journal_path=journal, log=logger).run()
    flow = Flow(build(), journal_path=journal, log=logger)
    flow.run()
    assert calls.take() == {"guarded": 2, "after": 1}  # after: early cutoff on guarded's value
    warnings = [m for m in handler.messages if m.startswith("task 'guarded': not cached")]
    assert len(warnings) == 2, handler.messages  # one per run
    assert "version=" in warnings[0]
    assert flow.results["after"].cached and not flow.results["guarded"].cached
    from flowing.journal.scan import iter_entries

    names = {e.name for e in iter_entries(journal, logger) if e.enc != "none"}
    assert "guarded" not in names


def test_an_override_of_a_cache_false_task_is_replayed_in_a_fresh_flow(journal, calls):
    def build():
        @task(cache=False)
        def prices():
            calls.hit("prices")
            return [1]

        @task(depends_on=[prices])
        def total(prices):
            return sum(prices)

        return total

    Flow(build(), journal_path=journal, log=False).override("prices", [5, 5])
    fresh = Flow(build(), journal_path=journal, log=False)
    fresh.run()
    assert fresh.value("total") == 10 and calls.take() == {}


def test_compact_keeps_the_value_a_run_would_replay_when_the_latest_line_is_a_marker(
        journal, calls, tmp_path):
    import logging

    from flowing.journal.rewrite import compact

    world = World(tmp_path / "w.json", gen=False)

    def build():
        @task(cache=False)
        def source():
            return (x for x in [1, 2]) if world.get("gen") else [1, 2]

        @task(depends_on=[source])
        def down(source):
            calls.hit("down")
            return sum(source)

        return down

    def run():
        Flow(build(), journal_path=journal, log=False).run()
        return calls.take()

    assert run() == {"down": 1}
    world.set(gen=True)
    assert run() == {"down": 1}   # a generator: no stable content, a marker is written
    world.set(gen=False)
    assert run() == {}            # the value line written by the first run replays
    compact(journal, logging.getLogger("test"))
    assert run() == {}            # and compact kept it


def test_a_task_that_runs_under_a_new_key_says_so(journal):
    @task
    def fetch(base_url):
        return base_url + "/x"

    Flow(fetch, journal_path=journal, inputs={"base_url": "http://a"}, log=False).run()
    flow = Flow(fetch, journal_path=journal, inputs={"base_url": "http://b"}, log=False)
    flow.run()
    assert flow.why == {"fetch": "input 'base_url' changed"}
    assert "(ran: input 'base_url' changed)" in flow.summary()


def test_a_first_run_explains_nothing(journal):
    @task(cache=False)
    def listing():
        return [1]

    @task(depends_on=[listing])
    def use(listing):
        return listing

    flow = Flow(use, journal_path=journal, log=False)
    flow.run()
    assert flow.why == {}
    again = Flow(use, journal_path=journal, log=False)
    again.run()
    assert again.why == {"listing": "cache=False"}


def test_forgetting_one_item_runs_that_item_again_and_replays_the_others(journal, calls):
    import logging

    from flowing.journal.rewrite import forget

    def build():
        @task
        def ids():
            return [1, 2, 3]

        @task(depends_on=[ids], for_each="ids")
        def fetch(ids):
            calls.hit(f"fetch{ids}")
            return ids * 10

        @task(depends_on=[fetch])
        def total(fetch):
            calls.hit("total")
            return sum(fetch)

        return total

    Flow(build(), journal_path=journal, log=False).run()
    calls.take()
    r = forget(journal, ["fetch[1]"], logging.getLogger("test"))
    assert "fetch" in r.downstream and "total" in r.downstream
    flow = Flow(build(), journal_path=journal, log=False)
    flow.run()
    assert calls.take() == {"fetch2": 1, "total": 1}  # item 1 is the value 2
    assert flow.value("total") == 60


def test_an_override_never_reaches_another_task_that_shares_its_step_key(journal):
    def read_sensor():
        return "live reading"

    def build():
        north = task(read_sensor, name="north", cache=False)
        south = task(read_sensor, name="south", cache=False)
        return north, south

    north, south = build()
    flow = Flow(north, south, journal_path=journal, log=False)
    flow.override(north, "north: use 17.0")
    flow.run()
    assert flow.value("north") == "north: use 17.0"
    assert flow.value("south") == "live reading"
    fresh = Flow(*build(), journal_path=journal, log=False)
    fresh.run()
    assert (fresh.value("north"), fresh.value("south")) == ("north: use 17.0", "live reading")


def test_override_then_resume_recomputes_what_was_computed_from_the_old_value():
    @task
    def rate():
        return 1.0

    @task(depends_on=[rate])
    def price(rate):
        return 100 * rate

    @task
    def urls():
        return ["http://a", "http://b"]

    @task(depends_on=[urls], for_each="urls")
    def page(urls):
        return f"page of {urls}"

    flow = Flow(price, page, log=False)
    flow.run()
    flow.override(rate, 2.0)
    flow.override(urls, ["http://x", "http://y"])
    flow.resume()
    assert flow.value(price) == 200.0
    assert flow.value(page) == ["page of http://x", "page of http://y"]


def test_cache_ttl_is_not_bypassed_through_a_for_each_tasks_whole_entry(journal, calls, tmp_path):
    symbols = World(tmp_path / "s.json", now=["a"])

    def build():
        @task(cache=False)
        def names():
            return symbols.get("now")

        @task(depends_on=[names], for_each="names", cache_ttl_s=0.5)
        def quote(names):
            calls.hit(names)
            return names.upper()

        return quote

    Flow(build(), journal_path=journal, log=False).run()
    symbols.set(now=["a", "b"])
    Flow(build(), journal_path=journal, log=False).run()  # 'a' replayed, 'b' new
    assert calls.take() == {"a": 1, "b": 1}
    time.sleep(0.7)  # both items are older than the ttl now
    Flow(build(), journal_path=journal, log=False).run()
    assert calls.take() == {"a": 1, "b": 1}


def test_a_body_that_changes_a_dependency_in_place_is_not_replayed_as_if_it_had_not(
        journal, tmp_path):
    world = World(tmp_path / "w.json", w=1)

    def build():
        @task
        def settings():
            return {"n": 0}

        @task(depends_on=[settings], cache=False)
        def tweak(settings):
            settings["n"] = world.get("w")  # changes its dependency's value in place
            return None

        @task(depends_on=[settings, tweak])
        def use(settings, tweak):
            return settings["n"] * 10

        return use

    first = Flow(build(), journal_path=journal, log=False)
    first.run()
    assert first.value("use") == 10
    world.set(w=2)
    second = Flow(build(), journal_path=journal, log=False)
    second.run()
    assert second.value("use") == 20  # what a run without a journal computes
    assert not second.results["use"].cached
