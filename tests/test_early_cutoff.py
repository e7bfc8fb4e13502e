"""True early cutoff, a why that names the change, dry runs (issue 17).

Each journal case runs a flow script in FRESH processes over one journal.
Bodies append their name to ``calls.log``; the script prints one ``RESULT``
line (values, cached flags, ``flow.why``, ``summary()``, the report's whys) or,
with ``dry``, ``flow.dry_run()``.
"""

from __future__ import annotations

import os

import pytest
from scripts import ScriptProject

from flowing import Flow, task
from flowing.keys.digest import value_digest
from flowing.keys.stepkey import STEP_KEY_VERSION, compute_step_key

HEAD = '''\
import json
import sys

from flowing import Flow, task


def mark(name):
    with open("calls.log", "a") as f:
        f.write(name + "\\n")
'''

TAIL = '''

if __name__ == "__main__":
    flow = Flow(*TERMINALS, journal_path="run.jsonl", fail_fast=False)
    if sys.argv[1:] == ["dry"]:
        print("DRY " + json.dumps(flow.dry_run()), flush=True)
    else:
        results = flow.run()
        print("RESULT " + json.dumps({
            "values": {n: repr(r.value) for n, r in results.items()},
            "cached": {n: r.cached for n, r in results.items()},
            "why": flow.why, "summary": flow.summary(),
            "report": {n: t.get("why") for n, t in flow.report()["tasks"].items()}}), flush=True)
'''


class Project(ScriptProject):
    def calls(self) -> list[str]:
        log = self.path / "calls.log"
        if not log.exists():
            return []
        calls = sorted(set(log.read_text().split()))
        log.unlink()
        return calls

    def run(self, *args: str, env: dict | None = None, tag: str = "RESULT ") -> dict:
        out = super().run(*args, env=env, tag=tag)
        out["ran"] = self.calls()
        return out

    def dry(self) -> dict:
        out = super().run("dry", tag="DRY ")
        assert self.calls() == [], "a dry run called a body"
        return out


@pytest.fixture
def proj(tmp_path, repo_env):
    return Project(tmp_path, repo_env, HEAD, TAIL)


RULES = '''
K = 2


def scale(x):
    return x * K
'''

CHAIN = '''
import rules


@task
def up():
    """The listing."""
    mark("up")
    return [1, 2, 3]


@task(depends_on=[up])
def scaled(up):
    mark("scaled")
    return [rules.scale(x) for x in up]


@task(depends_on=[scaled])
def total(scaled):
    mark("total")
    return sum(scaled)


TERMINALS = [total]
'''


def test_a_step_edited_to_return_the_same_value_runs_alone(proj):
    proj.write("rules.py", RULES)
    proj.flow(CHAIN)
    assert proj.run()["ran"] == ["scaled", "total", "up"]
    # a docstring and a refactor: same value, so its dependents replay
    proj.edit("flow.py", '"""The listing."""', '"""The listing, documented."""')
    proj.edit("flow.py", "return [1, 2, 3]", "return list(range(1, 4))")
    second = proj.run()
    assert second["ran"] == ["up"]
    assert second["cached"] == {"up": False, "scaled": True, "total": True}
    assert second["why"] == {"up": "code of 'up' changed"}
    assert "(ran: code of 'up' changed)" in second["summary"]
    assert second["report"]["up"] == "code of 'up' changed"
    assert "start   up attempt=1 (code of 'up' changed)" in second["stderr"]
    # and a step that returns a different value re-runs its dependents, saying why
    proj.edit("flow.py", "return list(range(1, 4))", "return list(range(1, 5))")
    third = proj.run()
    assert third["ran"] == ["scaled", "total", "up"]
    assert third["why"]["scaled"] == "'up' returned a different value"
    assert third["values"]["total"] == "20"


def test_an_edited_helper_constant_is_named(proj):
    proj.write("rules.py", RULES)
    proj.flow(CHAIN)
    proj.run()
    proj.edit("rules.py", "K = 2", "K = 3")
    second = proj.run()
    assert second["ran"] == ["scaled", "total"]
    assert second["why"] == {"scaled": "rules.K changed",
                             "total": "'scaled' returned a different value"}
    assert second["values"]["total"] == "18"


def test_an_edited_helper_function_is_named(proj):
    proj.write("rules.py", RULES)
    proj.flow(CHAIN)
    proj.run()
    proj.edit("rules.py", "return x * K", "return K * x")  # same values
    second = proj.run()
    assert second["ran"] == ["scaled"]
    assert second["why"] == {"scaled": "code of 'scale' changed"}


def test_an_edited_input_is_named(tmp_path):
    @task
    def count(folder):
        return len(folder)

    path = tmp_path / "j.jsonl"
    Flow(count, journal_path=path, inputs={"folder": "a"}, log=False).run()
    flow = Flow(count, journal_path=path, inputs={"folder": "bb"}, log=False)
    flow.run()
    assert flow.why == {"count": "input 'folder' changed"}


# --- dry runs ----------------------------------------------------------------------------------

DRY = '''
import os

import rules


def armed():
    """Once armed, a body, gate or source that is called writes calls.log and raises."""
    if os.path.exists("armed"):
        mark("called")
        raise SystemExit("called during a dry run")


@task
def up():
    armed()
    mark("up")
    return [1, 2, 3]


def gate(up):
    armed()
    return True


@task(depends_on=[up], when=gate)
def scaled(up):
    armed()
    mark("scaled")
    return [rules.scale(x) for x in up]


@task(depends_on=[scaled], for_each="scaled")
def each(scaled):
    armed()
    mark("each")
    return scaled + 1


@task(depends_on=[each])
def total(each):
    armed()
    mark("total")
    return sum(each)


TERMINALS = [total]
'''


def test_dry_run_calls_nothing_and_names_what_would_run(proj):
    proj.write("rules.py", RULES)
    proj.flow(DRY)
    (proj.path / "armed").write_text("")
    assert proj.dry() == {"up": "run: no journal entry", "scaled": "run: no journal entry",
                          "each": "run: no journal entry", "total": "run: no journal entry"}
    os.unlink(proj.path / "armed")
    proj.run()
    (proj.path / "armed").write_text("")
    assert proj.dry() == {"up": "replay", "scaled": "replay", "each": "replay",
                          "total": "replay"}
    # an edit names the change; what depends on it may replay if its value is the same
    proj.edit("rules.py", "K = 2", "K = 3")
    assert proj.dry() == {"up": "replay", "scaled": "run: rules.K changed",
                          "each": "maybe: 'scaled' may return a different value",
                          "total": "maybe: 'each' may return a different value"}
    proj.edit("rules.py", "K = 3", "K = 2")
    # a for_each whose items are known counts them
    proj.edit("flow.py", "return scaled + 1", "return scaled + 2")
    assert proj.dry() == {"up": "replay", "scaled": "replay",
                          "each": "run: code of 'each' changed (0 of 3 items replay, 3 run)",
                          "total": "maybe: 'each' may return a different value"}
    proj.edit("flow.py", "return [1, 2, 3]", "return [1, 2, 3, 4]")
    assert proj.dry()["up"] == "run: code of 'up' changed"
    assert proj.calls() == []


def test_flowing_dry_run_env_prints_the_table_and_exits_having_run_nothing(proj):
    proj.write("rules.py", RULES)
    proj.flow(CHAIN)
    proj.run()
    before = (proj.path / "run.jsonl").read_bytes()
    proj.edit("rules.py", "K = 2", "K = 3")
    p = proj.proc(env={"FLOWING_DRY_RUN": "1"})
    assert p.returncode == 0, p.stderr
    assert "RESULT" not in p.stdout
    assert proj.calls() == []
    assert (proj.path / "run.jsonl").read_bytes() == before
    lines = p.stderr.splitlines()
    assert "nothing was run" in lines[0]
    assert [line.split() for line in lines[1:]] == [
        ["up", "replay"], ["scaled", "run:", "rules.K", "changed"],
        ["total", "maybe:", "'scaled'", "may", "return", "a", "different", "value"]]


def test_dry_run_without_a_journal_and_with_an_override(tmp_path):
    @task
    def a():
        raise AssertionError("called")

    @task(depends_on=[a])
    def b(a):
        raise AssertionError("called")

    assert Flow(b, log=False).dry_run() == {"a": "run: no journal (journal_path is not set)",
                                            "b": "run: no journal (journal_path is not set)"}
    flow = Flow(b, journal_path=tmp_path / "j.jsonl", log=False)
    flow.override(a, 5)
    assert flow.dry_run() == {"a": "replay", "b": "run: no journal entry"}


# --- for_each: items keyed by content, apart from the source's other items ------------------

def test_inserting_an_item_runs_only_that_item(proj):
    (proj.path / "items.txt").write_text("a b c")
    proj.flow('''
    @task(cache=False)
    def listing():
        mark("listing")
        return open("items.txt").read().split()


    @task(depends_on=[listing], for_each="listing")
    def upper(listing):
        mark("upper_" + listing)
        return listing.upper()


    TERMINALS = [upper]
    ''')
    proj.run()
    (proj.path / "items.txt").write_text("a x b c")
    second = proj.run()
    assert second["ran"] == ["listing", "upper_x"]
    assert second["values"]["upper"] == repr(["A", "X", "B", "C"])


# --- journals of 0.2.0: opened and appended, their entries not replayed ---------------------

def test_a_journal_written_by_0_2_0_opens_and_appends_but_is_not_replayed(proj):
    import hashlib
    import logging

    from flowing.journal.store import Journal

    # entries as 0.2.0 wrote them: the same line format, keys of the older rules
    # (dependency keys chained), no parts
    with Journal.open(proj.path / "run.jsonl", logging.getLogger("test")) as journal:
        keys = {}
        for name, value, deps in (("up", [1, 2, 3], []), ("scaled", [2, 4, 6], ["up"]),
                                  ("total", 12, ["scaled"])):
            keys[name] = hashlib.sha256(f"flowing-step/2/{name}".encode()).hexdigest()
            journal.record(keys[name], name, [keys[d] for d in deps], value,
                           digest=value_digest(value))
    proj.write("rules.py", RULES)
    proj.flow(CHAIN)
    second = proj.run()
    assert second["ran"] == ["scaled", "total", "up"]
    assert second["why"] == dict.fromkeys(
        ["up", "scaled", "total"], "its journal entries were written under older key rules")
    third = proj.run()
    assert third["ran"] == [] and all(third["cached"].values())
    assert third["values"]["total"] == "12"


# --- compute_step_key: dependency value digests ----------------------------------------------

def test_compute_step_key_covers_dependency_values_not_their_keys():
    @task
    def body(a):
        return a + 1

    one, two = value_digest(1), value_digest(2)
    assert STEP_KEY_VERSION == 3
    assert compute_step_key(body, {"a": one}) == compute_step_key(body, {"a": one})
    assert compute_step_key(body, {"a": one}) != compute_step_key(body, {"a": two})
    assert compute_step_key(body, {"a": one}) != compute_step_key(body, {"b": one})
    assert compute_step_key(body, [one, two]) == compute_step_key(body, [two, one])


def test_a_hostile_dependency_name_keeps_the_journal_readable(tmp_path):
    """Part names hold task names: quotes, braces, newlines and a fake value field
    must not break the entry line, the index, or the reason."""
    path = tmp_path / "j.jsonl"
    source = {"n": 1}

    def build():
        up = task(lambda: source["n"], name='we"ird}\n,"value":{')

        @task(depends_on=[up])
        def down(**kw):
            return sum(kw.values()) * 10
        return down

    Flow(build(), journal_path=path, log=False).run()
    again = Flow(build(), journal_path=path, log=False)
    assert all(r.cached for r in again.run().values())
    source["n"] = 2  # a closure value: the source's key changes, and so does its value
    changed = Flow(build(), journal_path=path, log=False)
    changed.run()
    assert changed.value("down") == 20
    assert changed.why == {'we"ird}\n,"value":{': "closure variable 'source' of '<lambda>' changed",
                           "down": '\'we"ird}\n,"value":{\' returned a different value'}
    reopened = Flow(build(), journal_path=path, log=False)
    assert reopened.dry_run() == {'we"ird}\n,"value":{': "replay", "down": "replay"}
