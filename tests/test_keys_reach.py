"""Keys cover what a body can reach, however it reaches it (issue 14 points 1, 3, 4, 9).

Every case is two runs in FRESH processes over one journal, with an edit in
between: run 2 must give the value a run without a journal gives. The flow
script prints one ``RESULT`` line: per task its value, whether it was
replayed, and ``flow.why``.
"""

from __future__ import annotations

import pytest
from scripts import ScriptProject

HEAD = '''\
import json
import sys

from flowing import Flow, current, task
'''

TAIL = '''

if __name__ == "__main__":
    flow = Flow(*TERMINALS, journal_path="run.jsonl" if "--no-journal" not in sys.argv else None,
                fail_fast=False)
    results = flow.run()
    print("RESULT " + json.dumps({
        "values": {n: repr(r.value) for n, r in results.items()},
        "cached": {n: r.cached for n, r in results.items()},
        "why": flow.why}), flush=True)
'''


class Project(ScriptProject):
    def truth(self) -> dict:
        return self.run("--no-journal")["values"]


@pytest.fixture
def proj(tmp_path, repo_env):
    return Project(tmp_path, repo_env, HEAD, TAIL)


def _twice(proj, edit):
    """Run, edit, run again: run 2 equals a run without the journal; returns run 2."""
    first = proj.run()
    assert not any(first["cached"].values())
    edit()
    second = proj.run()
    assert second["values"] == proj.truth(), second
    return second


HLP = '''
K = 1


def f():
    return K


def g():
    return 10
'''

# (name, body of task T) -- every body reaches hlp.f, which returns hlp.K
REACHES = [
    ("import_inside", "import hlp\n    return hlp.f()"),
    ("from_import_inside", "from hlp import f\n    return f()"),
    ("import_as_inside", "import hlp as h\n    return h.f()"),
    ("alias_of_module_global", "h = hlp_global\n    return h.f()"),
    ("getattr_constant", 'return getattr(hlp_global, "f")()'),
    ("import_module_constant", 'import importlib\n    return importlib.import_module("hlp").f()'),
    ("dunder_import_constant", 'return __import__("hlp").f()'),
    ("inside_a_helper", "return helper()"),
    ("passed_to_a_function", "return call_f(hlp_global)"),
]


@pytest.mark.parametrize("body", [b for _, b in REACHES], ids=[n for n, _ in REACHES])
def test_code_reached_through_imports_is_in_the_key(proj, body):
    proj.write("hlp.py", HLP)
    body = body.replace("\n    ", "\n        ")  # inside the template below
    proj.flow(f'''
    import hlp as hlp_global


    def helper():
        import hlp
        return hlp.f()


    def call_f(module):
        return module.f()


    @task
    def T():
        {body}


    TERMINALS = [T]
    ''')
    second = _twice(proj, lambda: proj.edit("hlp.py", "K = 1", "K = 2"))
    assert second["values"] == {"T": "2"}
    assert second["cached"] == {"T": False}
    assert second["why"]["T"] == "hlp.K changed"


def test_an_unrelated_edit_of_an_imported_module_still_replays(proj):
    proj.write("hlp.py", HLP)
    proj.flow('''
    @task
    def T():
        from hlp import f
        return f()


    TERMINALS = [T]
    ''')
    second = _twice(proj, lambda: proj.edit("hlp.py", "return 10", "return 11"))
    assert second["cached"] == {"T": True}


def test_a_function_attribute_is_in_the_key(proj):
    proj.flow('''
    def scale(x):
        return x * scale.factor


    scale.factor = 2


    @task
    def T():
        return scale(10)


    TERMINALS = [T]
    ''')
    second = _twice(proj, lambda: proj.edit("flow.py", "scale.factor = 2", "scale.factor = 3"))
    assert second["values"] == {"T": "30"}
    assert second["why"]["T"] == "attribute 'factor' of 'scale' changed"


UNFOLLOWABLE = [
    ("globals", 'return globals()["hlp_global"].f()', "globals()"),
    ("computed_getattr", 'name = "f"\n    return getattr(hlp_global, name)()', "computed name"),
    ("computed_import", 'import importlib\n    name = "hlp"\n    '
                        'return importlib.import_module(name).f()', "imports a module by a"),
    ("vars_of_module", 'return vars(hlp_global)["f"]()', "computed name"),
    ("eval", 'return eval("hlp_global.f()")', "eval()"),
]


@pytest.mark.parametrize("body,what", [(b, w) for _, b, w in UNFOLLOWABLE],
                         ids=[n for n, _, _ in UNFOLLOWABLE])
def test_code_flowing_cannot_follow_makes_the_task_uncacheable(proj, body, what):
    proj.write("hlp.py", HLP)
    body = body.replace("\n    ", "\n        ")  # inside the template below
    proj.flow(f'''
    import hlp as hlp_global


    @task
    def T():
        {body}


    @task
    def other():
        return 5


    TERMINALS = [T, other]
    ''')
    second = _twice(proj, lambda: proj.edit("hlp.py", "K = 1", "K = 2"))
    assert second["values"]["T"] == "2"
    assert second["cached"] == {"T": False, "other": True}
    warnings = [line for line in second["stderr"].splitlines() if "not cached this run" in line]
    assert len(warnings) == 1, second["stderr"]
    assert "task 'T'" in warnings[0] and what in warnings[0] and "version=" in warnings[0]
    assert second["why"]["T"].startswith("not cached: ")


# --- point 3: what a body reads through current() ------------------------------------------

def test_loop_built_tasks_reading_their_name_keep_their_own_values(proj):
    proj.flow('''
    def fetch():
        return "page " + current().task


    pages = [task(fetch, name=f"page_{i}") for i in range(3)]


    @task(depends_on=pages)
    def gather(**pages):
        return sorted(pages.values())


    TERMINALS = [gather]
    ''')
    first = proj.run()
    second = proj.run()
    assert all(second["cached"].values())
    assert second["values"] == first["values"] == proj.truth()
    assert second["values"]["gather"] == repr(["page page_0", "page page_1", "page page_2"])


def test_current_read_by_a_helper_counts_too(proj):
    proj.flow('''
    from flowing import context


    def who():
        return context.current().task


    pages = [task(lambda: who() + "!", name=f"p{i}") for i in range(2)]
    TERMINALS = pages
    ''')
    proj.run()
    second = proj.run()
    assert second["values"] == {"p0": "'p0!'", "p1": "'p1!'"}
    assert all(second["cached"].values())


def test_item_index_is_in_the_key_when_the_body_reads_it(proj):
    (proj.path / "items.txt").write_text("a b c")
    proj.flow('''
    @task(cache=False)
    def source():
        return open("items.txt").read().split()


    @task(depends_on=[source], for_each="source")
    def label(source):
        return f"{current().item_index}:{source}"


    TERMINALS = [label]
    ''')
    second = _twice(proj, lambda: (proj.path / "items.txt").write_text("c a b"))
    assert second["values"]["label"] == repr(["0:c", "1:a", "2:b"])


# --- point 4: item keys from the item's content when it is handed out ------------------------

def test_an_item_refreshed_in_place_by_a_cache_false_source_gets_its_new_key(proj):
    (proj.path / "n.txt").write_text("10")
    proj.flow('''
    class Box:
        def __init__(self):
            self.n = 10


    BOX = Box()


    @task(cache=False)
    def source():
        BOX.n = int(open("n.txt").read())
        return [BOX]


    @task(depends_on=[source], for_each="source")
    def read(source):
        return source.n + 0 * BOX.n


    TERMINALS = [read]
    ''')
    proj.run()
    (proj.path / "n.txt").write_text("20")
    assert proj.run()["values"]["read"] == "[20]"  # 0.2.0 replayed [10]


# --- point 9: fingerprints do not depend on the hash seed -------------------------------------

def test_a_dataclass_with_a_frozenset_default_replays_under_another_hash_seed(proj):
    proj.flow('''
    import dataclasses


    @dataclasses.dataclass(frozen=True)
    class Rules:
        tags: frozenset = frozenset({"alpha", "beta", "gamma", "delta", "epsilon", "zeta"})
        limit: int = 3


    @task
    def T():
        return sorted(Rules().tags)[:Rules().limit]


    TERMINALS = [T]
    ''')
    proj.run(env={"PYTHONHASHSEED": "1"})
    for seed in ("2", "3", "random"):
        again = proj.run(env={"PYTHONHASHSEED": seed})
        assert again["cached"] == {"T": True}, seed
    # the fields still count
    proj.edit("flow.py", "limit: int = 3", "limit: int = 2")
    edited = proj.run(env={"PYTHONHASHSEED": "4"})
    assert edited["cached"] == {"T": False}
    assert edited["values"] == proj.truth()


def test_a_module_whose_import_raises_makes_the_task_uncacheable_and_the_run_goes_on(proj):
    proj.write("broken.py", 'raise RuntimeError("cannot import me")\n')
    proj.flow('''
    @task
    def T():
        try:
            import broken  # noqa: F401
        except RuntimeError:
            return "fallback"
        return "imported"


    TERMINALS = [T]
    ''')
    second = _twice(proj, lambda: None)
    assert second["values"] == {"T": "'fallback'"}
    assert second["cached"] == {"T": False}
    [warning] = [line for line in second["stderr"].splitlines()
                 if "not cached this run" in line]
    assert "task 'T'" in warning and "'broken'" in warning and "RuntimeError" in warning


@pytest.mark.parametrize("read", ["ctx().task", 'getattr(flowing, "current")().task',
                                  "f().task"])
def test_current_read_through_an_alias_counts(proj, read):
    proj.flow(f'''
    import flowing
    from flowing import current as ctx


    def name(f=ctx):
        return {read}


    pages = [task(name, name=f"p{{i}}") for i in range(2)]
    TERMINALS = pages
    ''')
    proj.run()
    second = proj.run()
    assert second["values"] == {"p0": "'p0'", "p1": "'p1'"}
    assert all(second["cached"].values())
