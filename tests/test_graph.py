"""Building the graph: reachability, layers, and the checks that run before any body."""

import concurrent.futures
import functools
import logging
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowing import CycleError, Flow, task
from flowing.graph import Graph, _from_code, _from_inspect, check_signature


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
    with pytest.raises(CycleError) as info:  # a ValueError, importable from flowing
        Flow(b, log=False)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "cycle" in message
    assert "a -> b -> a" in message or "b -> a -> b" in message
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b"]
    assert " -> ".join(cycle) in message


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


# --- inputs: body parameters filled from Flow(inputs={...}) (SPEC section 3, Inputs) ---

def test_parameter_that_is_no_dependency_is_filled_from_inputs():
    # used to be refused at Flow(): "required parameter(s) 'case_dir' that no dependency
    # provides"; closures or module constants were the only way to pass it
    @task
    def fetch():
        return 1

    @task(depends_on=[fetch])
    def load(case_dir, fetch, *, scale=2):
        return f"{case_dir}:{fetch * scale}"

    graph = Graph.build([load], inputs={"case_dir": "/data", "scale": 3})
    assert graph.inputs[graph.index_of(load)] == ("case_dir", "scale")
    assert graph.inputs[graph.index_of(fetch)] == ()
    flow = Flow(load, inputs={"case_dir": "/data", "scale": 3}, log=False)
    flow.run()
    assert flow.value(load) == "/data:3"


def test_inputs_are_received_in_signature_order_only_where_named():
    @task
    def a(**kw):  # a **kwargs body receives none it doesn't name
        return kw

    @task(depends_on=[a])
    def b(a, zeta, alpha=1, **rest):
        return a

    @task(depends_on=[b])
    def c(b):
        return b

    graph = Graph.build([c], inputs=["alpha", "zeta", "unused"])
    assert [graph.inputs[graph.index_of(t)] for t in (a, b, c)] == [(), ("zeta", "alpha"), ()]
    assert graph.received_inputs() == {"zeta", "alpha"}


def test_no_inputs_shares_one_empty_tuple_and_equal_tuples_are_shared():
    tasks = [task(lambda root=None: 1, name=f"t{i}") for i in range(50)]
    graph = Graph.build(tasks)
    assert len({id(x) for x in graph.inputs}) == 1 and graph.inputs[0] == ()

    def body(case_dir):
        return case_dir

    many = [task(body, name=f"m{i}") for i in range(50)]
    graph = Graph.build(many, inputs={"case_dir"})
    assert len({id(x) for x in graph.inputs}) == 1 and graph.inputs[0] == ("case_dir",)
    # a graph made without build() receives nothing
    assert Graph(graph.tasks, graph.deps, graph.layers, graph.main_count).inputs == [()] * 50


def test_parameter_that_is_both_dependency_and_input_is_an_error():
    @task
    def config():
        return {}

    @task(depends_on=[config])
    def use(config):
        return config

    with pytest.raises(ValueError) as info:
        Graph.build([use], inputs={"config"})
    message = str(info.value)
    assert "'use'" in message and "'config'" in message
    assert "dependency" in message and "input" in message

    # a **kwargs body that doesn't name it gets the dependency and no input: no clash
    @task(depends_on=[config])
    def loose(**kw):
        return kw

    assert Graph.build([loose], inputs={"config"}).inputs == [(), ()]


def test_parameter_nothing_supplies_names_the_task_the_parameter_and_both_fixes():
    @task
    def fetch():
        return 1

    @task(depends_on=[fetch])
    def load(fetch, case_dir):
        return case_dir

    for inputs in ((), {"other": 1}):
        with pytest.raises(ValueError) as info:
            Flow(load, inputs=dict.fromkeys(inputs), log=False)
        message = str(info.value)
        assert "'load'" in message and "'case_dir'" in message
        assert "depends_on=[" in message and "inputs={'case_dir'" in message
    assert "'other'" in message  # says which inputs were given


def test_positional_only_parameter_without_default_says_so():
    def body(path, /):
        return path

    with pytest.raises(ValueError, match="positional-only") as info:
        Graph.build([task(body, name="reader")], inputs={"path"})
    assert "reader" in str(info.value)


def test_method_decorated_in_its_class_body_gets_a_hint():
    class Client:
        @task
        def fetch(self):
            return 1

    with pytest.raises(ValueError) as info:
        Flow(Client.fetch, log=False)
    message = str(info.value)
    assert "'self'" in message and "task(obj.fetch)" in message


@pytest.mark.parametrize("inputs, words", [("case_dir", "string"), ({3: "x"}, "3")])
def test_bad_inputs_argument(inputs, words):
    t = task(lambda: 1, name="t")
    with pytest.raises(TypeError, match="inputs") as info:
        Graph.build([t], inputs=inputs)
    assert words in str(info.value)


def test_detached_task_receives_inputs_too():
    @task
    def a():
        return 1

    @task(depends_on=[a], detached=True)
    def notify(a, channel):
        return channel

    graph = Graph.build([a], inputs={"channel"})
    assert graph.plan() == [["a"], ["notify"]]
    assert graph.inputs == [(), ("channel",)]


# --- signatures seen through bound methods, partials and callable objects ---

def test_bound_method_missing_a_dependency_parameter_names_both_tasks():
    class Client:
        def fetch(self):
            return 1

    @task
    def token():
        return "t"

    with pytest.raises(ValueError) as info:
        Flow(task(Client().fetch, depends_on=[token]), log=False)
    assert "'fetch'" in str(info.value) and "'token'" in str(info.value)


def test_partial_bound_positionally_or_by_keyword():
    @task
    def x():
        return 5

    def add(x, y):
        return x + y

    # bound positionally: 'x' is gone, so the dependency has nowhere to go
    with pytest.raises(ValueError, match="no parameter 'x'"):
        Flow(task(functools.partial(add, 1), name="p1", depends_on=[x]), log=False)
    # bound by keyword: 'x' is still a keyword parameter (the dependency overrides it),
    # and 'y' is still required
    with pytest.raises(ValueError, match="'y'"):
        Flow(task(functools.partial(add, x=1), name="p2", depends_on=[x]), log=False)
    ok = task(functools.partial(add, x=1, y=2), name="p3", depends_on=[x])
    flow = Flow(ok, log=False)
    flow.run()
    assert flow.value(ok) == 7


def test_callable_object_signature_is_its_call_method():
    class NeedsRows:
        def __call__(self, rows, limit):
            return rows[:limit]

    @task
    def rows():
        return [1, 2, 3]

    t = task(NeedsRows(), depends_on=[rows])
    with pytest.raises(ValueError, match="'limit'"):
        Flow(t, log=False)
    assert Graph.build([t], inputs={"limit"}).inputs[1] == ("limit",)


def test_unreadable_signature_is_trusted():
    class Hostile:
        def __call__(self, **kw):
            return 1

        @property
        def __signature__(self):
            raise RuntimeError("no signature")

    t = task(Hostile(), name="hostile")
    assert Graph.build([t], inputs={"x"}).inputs == [()]


# --- invariants ---

_NAMES = list(string.ascii_lowercase[:8])


@st.composite
def _signatures(draw):
    """Source of a def with every kind of parameter, defaults where legal."""
    names = draw(st.permutations(_NAMES))
    n_posonly = draw(st.integers(0, 2))
    n_pos = draw(st.integers(0, 3))
    n_kwonly = draw(st.integers(0, 3))
    positional = names[:n_posonly + n_pos]
    kwonly = names[n_posonly + n_pos:n_posonly + n_pos + n_kwonly]
    n_defaults = draw(st.integers(0, len(positional)))
    parts = []
    for k, p in enumerate(positional):
        parts.append(p + ("=0" if k >= len(positional) - n_defaults else ""))
        if k == n_posonly - 1:
            parts.append("/")
    star = draw(st.booleans())
    if star or kwonly:
        parts.append("*args" if star else "*")
    parts += [p + ("=0" if draw(st.booleans()) else "") for p in kwonly]
    if draw(st.booleans()):
        parts.append("**kwargs")
    return f"def body({', '.join(parts)}):\n    return 0\n"


@settings(max_examples=150, deadline=None)
@given(_signatures())
def test_code_object_reading_agrees_with_inspect(source):
    space: dict = {}
    exec(source, space)
    assert _from_code(space["body"]) == _from_inspect(space["body"]), source


@settings(max_examples=150, deadline=None)
@given(_signatures(), st.sets(st.sampled_from(_NAMES)), st.sets(st.sampled_from(_NAMES)))
def test_what_a_body_receives(source, dep_names, input_names):
    """Model: every dependency needs a parameter (or **kwargs); a parameter can't be
    both; every required one is supplied; the body receives the inputs it names."""
    space: dict = {}
    exec(source, space)
    params = _from_inspect(space["body"])
    deps = [task(lambda: 0, name=n) for n in sorted(dep_names)]
    td = task(space["body"], name="body", depends_on=deps)
    named = set(params.names)
    expect_error = (
        (not params.var_keyword and not dep_names <= named)
        or bool(params.positional_only)
        or bool(named & dep_names & input_names)
        or any(p not in dep_names | input_names for p in params.required))
    if expect_error:
        with pytest.raises(ValueError):
            Graph.build([td], inputs=input_names)
        with pytest.raises(ValueError):
            check_signature(td, input_names)
    else:
        graph = Graph.build([td], inputs=input_names)
        received = graph.inputs[graph.index_of(td)]
        assert received == tuple(p for p in params.names if p in input_names)
        assert not set(received) & dep_names
        assert check_signature(td, input_names) == received


def test_equal_input_tuples_are_shared_across_a_wide_graph():
    def body(root, case_dir):
        return case_dir

    root = task(lambda: 1, name="root")
    mids = [task(body, name=f"m{i}", depends_on=[root]) for i in range(100)]
    graph = Graph.build(mids, inputs={"case_dir"})
    assert len({id(graph.inputs[graph.index_of(m)]) for m in mids}) == 1
