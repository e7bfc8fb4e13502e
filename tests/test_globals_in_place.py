"""A value a task's key read (a module-level dict, a helper's global, a class
attribute) changed in place while the run went on: the result is not journaled.

A key covers the module-level values its body and helpers read, as they were
when the run was planned. A body that runs after another body changed such a
value computed its result from the new content, under the key of the old: it
must not be journaled, or a later run starting from the old content replays
it. Every case is two runs in FRESH processes over one journal; what the
change depends on (an environment variable, a file) is outside the keys, as
in real scripts. Run 2 must give what a run without a journal gives.
"""

from __future__ import annotations

import pytest
from scripts import ScriptProject

HEAD = '''\
import json
import os
import sys

from flowing import Flow, task

FLIP = os.path.exists("flip")  # read by no key: whether a body changes a global
'''

TAIL = '''

if __name__ == "__main__":
    flow = Flow(*TERMINALS, journal_path="run.jsonl" if "--no-journal" not in sys.argv else None,
                max_workers=1)
    results = flow.run()
    print("RESULT " + json.dumps({
        "values": {n: repr(r.value) for n, r in results.items()},
        "cached": {n: r.cached for n, r in results.items()},
        "items": {n: [i.cached for i in r.items or ()] for n, r in results.items()}}),
        flush=True)
'''


@pytest.fixture
def proj(tmp_path, repo_env):
    return ScriptProject(tmp_path, repo_env, HEAD, TAIL)


def _flip_then_not(proj):
    """Run 1 with the change made by a body, run 2 without: returns both runs."""
    (proj.path / "flip").write_text("")
    first = proj.run()
    (proj.path / "flip").unlink()
    second = proj.run()
    assert second["values"] == proj.run("--no-journal")["values"], second
    return first, second


REPRO = '''
SETTINGS = {"scale": 1}


@task(version="1")
def a():
    if FLIP:
        SETTINGS["scale"] = 100
    return 1


@task(depends_on=[a])
def b(a):
    return READ()


def READ():
    return SETTINGS["scale"]


TERMINALS = [b]
'''


def test_a_global_changed_by_an_earlier_body_is_not_replayed(proj):
    proj.flow(REPRO.replace("return READ()", 'return SETTINGS["scale"]'))
    first, second = _flip_then_not(proj)
    assert first["values"]["b"] == "100"
    assert "task 'b': global 'SETTINGS' (read by its key) changed" in first["stderr"]
    assert second["values"]["b"] == "1" and not second["cached"]["b"]
    assert second["cached"]["a"]  # a's own entry is sound: its key read no SETTINGS
    third = proj.run()  # journaled now that nothing changed it: replayed
    assert third["cached"]["b"] and third["values"]["b"] == "1"


def test_a_global_read_by_a_helper_counts(proj):
    proj.flow(REPRO)
    first, second = _flip_then_not(proj)
    assert first["values"]["b"] == "100"
    assert "global 'SETTINGS'" in first["stderr"]
    assert second["values"]["b"] == "1" and not second["cached"]["b"]


def test_a_class_attribute_changed_in_place(proj):
    proj.flow('''
        class Conf:
            table = {"k": 1}


        @task(version="1")
        def a():
            if FLIP:
                Conf.table["k"] = 7
            return 1


        @task(depends_on=[a])
        def b(a):
            return Conf.table["k"]


        TERMINALS = [b]
    ''')
    first, second = _flip_then_not(proj)
    assert first["values"]["b"] == "7"
    assert "class attribute 'Conf.table'" in first["stderr"]
    assert second["values"]["b"] == "1" and not second["cached"]["b"]


def test_a_list_other_bodies_append_to_does_not_stop_unrelated_tasks(proj):
    proj.flow('''
        LOG = []
        CONFIG = {"n": 3}


        @task
        def note():
            LOG.append("noted")
            return 1


        @task(depends_on=[note])
        def other(note):
            return CONFIG["n"] + note


        TERMINALS = [other]
    ''')
    first = proj.run()
    assert "'other'" not in first["stderr"], first["stderr"]
    second = proj.run()
    assert second["cached"]["other"] and second["values"]["other"] == "4"
    # note read LOG (its key covers it) and changed it: not journaled, runs again
    assert "task 'note': global 'LOG'" in first["stderr"]
    assert not second["cached"]["note"]


def test_items_after_one_item_changed_a_global_are_not_replayed(proj):
    proj.flow('''
        TABLE = {"k": 1}


        @task
        def src():
            return list(range(6))


        @task(depends_on=[src], for_each="src")
        def use(src):
            if FLIP and src == 2:
                TABLE["k"] = 10
            return src * TABLE["k"]


        TERMINALS = [use]
    ''')
    first, second = _flip_then_not(proj)
    assert first["values"]["use"] == repr([0, 1, 20, 30, 40, 50])
    assert "task 'use': global 'TABLE' (read by its key) changed" in first["stderr"]
    assert second["values"]["use"] == repr([0, 1, 2, 3, 4, 5])
    assert second["items"]["use"][2:] == [False] * 4
    third = proj.run()
    assert third["cached"]["use"] and third["values"]["use"] == repr([0, 1, 2, 3, 4, 5])


def test_a_value_that_cannot_be_read_again_is_not_journaled(proj):
    """A global whose own code raises when read again (after an earlier body
    broke it): the run still returns, the task succeeds and is not journaled."""
    proj.flow('''
        class Touchy:
            def __init__(self):
                self.n = 1

            def __reduce_ex__(self, protocol):
                if BROKEN:
                    raise RuntimeError("cannot be read now")
                return (Touchy, ())


        BROKEN = []
        TOUCHY = Touchy()


        @task(version="1")
        def a():
            if FLIP:
                BROKEN.append(1)
            return 1


        @task(depends_on=[a])
        def b(a):
            return TOUCHY.n


        TERMINALS = [b]
    ''')
    first, second = _flip_then_not(proj)
    assert first["values"]["b"] == "1"
    assert "task 'b': global 'TOUCHY' (read by its key) changed" in first["stderr"]
    assert not second["cached"]["b"]
    assert proj.run()["cached"]["b"]


# --- rebinding: a body binds a name the key read to another object ----------------------------


def test_a_global_rebound_by_an_earlier_body_is_not_replayed(proj):
    """``global K; K = 100`` in a body: an int (never re-read) rebound, not changed."""
    proj.flow('''
        K = 1


        @task(version="1")
        def a():
            global K
            if FLIP:
                K = 100
            return 1


        @task(depends_on=[a])
        def b(a):
            return K


        TERMINALS = [b]
    ''')
    first, second = _flip_then_not(proj)
    assert first["values"]["b"] == "100"
    assert "task 'b': global 'K' (read by its key) changed or was rebound" \
        in first["stderr"]
    assert second["values"]["b"] == "1" and not second["cached"]["b"]
    assert second["cached"]["a"]
    third = proj.run()
    assert third["cached"]["b"] and third["values"]["b"] == "1"


def test_a_global_deleted_by_an_earlier_body_counts_as_rebound(proj):
    proj.flow('''
        K = 1


        @task(version="1")
        def a():
            global K
            if FLIP:
                del K
            return 1


        @task(depends_on=[a])
        def b(a):
            try:
                return K
            except NameError:
                return "gone"


        TERMINALS = [b]
    ''')
    (proj.path / "flip").write_text("")
    first = proj.run()
    assert first["values"]["b"] == "'gone'"
    assert "task 'b': global 'K'" in first["stderr"]
    (proj.path / "flip").unlink()
    second = proj.run()
    assert second["values"]["b"] == "1" and not second["cached"]["b"]


def test_a_helper_module_attribute_rebound_is_not_replayed(proj):
    proj.write("helpermod.py", '''
        K = 1
    ''')
    proj.flow('''
        import helpermod


        @task(version="1")
        def a():
            if FLIP:
                helpermod.K = 2
            return 1


        @task(depends_on=[a])
        def b(a):
            return helpermod.K


        TERMINALS = [b]
    ''')
    first, second = _flip_then_not(proj)
    assert first["values"]["b"] == "2"
    assert "task 'b': global 'helpermod.K'" in first["stderr"]
    assert second["values"]["b"] == "1" and not second["cached"]["b"]


def test_a_class_attribute_rebound_is_not_replayed(proj):
    proj.flow('''
        class Conf:
            n = 1


        @task(version="1")
        def a():
            if FLIP:
                Conf.n = 5
            return 1


        @task(depends_on=[a])
        def b(a):
            return Conf.n


        TERMINALS = [b]
    ''')
    first, second = _flip_then_not(proj)
    assert first["values"]["b"] == "5"
    assert "task 'b': class attribute 'Conf.n'" in first["stderr"]
    assert second["values"]["b"] == "1" and not second["cached"]["b"]


def test_a_task_not_reading_the_rebound_name_still_replays(proj):
    proj.flow('''
        K = 1
        OTHER = 3


        @task(version="1")
        def a():
            global K
            if FLIP:
                K = 100
            return 1


        @task(depends_on=[a])
        def b(a):
            return K


        @task(depends_on=[a])
        def c(a):
            return OTHER + a


        TERMINALS = [b, c]
    ''')
    (proj.path / "flip").write_text("")
    first = proj.run()
    assert "task 'b': global 'K'" in first["stderr"]
    assert "'c'" not in first["stderr"], first["stderr"]
    second = proj.run()
    assert second["cached"]["c"] and second["values"]["c"] == "4"
    assert not second["cached"]["b"]


def test_a_module_imported_inside_a_body_does_not_count_as_rebound(proj):
    """Importing at run time (lazily, inside a body) binds what the key read."""
    proj.write("lazymod.py", '''
        K = 7
    ''')
    proj.flow('''
        @task
        def a():
            import lazymod
            return lazymod.K


        @task(depends_on=[a])
        def b(a):
            global lazymod
            import lazymod
            return lazymod.K + a


        TERMINALS = [b]
    ''')
    first = proj.run()
    assert "journaled" not in first["stderr"], first["stderr"]
    second = proj.run()
    assert second["cached"]["a"] and second["cached"]["b"] and second["values"]["b"] == "14"
