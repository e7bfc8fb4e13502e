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
