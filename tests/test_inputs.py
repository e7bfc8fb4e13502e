"""Flow(inputs={...}): parameters that are not dependencies (SPEC §3 Inputs)."""

import pytest

from flowing import Flow, task


def test_a_parameter_that_is_no_dependency_is_filled_from_inputs():
    @task
    def listing(folder):
        return [f"{folder}/a.csv", f"{folder}/b.csv"]

    @task(depends_on=[listing])
    def count(listing, suffix=".csv"):
        return sum(1 for p in listing if p.endswith(suffix))

    flow = Flow(count, inputs={"folder": "/data"}, log=False)
    flow.run()
    assert flow.value(listing) == ["/data/a.csv", "/data/b.csv"]
    assert flow.value(count) == 2


def test_inputs_reach_items_and_async_bodies_but_not_gates():
    seen = []

    @task
    def ids():
        return [1, 2]

    def gate(ids):  # a gate sees the dependencies only
        seen.append(sorted(ids))
        return True

    @task(depends_on=[ids], for_each="ids", when=gate)
    async def fetch(ids, base_url):
        return f"{base_url}/{ids}"

    flow = Flow(fetch, inputs={"base_url": "http://x"}, log=False)
    flow.run()
    assert flow.value(fetch) == ["http://x/1", "http://x/2"]
    assert seen == [[1, 2]]


def test_a_missing_input_is_a_build_time_error_naming_task_parameter_and_both_fixes():
    @task
    def load(case_dir):
        return case_dir

    with pytest.raises(ValueError) as info:
        Flow(load, log=False)
    text = str(info.value)
    assert "load" in text and "case_dir" in text
    assert "inputs" in text and "depends_on" in text


def test_an_input_named_like_a_dependency_is_a_build_time_error():
    @task
    def fetch():
        return 1

    @task(depends_on=[fetch])
    def use(fetch):
        return fetch

    with pytest.raises(ValueError, match="fetch"):
        Flow(use, inputs={"fetch": 2}, log=False)


def test_inputs_must_be_a_mapping_of_names():
    @task
    def a():
        return 1

    with pytest.raises(TypeError, match="inputs"):
        Flow(a, inputs=[("x", 1)], log=False)


def test_gates_receive_the_inputs_they_name():
    @task
    def totals():
        return {"a": 3, "b": 4}

    @task(depends_on=[totals], when=lambda totals, threshold: max(totals.values()) > threshold,
          validate=lambda totals: None)
    def alert(totals):
        return "ALERT"

    quiet = Flow(alert, inputs={"threshold": 10}, log=False)
    quiet.run()
    assert quiet.results["alert"].state.value == "skipped" and quiet.ok
    loud = Flow(alert, inputs={"threshold": 1}, log=False)
    loud.run()
    assert loud.value(alert) == "ALERT"


def test_a_gate_parameter_that_nothing_supplies_is_a_build_time_error():
    @task
    def totals():
        return {}

    @task(depends_on=[totals], when=lambda totals, threshold: True)
    def alert(totals):
        return 1

    with pytest.raises(ValueError) as info:
        Flow(alert, log=False)
    assert "when=" in str(info.value) and "threshold" in str(info.value)
    assert "inputs" in str(info.value)


def test_a_gate_input_is_part_of_the_step_key(tmp_path):
    journal = str(tmp_path / "run.jsonl")

    @task(when=lambda limit: limit > 5)
    def maybe():
        return "ran"

    first = Flow(maybe, inputs={"limit": 10}, journal_path=journal, log=False)
    first.run()
    assert first.value(maybe) == "ran"
    other = Flow(maybe, inputs={"limit": 1}, journal_path=journal, log=False)
    other.run()
    assert other.results["maybe"].state.value == "skipped"  # not replayed from limit=10


@pytest.mark.parametrize("reader", ["task", "item"])
def test_a_task_reading_an_input_changed_in_place_is_never_replayed(tmp_path, repo_env, reader):
    # 'change' sets a key of the input dict; 'b' runs later and reads the changed
    # value. b's key covers the input as it was when the run started, so b must not
    # be journaled: once 'change' no longer changes it, b must read the original.
    import subprocess
    import sys
    import textwrap

    b = ('''
        @task(depends_on=[gap])
        def b(gap, cfg):
            return cfg["scale"]
    ''' if reader == "task" else '''
        @task(depends_on=[gap], for_each="gap")
        def b(gap, cfg):
            return cfg["scale"]
    ''')
    (tmp_path / "f.py").write_text(textwrap.dedent('''
        import os
        from flowing import Flow, task

        CHANGE = os.environ["CHANGE"]

        @task(version=CHANGE)
        def change(cfg):
            if CHANGE == "yes":
                cfg["scale"] = 100
            return [1]

        @task(depends_on=[change])
        def gap(change):
            return change
    ''') + textwrap.dedent(b) + textwrap.dedent('''
        f = Flow(b, journal_path="run.jsonl", log=False, max_workers=1,
                 inputs={"cfg": {"scale": 1}})
        print(f.run()["b"].value)
    '''))

    def run(change: str) -> str:
        p = subprocess.run([sys.executable, "f.py"], cwd=tmp_path,
                           env={**repo_env, "CHANGE": change}, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    want = "100" if reader == "task" else "[100]"
    assert run("yes") == want
    assert run("no") == want.replace("100", "1")
