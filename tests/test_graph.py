"""Building the graph: reachability, layers, and the checks that run before any body."""

import concurrent.futures
import logging

import pytest

from flowing import Flow, task


def _chain():
    calls = []

    @task
    def a():
        calls.append("a")
        return 1

    @task(depends_on=[a])
    def b(a):
        calls.append("b")
        return a + 1

    @task(depends_on=[a])
    def c(a):
        calls.append("c")
        return a + 2

    @task(depends_on=[b, c])
    def d(b, c):
        calls.append("d")
        return b + c

    return a, b, c, d, calls


def test_plan_is_longest_path_layers_and_runs_nothing():
    a, b, c, d, calls = _chain()
    flow = Flow(d, log=False)
    assert flow.plan() == [["a"], ["b", "c"], ["d"]]
    assert calls == []
    assert flow.results == {}


def test_only_reachable_tasks_are_in_the_graph():
    a, b, c, d, calls = _chain()

    @task
    def unrelated():
        calls.append("unrelated")

    flow = Flow(b, log=False)
    assert flow.plan() == [["a"], ["b"]]
    flow.run()
    assert sorted(calls) == ["a", "b"]
    assert list(flow.results) == ["a", "b"]


def test_several_terminals_share_dependencies():
    a, b, c, d, calls = _chain()
    flow = Flow(b, c, log=False)
    flow.run()
    assert sorted(calls) == ["a", "b", "c"]
    assert flow.value(b) == 2 and flow.value(c) == 3


def test_longest_path_layering():
    @task
    def a():
        return 1

    @task(depends_on=[a])
    def b(a):
        return 1

    @task(depends_on=[a, b])
    def c(a, b):
        return 1

    assert Flow(c, log=False).plan() == [["a"], ["b"], ["c"]]


# --- Flow() arguments ---

def test_flow_needs_a_terminal():
    with pytest.raises(ValueError, match="terminal"):
        Flow()


def test_terminal_that_is_a_plain_function():
    def plain():
        pass

    with pytest.raises(TypeError, match="decorate it with @task"):
        Flow(plain)
    with pytest.raises(TypeError):
        Flow("plain")


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-3, ValueError),
                                        (2.0, TypeError), (True, TypeError)])
def test_bad_max_workers(value, exc):
    t = task(lambda: 1, name="t")
    with pytest.raises(exc, match="max_workers"):
        Flow(t, max_workers=value)


def test_unknown_schedule():
    t = task(lambda: 1, name="t")
    with pytest.raises(ValueError, match="schedule"):
        Flow(t, schedule="fast")


def test_bad_executor_log_and_hook():
    t = task(lambda: 1, name="t")
    with pytest.raises(TypeError, match="executor"):
        Flow(t, executor=object())
    with pytest.raises(TypeError, match="log"):
        Flow(t, log="yes")
    with pytest.raises(TypeError, match="on_event"):
        Flow(t, on_event="print")


def test_accepted_log_forms():
    t = task(lambda: 1, name="t")
    Flow(t, log=False).run()
    logger = logging.getLogger("tests.graph.custom")
    logger.addHandler(logging.NullHandler())
    Flow(t, log=logger).run()
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        assert Flow(t, executor=ex, log=False).run()["t"].ok


# --- graph checks ---

def test_cycle_is_shown():
    @task
    def a(**kw):
        return 1

    @task(depends_on=[a])
    def b(a):
        return 1

    a.depends_on.append(b)
    with pytest.raises(ValueError) as info:
        Flow(b, log=False)
    message = str(info.value)
    assert "cycle" in message
    assert "a -> b -> a" in message or "b -> a -> b" in message


def test_self_cycle():
    @task
    def a(**kw):
        return 1

    a.depends_on.append(a)
    with pytest.raises(ValueError, match="a -> a"):
        Flow(a, log=False)


def test_longer_cycle_lists_every_member():
    @task
    def a(**kw):
        pass

    @task(depends_on=[a])
    def b(a):
        pass

    @task(depends_on=[b])
    def c(b):
        pass

    a.depends_on.append(c)
    with pytest.raises(ValueError) as info:
        Flow(c, log=False)
    message = str(info.value)
    assert all(n in message for n in "abc")
    assert "->" in message


def test_dependency_appended_after_decoration_is_checked():
    @task
    def a():
        pass

    @task(depends_on=[a])
    def b(a, **kw):
        pass

    b.depends_on.append("a")
    with pytest.raises(TypeError, match="@task|not its name"):
        Flow(b, log=False)


def test_duplicate_names_name_both_functions():
    def make_first():
        @task(name="load")
        def first():
            return 1
        return first

    def make_second():
        @task(name="load")
        def second():
            return 2
        return second

    one, two = make_first(), make_second()

    @task(depends_on=[one])
    def use1(load):
        pass

    use1.depends_on.append(two)  # two tasks called "load" in one graph
    with pytest.raises(ValueError) as info:
        Flow(use1, log=False)
    message = str(info.value)
    assert "load" in message
    assert "first" in message and "second" in message


def test_missing_parameter_names_both_tasks():
    calls = []

    @task
    def fetch():
        calls.append("fetch")
        return 1

    @task(depends_on=[fetch])
    def process(data):
        calls.append("process")

    with pytest.raises(ValueError) as info:
        Flow(process, log=False)
    message = str(info.value)
    assert "process" in message and "fetch" in message
    assert calls == []


def test_var_keyword_accepts_every_dependency():
    @task
    def fetch():
        return 5

    @task(depends_on=[fetch])
    def process(**deps):
        return deps

    flow = Flow(process, log=False)
    assert flow.run()["process"].value == {"fetch": 5}


def test_required_parameter_no_dependency_provides():
    @task
    def fetch():
        return 1

    @task(depends_on=[fetch])
    def process(fetch, extra):
        pass

    with pytest.raises(ValueError) as info:
        Flow(process, log=False)
    assert "extra" in str(info.value) and "process" in str(info.value)


def test_parameters_with_defaults_are_fine():
    @task
    def fetch():
        return 1

    @task(depends_on=[fetch])
    def process(fetch, scale=10, *, offset=1):
        return fetch * scale + offset

    assert Flow(process, log=False).run()["process"].value == 11


def test_positional_only_parameter_cannot_receive_a_dependency():
    @task
    def fetch():
        return 1

    def body(fetch, /):
        return fetch

    with pytest.raises(ValueError, match="fetch"):
        Flow(task(body, name="process", depends_on=[fetch]), log=False)


def test_main_task_may_not_depend_on_a_detached_task():
    @task
    def a():
        pass

    @task(depends_on=[a], detached=True)
    def notify(a):
        pass

    @task(depends_on=[notify])
    def after(notify):
        pass

    with pytest.raises(ValueError) as info:
        Flow(after, log=False)
    assert "after" in str(info.value) and "notify" in str(info.value)


def test_checks_run_before_any_body():
    calls = []

    @task
    def ok_task():
        calls.append("ok")

    @task(depends_on=[ok_task])
    def broken():  # no parameter for ok_task
        calls.append("broken")

    with pytest.raises(ValueError):
        Flow(ok_task, broken, log=False)
    assert calls == []


def test_detached_tasks_are_planned_after_the_main_layers():
    @task
    def a():
        pass

    @task(depends_on=[a])
    def b(a):
        pass

    @task(depends_on=[a], detached=True)
    def d1(a):
        pass

    @task(depends_on=[d1], detached=True)
    def d2(d1):
        pass

    assert Flow(b, log=False).plan() == [["a"], ["b"], ["d1"], ["d2"]]


def test_detached_task_with_a_dependency_outside_the_graph_is_ignored():
    @task
    def a():
        pass

    @task
    def elsewhere():
        pass

    @task(depends_on=[a, elsewhere], detached=True)
    def d(a, elsewhere):
        pass

    assert Flow(a, log=False).plan() == [["a"]]


def test_detached_chain_joins_by_fixed_point_regardless_of_declaration_order():
    @task
    def a():
        return 1

    # declare the chain in an order where d2 is registered before d1
    def d1_body(a):
        return a + 1

    def d2_body(d1):
        return d1 + 1

    d1 = task(d1_body, name="d1", depends_on=[a], detached=True)
    d2 = task(d2_body, name="d2", depends_on=[d1], detached=True)
    from flowing.tasks import _registry
    _registry.reverse()  # d2 first, d1 second
    flow = Flow(a, log=False)
    assert flow.plan() == [["a"], ["d1"], ["d2"]]
    flow.run()
    assert flow.value(d2) == 3
