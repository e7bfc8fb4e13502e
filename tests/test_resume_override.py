"""Continuing a flow in the same process: resume(), resume(from_tasks=...), override()."""

import collections

import pytest

from flowing import Flow, StepState, task


def _flow_with_a_broken_step():
    calls = collections.Counter()
    state = {"broken": True}

    @task
    def fetch():
        calls["fetch"] += 1
        return 10

    @task(depends_on=[fetch])
    def parse(fetch):
        calls["parse"] += 1
        if state["broken"]:
            raise ValueError("bad row")
        return fetch * 2

    @task(depends_on=[fetch])
    def stats(fetch):
        calls["stats"] += 1
        return fetch + 1

    @task(depends_on=[parse, stats])
    def report(parse, stats):
        calls["report"] += 1
        return parse + stats

    return report, calls, state


def test_resume_keeps_successes_and_reruns_failed_and_skipped():
    report, calls, state = _flow_with_a_broken_step()
    flow = Flow(report, log=False, fail_fast=False)
    res = flow.run()
    assert res["parse"].state is StepState.FAILED
    assert res["report"].state is StepState.SKIPPED
    state["broken"] = False
    kept = flow.results["fetch"]
    res = flow.resume()
    assert res["report"].value == 31
    assert flow.ok
    assert calls == {"fetch": 1, "stats": 1, "parse": 2, "report": 1}
    assert res["fetch"] is kept  # the very same result record
    assert list(res) == ["fetch", "parse", "stats", "report"]


def test_resume_after_fail_fast_runs_the_never_started_tasks():
    calls = collections.Counter()
    broken = [True]

    @task
    def bad():
        calls["bad"] += 1
        if broken[0]:
            raise ValueError("x")
        return 1

    others = [task(lambda i=i: calls.update([f"o{i}"]) or i, name=f"o{i}") for i in range(4)]
    flow = Flow(bad, *others, max_workers=1, log=False, fail_fast=True)
    first = flow.run()
    ran_first = {n for n, r in first.items() if r.ok}
    broken[0] = False
    flow.resume()
    assert flow.ok
    for n in ran_first:
        assert calls[n] == 1
    assert all(calls[f"o{i}"] == 1 for i in range(4))


def test_resume_on_a_fresh_flow_runs_everything():
    report, calls, _ = _flow_with_a_broken_step()
    flow = Flow(report, log=False)
    flow.resume()
    assert calls["fetch"] == 1 and calls["parse"] == 1


def test_resume_of_a_successful_flow_runs_nothing():
    report, calls, state = _flow_with_a_broken_step()
    state["broken"] = False
    flow = Flow(report, log=False)
    flow.run()
    flow.resume()
    assert calls == {"fetch": 1, "parse": 1, "stats": 1, "report": 1}
    assert flow.ok


def test_resume_from_tasks_reruns_them_and_everything_downstream():
    report, calls, state = _flow_with_a_broken_step()
    state["broken"] = False
    flow = Flow(report, log=False)
    flow.run()
    flow.resume(from_tasks=[flow.graph.tasks[1]])  # parse, as a TaskDef
    assert calls == {"fetch": 1, "parse": 2, "stats": 1, "report": 2}
    flow.resume(from_tasks=["stats"])              # by name
    assert calls == {"fetch": 1, "parse": 2, "stats": 2, "report": 3}
    flow.resume(from_tasks="fetch")                # a single name
    assert calls == {"fetch": 2, "parse": 3, "stats": 3, "report": 4}
    assert flow.ok


def test_resume_from_unknown_task_suggests_a_close_match():
    report, calls, _ = _flow_with_a_broken_step()
    flow = Flow(report, log=False)
    with pytest.raises(ValueError) as info:
        flow.resume(from_tasks=["pars"])
    assert "pars" in str(info.value) and "parse" in str(info.value)
    assert sum(calls.values()) == 0

    @task
    def outsider():
        pass

    with pytest.raises(ValueError, match="outsider"):
        flow.resume(from_tasks=[outsider])


def test_override_records_a_success_without_running():
    report, calls, state = _flow_with_a_broken_step()
    flow = Flow(report, log=False)
    flow.override("parse", 100)
    r = flow.results["parse"]
    assert r.state is StepState.SUCCEEDED and r.value == 100
    assert r.attempts == 0 and r.reason == "override"
    assert flow.value("parse") == 100
    res = flow.run()  # parse is still broken, but overridden
    assert calls["parse"] == 0
    assert res["report"].value == 111
    assert res["parse"].reason == "override"
    assert flow.ok
    assert list(res) == ["fetch", "parse", "stats", "report"]


def test_override_with_a_task_object_and_resume():
    report, calls, state = _flow_with_a_broken_step()
    flow = Flow(report, log=False, fail_fast=False)
    flow.run()
    assert flow.results["parse"].state is StepState.FAILED
    parse = flow.graph.tasks[1]
    flow.override(parse, 5)
    res = flow.resume()
    assert res["report"].value == 16
    assert calls["parse"] == 1  # only the first, failed run


def test_resume_from_an_overridden_task_runs_it_again():
    report, calls, state = _flow_with_a_broken_step()
    state["broken"] = False
    flow = Flow(report, log=False)
    flow.override("parse", 1)
    flow.run()
    assert calls["parse"] == 0
    flow.resume(from_tasks=["parse"])
    assert calls["parse"] == 1
    assert flow.value("report") == 31


def test_override_unknown_task_suggests_a_close_match():
    report, _, _ = _flow_with_a_broken_step()
    flow = Flow(report, log=False)
    with pytest.raises(ValueError) as info:
        flow.override("reprot", 1)
    assert "report" in str(info.value)
    assert flow.results == {}
