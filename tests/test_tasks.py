"""Declaring tasks: the decorator forms, TaskDef attributes and argument checks."""

import functools

import pytest

import flowing
from flowing import Limit, TaskDef, task
from flowing.tasks import registered_tasks


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


def test_partial_without_name_is_rejected_and_with_name_accepted():
    def add(a, b):
        return a + b

    with pytest.raises(ValueError, match="name="):
        task(functools.partial(add, 1))
    t = task(functools.partial(add, 1), name="add1")
    assert t(b=2) == 3


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
