"""Declaring tasks: the decorator forms, TaskDef attributes and argument checks."""

import copy
import functools
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction

import pytest

import flowing
from flowing import Flow, Limit, TaskDef, task
from flowing.tasks import registered_tasks

# Module-level tasks: they pickle by reference (see the pickling tests below).


@task
def module_level_source():
    return 1


@task(depends_on=[module_level_source], version="3", cache=False, cache_ttl_s=9, timeout_s=2)
def module_level_step(module_level_source):
    return module_level_source + 1


def module_level_body(module_level_source):
    return module_level_source * 10


class ModuleLevelJobs:
    @task
    def in_a_class():  # a task declared in a class body is reachable by name too
        return "in a class"


def test_bare_decorator_defaults():
    @task
    def fetch():
        return 41

    assert isinstance(fetch, TaskDef)
    assert fetch.name == "fetch"
    assert fetch.depends_on == []
    assert fetch.retry == 0
    assert fetch.retry_backoff_base_ms == 1000
    assert fetch.retry_max_backoff_ms == 30_000
    assert fetch.retry_on == (Exception,)
    assert fetch.timeout_s is None
    assert fetch.detached is False
    assert fetch.when is None and fetch.validate is None and fetch.retry_until is None
    assert fetch.for_each is None and fetch.limit is None
    assert fetch.version is None and fetch.cache is True and fetch.cache_ttl_s is None
    assert fetch() == 41  # calling a TaskDef calls its function


def test_decorator_with_arguments_keeps_every_attribute():
    lim = Limit(max_concurrency=2)

    def when(**kw):
        return True

    def validate(**kw):
        pass

    def until(v):
        return True

    @task
    def src():
        return [1]

    @task(depends_on=[src], name="custom", retry=3, retry_backoff_base_ms=5,
          retry_max_backoff_ms=50, retry_on=(ValueError, KeyError), timeout_s=2,
          when=when, validate=validate, retry_until=until, for_each="src", limit=lim)
    def body(src):
        return src * 2

    assert body.name == "custom"
    assert body.fn.__name__ == "body"
    assert body.depends_on == [src]
    assert isinstance(body.depends_on, list)
    assert body.retry == 3
    assert body.retry_backoff_base_ms == 5
    assert body.retry_max_backoff_ms == 50
    assert body.retry_on == (ValueError, KeyError)
    assert body.timeout_s == 2.0
    assert body.when is when and body.validate is validate and body.retry_until is until
    assert body.for_each == "src"
    assert body.limit is lim
    assert body(src=3) == 6


def test_called_directly_in_a_loop():
    made = [task(lambda i=i: i, name=f"step{i}") for i in range(3)]
    assert [t.name for t in made] == ["step0", "step1", "step2"]
    assert [t() for t in made] == [0, 1, 2]


def test_lambda_without_name_is_rejected():
    with pytest.raises(ValueError, match="name="):
        task(lambda: 1)


def test_partial_is_named_after_its_function_and_a_partial_of_a_lambda_needs_a_name():
    def add(a, b):
        return a + b

    assert task(functools.partial(add, 1)).name == "add"
    assert task(functools.partial(functools.partial(add), 1)).name == "add"
    t = task(functools.partial(add, 1), name="add1")
    assert t.name == "add1" and t(b=2) == 3
    with pytest.raises(ValueError, match="name="):
        task(functools.partial(lambda a: a, 1))


def test_non_callable_is_rejected():
    with pytest.raises(TypeError):
        task(42)


@pytest.mark.parametrize("bad_name", ["", 3])
def test_bad_name_is_rejected(bad_name):
    with pytest.raises(TypeError):
        task(lambda: 1, name=bad_name)


def test_taskdefs_compare_and_hash_by_identity():
    def f():
        return 1

    a, b = task(f), task(f)
    assert a.name == b.name
    assert a != b
    assert a == a
    assert len({a, b}) == 2
    assert {a: 1}[a] == 1


def test_single_taskdef_and_duplicates_in_depends_on():
    @task
    def a():
        return 1

    @task(depends_on=a)
    def b(a):
        return a

    @task(depends_on=[a, a])
    def c(a):
        return a

    assert b.depends_on == [a]
    assert c.depends_on == [a]


def test_async_body_is_detected():
    @task
    async def coro():
        return 1

    @task
    def plain():
        return 1

    assert coro.is_async is True
    assert plain.is_async is False


def test_every_task_is_registered_and_clear_registry_empties_it():
    @task
    def one():
        pass

    two = task(lambda: 2, name="two")
    assert registered_tasks() == [one, two]
    flowing.clear_registry()
    assert registered_tasks() == []
    # the same function as the top-level export
    assert flowing.clear_registry is flowing.tasks.clear_registry


def test_repr_names_the_task_and_its_dependencies():
    @task
    def a():
        pass

    @task(depends_on=[a])
    def b(a):
        pass

    assert "b" in repr(b) and "a" in repr(b)


# --- argument checks: raise at decoration, naming the task and the argument ---

def _plain():
    return 1


@pytest.mark.parametrize("dep, words", [
    (_plain, ["_plain", "@task"]),
    ("fetch", ["'fetch'", "not its name"]),
    (None, ["None"]),
    (3, ["3"]),
])
def test_depends_on_item_that_is_not_a_task(dep, words):
    with pytest.raises(TypeError) as info:
        @task(depends_on=[dep])
        def consumer(**kw):
            pass
    message = str(info.value)
    assert "consumer" in message
    for w in words:
        assert w in message


def test_plain_function_dependency_says_to_decorate():
    with pytest.raises(TypeError, match="decorate it with @task"):
        task(lambda **kw: 1, name="x", depends_on=[_plain])


@pytest.mark.parametrize("deps", ["fetch", 5, None])
def test_depends_on_that_is_not_a_list(deps):
    with pytest.raises(TypeError, match="depends_on"):
        task(lambda: 1, name="x", depends_on=deps)


@pytest.mark.parametrize("value, exc", [
    (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError), (None, TypeError),
])
def test_bad_retry(value, exc):
    with pytest.raises(exc) as info:
        task(lambda: 1, name="flaky", retry=value)
    assert "flaky" in str(info.value) and "retry" in str(info.value)


@pytest.mark.parametrize("arg", ["retry_backoff_base_ms", "retry_max_backoff_ms"])
@pytest.mark.parametrize("value, exc", [(-1, ValueError), (float("nan"), ValueError),
                                        ("10", TypeError), (False, TypeError)])
def test_bad_backoff(arg, value, exc):
    with pytest.raises(exc) as info:
        task(lambda: 1, name="flaky", **{arg: value})
    assert "flaky" in str(info.value) and arg in str(info.value)


def test_zero_backoff_is_allowed():
    t = task(lambda: 1, name="x", retry_backoff_base_ms=0, retry_max_backoff_ms=0)
    assert t.retry_backoff_base_ms == 0


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-0.5, ValueError),
                                        ("1", TypeError), (True, TypeError)])
def test_bad_timeout(value, exc):
    with pytest.raises(exc) as info:
        task(lambda: 1, name="slow", timeout_s=value)
    assert "slow" in str(info.value) and "timeout_s" in str(info.value)


@pytest.mark.parametrize("value", [ValueError, (ValueError, "x"), "ValueError", (int,)])
def test_retry_on(value):
    if value is ValueError:
        assert task(lambda: 1, name="x", retry_on=value).retry_on == (ValueError,)
    else:
        with pytest.raises(TypeError, match="retry_on"):
            task(lambda: 1, name="x", retry_on=value)


def test_bad_detached():
    with pytest.raises(TypeError, match="detached"):
        task(lambda: 1, name="x", detached="yes")


@pytest.mark.parametrize("arg", ["when", "validate", "retry_until"])
def test_gate_must_be_callable(arg):
    with pytest.raises(TypeError) as info:
        task(lambda: 1, name="gated", **{arg: True})
    assert "gated" in str(info.value) and arg in str(info.value)


def test_for_each_must_name_a_dependency():
    @task
    def items():
        return [1]

    with pytest.raises(ValueError) as info:
        @task(depends_on=[items], for_each="itemz")
        def each(items):
            pass
    assert "each" in str(info.value) and "itemz" in str(info.value)
    with pytest.raises(ValueError):
        task(lambda: 1, name="none", for_each="items")
    with pytest.raises(TypeError):
        task(lambda items: 1, name="num", depends_on=[items], for_each=3)


def test_for_each_accepts_the_task_itself():
    @task
    def items():
        return [1]

    t = task(lambda items: items, name="each", depends_on=[items], for_each=items)
    assert t.for_each == "items"


def test_limit_must_be_a_limit():
    with pytest.raises(TypeError) as info:
        task(lambda: 1, name="api", limit=4)
    assert "api" in str(info.value) and "Limit" in str(info.value)


def test_bad_task_creates_nothing_in_the_registry():
    with pytest.raises(ValueError):
        task(lambda: 1, name="x", retry=-1)
    assert registered_tasks() == []


# --- bodies: any callable (SPEC section 2) ---

class Client:
    def __init__(self, base):
        self.base = base

    def fetch(self):
        return self.base + 1

    async def fetch_async(self):
        return self.base + 2

    @classmethod
    def create(cls):
        return cls.__name__

    @staticmethod
    def helper():
        return "static"


class Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, fetch):
        return fetch * self.k


class AsyncScale:
    async def __call__(self, fetch):
        return fetch * 3


class HTTPFetcher:
    def __call__(self):
        return "page"


def _run(*terminals):
    flow = Flow(*terminals, log=False)
    flow.run()
    assert flow.ok, flow.summary()
    return flow


def test_bound_method_body_runs_in_a_flow():
    # used to fail at Flow(): "required parameter(s) 'self' that no dependency provides"
    fetch = task(Client(41).fetch)
    assert fetch.name == "fetch" and fetch.is_async is False

    @task(depends_on=[fetch])
    def report(fetch):
        return fetch * 2

    assert _run(report).value(report) == 84


def test_classmethod_and_staticmethod_bodies_run_in_a_flow():
    create = task(Client.create)
    helper = task(Client.helper)
    wrapped = task(staticmethod(Client.helper), name="wrapped")
    assert create.name == "create" and helper.name == "helper"
    assert wrapped.fn is Client.helper  # a staticmethod object is stored as its function
    flow = _run(create, helper, wrapped)
    assert flow.value(create) == "Client"
    assert flow.value(helper) == "static" and flow.value(wrapped) == "static"


def test_raw_classmethod_object_is_refused_with_the_fix():
    with pytest.raises(TypeError) as info:
        task(classmethod(lambda cls: 1), name="make")
    assert "task(MyClass.method)" in str(info.value)


def test_async_bound_method_body():
    get = task(Client(1).fetch_async)
    assert get.is_async is True
    assert _run(get).value(get) == 3


def test_partial_body_with_a_dependency():
    @task
    def fetch():
        return 32

    def add(base, fetch):
        return base + fetch

    total = task(functools.partial(add, 10), depends_on=[fetch])
    assert total.name == "add"
    assert _run(total).value(total) == 42


def test_callable_objects_sync_and_async():
    @task
    def fetch():
        return 5

    scale = task(Scale(2), depends_on=[fetch])
    triple = task(AsyncScale(), depends_on=[fetch])
    assert scale.name == "scale" and scale.is_async is False
    assert triple.name == "async_scale" and triple.is_async is True
    flow = _run(scale, triple)
    assert flow.value(scale) == 10 and flow.value(triple) == 15


def test_callable_object_default_name_is_its_class_in_snake_case():
    assert task(HTTPFetcher()).name == "http_fetcher"
    assert task(Scale(1)).name == "scale"


def test_is_async_sees_through_partials_of_methods_and_callable_objects():
    async def coro(x):
        return x

    assert task(functools.partial(coro, 1), name="a").is_async is True
    assert task(functools.partial(Client(1).fetch_async), name="b").is_async is True
    # inspect.iscoroutinefunction says False for these two: async __call__
    assert task(AsyncScale(), name="c0").is_async is True
    assert task(functools.partial(AsyncScale()), name="c").is_async is True
    assert task(functools.partial(Scale(1)), name="d").is_async is False
    assert task(Client(1).fetch, name="e").is_async is False


def test_a_class_is_a_body_too():
    @task
    def fetch():
        return [1, 2]

    class Summary:
        def __init__(self, fetch):
            self.n = len(fetch)

    summary = task(Summary, depends_on=[fetch])
    assert summary.name == "Summary" and summary.is_async is False
    assert _run(summary).value(summary).n == 2


def test_a_task_as_body_reuses_its_function():
    @task
    def fetch():
        return 7

    again = task(fetch, name="again")
    assert again.fn is fetch.fn and again is not fetch
    assert _run(again).value(again) == 7


def test_a_partial_of_a_task_is_named_and_awaited_like_it():
    @task
    async def fetch(page):
        return page

    first = task(functools.partial(fetch, page=1))
    assert first.name == "fetch" and first.is_async is True


def test_callable_without_a_usable_name_and_a_hostile_getattr():
    class Opaque:
        def __call__(self):
            return 1

        def __getattr__(self, attr):
            raise RuntimeError("no attributes here")

        def __repr__(self):
            raise RuntimeError("no repr either")

    # the class name would do, but a raising __getattr__ means "no usable name"
    with pytest.raises(ValueError) as info:
        task(Opaque())
    assert "name=" in str(info.value)
    assert task(Opaque(), name="opaque")() == 1


# --- numeric knobs: finite, clamped to the platform's timers (SPEC section 8) ---

@pytest.mark.parametrize("arg", ["timeout_s", "retry_backoff_base_ms",
                                 "retry_max_backoff_ms", "cache_ttl_s"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), float("-inf")])
def test_non_finite_knob_is_rejected_naming_the_task_and_the_argument(arg, value):
    with pytest.raises(ValueError) as info:
        task(lambda: 1, name="knobby", **{arg: value})
    message = str(info.value)
    assert "knobby" in message and arg in message
    assert registered_tasks() == []


@pytest.mark.parametrize("arg, fix", [("timeout_s", "timeout_s=None"),
                                      ("cache_ttl_s", "cache_ttl_s=None")])
def test_infinite_duration_says_to_write_none(arg, fix):
    with pytest.raises(ValueError, match="not a finite number") as info:
        task(lambda: 1, name="forever", **{arg: float("inf")})
    assert fix in str(info.value)


def test_huge_finite_timeout_is_clamped_and_the_run_returns():
    # timeout_s=1e10 used to hang the run: the timer raised OverflowError in a worker
    quick = task(lambda: "done", name="quick", timeout_s=1e10)
    assert quick.timeout_s == threading.TIMEOUT_MAX
    assert _run(quick).value(quick) == "done"


def test_huge_finite_timeout_on_an_async_body():
    async def coro():
        return "async done"

    t = task(coro, timeout_s=10 ** 400)  # finite, too large even for a float
    assert t.timeout_s == threading.TIMEOUT_MAX
    assert _run(t).value(t) == "async done"


def test_huge_backoffs_are_clamped_and_numbers_become_floats():
    t = task(lambda: 1, name="x", retry_backoff_base_ms=1e300, retry_max_backoff_ms=10 ** 400,
             timeout_s=Fraction(1, 2), cache_ttl_s=60)
    assert t.retry_backoff_base_ms == t.retry_max_backoff_ms == threading.TIMEOUT_MAX * 1000
    assert t.timeout_s == 0.5 and type(t.timeout_s) is float
    assert t.cache_ttl_s == 60.0 and type(t.cache_ttl_s) is float
    assert type(task(lambda: 1, name="y").retry_backoff_base_ms) is float


def test_a_number_whose_float_conversion_raises_is_a_type_error():
    class Weird(float):
        def __float__(self):
            raise RuntimeError("no float for you")

    with pytest.raises(TypeError) as info:
        task(lambda: 1, name="weird", timeout_s=Weird(1))
    assert "weird" in str(info.value) and "timeout_s" in str(info.value)


# --- version, cache, cache_ttl_s ---

def test_version_cache_and_ttl_are_kept():
    t = task(lambda: 1, name="x", version="2024-05-01", cache=False, cache_ttl_s=3600)
    assert (t.version, t.cache, t.cache_ttl_s) == ("2024-05-01", False, 3600.0)


def test_version_str_subclass_is_stored_as_a_plain_str():
    class Tag(str):
        def __eq__(self, other):
            raise RuntimeError("hostile")

        __hash__ = str.__hash__

    t = task(lambda: 1, name="x", version=Tag("v1"))
    assert type(t.version) is str and t.version == "v1"


@pytest.mark.parametrize("value, exc", [(2, TypeError), (b"1", TypeError), ("", ValueError),
                                        ("   ", ValueError)])
def test_bad_version(value, exc):
    with pytest.raises(exc) as info:
        task(lambda: 1, name="versioned", version=value)
    assert "versioned" in str(info.value) and "version" in str(info.value)


@pytest.mark.parametrize("value", ["no", 1, 0, None])
def test_bad_cache(value):
    with pytest.raises(TypeError) as info:
        task(lambda: 1, name="live", cache=value)
    assert "live" in str(info.value) and "cache" in str(info.value)


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-5, ValueError), ("10", TypeError),
                                        (True, TypeError)])
def test_bad_cache_ttl(value, exc):
    with pytest.raises(exc) as info:
        task(lambda: 1, name="ttl", cache_ttl_s=value)
    assert "ttl" in str(info.value) and "cache_ttl_s" in str(info.value)


# --- pickling: by reference for module-level tasks, else by value ---

def _slots(td):
    return {s: getattr(td, s) for s in TaskDef.__slots__ if s != "__weakref__"}


def test_module_level_task_pickles_by_reference():
    data = pickle.dumps(module_level_step)
    assert b"module_level_body" not in data and len(data) < 200  # a name, not the code
    assert pickle.loads(data) is module_level_step
    assert copy.copy(module_level_step) is module_level_step
    assert copy.deepcopy(module_level_step) is module_level_step
    in_a_class = ModuleLevelJobs.in_a_class
    assert pickle.loads(pickle.dumps(in_a_class)) is in_a_class


def test_loop_built_task_pickles_by_value():
    lim = Limit(max_concurrency=2)
    made = task(module_level_body, name="times10", depends_on=[module_level_source], retry=2,
                version="v", cache_ttl_s=5, timeout_s=1, limit=lim)
    clone = pickle.loads(pickle.dumps(made))
    assert clone is not made and clone != made  # identity: a new TaskDef
    assert clone.fn is module_level_body
    assert clone.depends_on == [module_level_source]  # dependencies by reference
    expected = _slots(made)
    got = _slots(clone)
    assert isinstance(got.pop("limit"), Limit)
    expected.pop("limit")
    assert got == expected
    assert clone(module_level_source=2) == 20
    assert registered_tasks() == [made]  # unpickling registers nothing


def test_a_task_made_from_a_module_level_task_pickles_its_function():
    # module_level_step's module name holds the TaskDef, not the function: pickling the
    # function by reference would fail ("not the same object")
    copied = task(module_level_step, name="copied", depends_on=[module_level_source])
    clone = pickle.loads(pickle.dumps(copied))
    assert clone.fn is module_level_step.fn and clone.name == "copied"


def test_a_task_whose_function_cannot_be_pickled_fails_to_pickle():
    @task
    def local():
        return 1

    anon = task(lambda: 1, name="anon")
    for td in (local, anon):
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pickle.dumps(td)


def test_unpickling_a_reference_that_is_no_longer_a_task(monkeypatch):
    data = pickle.dumps(module_level_step)
    monkeypatch.setattr(sys.modules[__name__], "module_level_step", 42)
    with pytest.raises(pickle.UnpicklingError, match="module_level_step"):
        pickle.loads(data)


def test_pickled_tasks_run_in_a_fresh_process(tmp_path, repo_env, monkeypatch):
    (tmp_path / "pickled_jobs.py").write_text(textwrap.dedent("""
        from flowing import task

        @task
        def source():
            return 21

        @task(depends_on=[source])
        def double(source):
            return source * 2

        def triple_body(source):
            return source * 3

        triple = task(triple_body, name="triple", depends_on=[source])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import pickled_jobs

    try:
        data = pickle.dumps([pickled_jobs.double, pickled_jobs.triple])
    finally:
        del sys.modules["pickled_jobs"]
    child = textwrap.dedent("""
        import pickle, sys
        from flowing import Flow
        double, triple = pickle.loads(sys.stdin.buffer.read())
        import pickled_jobs
        assert double is pickled_jobs.double, "by reference: the module's own task"
        assert triple is not pickled_jobs.triple and triple.depends_on == [pickled_jobs.source]
        flow = Flow(double, triple, log=False)
        flow.run()
        print(flow.value(double), flow.value(triple))
    """)
    env = dict(repo_env)
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    done = subprocess.run([sys.executable, "-c", child], input=data, env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.split() == [b"42", b"63"]


@pytest.mark.parametrize("bad", [1, "yes", None, 0.0])
def test_local_must_be_a_bool_naming_the_task(bad):
    with pytest.raises(TypeError, match=r"task 'f': local must be True or False"):
        task(lambda: 1, name="f", local=bad)


def test_local_without_an_executor_changes_nothing():
    from flowing import Flow

    @task(local=True)
    def here():
        return os.getpid()

    assert here.local is True and task(lambda: 1, name="g").local is False
    assert Flow(here, log=False).run()["here"].value == os.getpid()
