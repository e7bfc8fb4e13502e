"""Step keys: stable across processes, sensitive to behaviour, blind to cosmetics."""

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowing import stepkey  # noqa: E402
from flowing.limits import Limit  # noqa: E402
from flowing.stepkey import STEP_KEY_VERSION, compute_step_key, fingerprint, item_step_key  # noqa: E402
from flowing.tasks import TaskDef  # noqa: E402

PRINT_KEYS = Path(__file__).resolve().parent / "stepkey_fixtures" / "print_keys.py"
HEX64 = re.compile(r"[0-9a-f]{64}")


# --- a task module, and edits of it, each keyed in its own process -------------------

BASE_FLOWMOD = textwrap.dedent('''\
    import enum
    import json
    import os.path
    from dataclasses import dataclass

    import helpers_mod
    from flowing.limits import Limit
    from flowing.tasks import task

    SCALE = 3
    UNUSED = 10
    TAGS = {"beta", "alpha", "gamma", "delta", "epsilon"}
    WEIGHTS = {"b": 2, "a": 1, "c": 3}
    _SENTINEL = object()


    class Mode(enum.Enum):
        FAST = 1
        SLOW = 2


    @dataclass
    class Point:
        x: int = 0
        y: int = 1


    class Scaler:
        factor = 2

        def apply(self, v):
            return v * self.factor


    def leaf(x):
        return x * SCALE


    def helper(x):
        return leaf(x) + len(TAGS)


    def is_even(n):
        return n == 0 or is_odd(n - 1)


    def is_odd(n):
        return n != 0 and is_even(n - 1)


    def foo():
        return 1


    def bar():
        return 2


    def make_adder(k):
        def add(v, extra=5):
            return v + k + extra
        return add


    add_two = make_adder(2)


    @task
    def source():
        return foo()


    @task(depends_on=[source])
    def shaped(source):
        squares = [i * i for i in range(source + 3)]
        pick = lambda v: v % 2 == 0
        def inner(v):
            return helper(v)
        total = sum(inner(v) for v in squares if pick(v))
        lookup = {k: WEIGHTS[k] for k in sorted(WEIGHTS)}
        return {"total": total, "tags": sorted(TAGS), "lookup": lookup,
                "j": json.dumps(sorted(TAGS)), "p": os.path.join("a", "b"),
                "even": is_even(4), "sentinel": _SENTINEL is None}


    @task(depends_on=[shaped])
    def styled(shaped):
        return {"pt": Point(), "mode": Mode.FAST, "s": Scaler().apply(shaped["total"]),
                "h": helpers_mod.compute(2), "a": add_two(1)}


    @task(depends_on=[shaped, styled],
          when=lambda shaped, styled: shaped["total"] > 0,
          validate=lambda value: value is not None,
          retry_until=lambda value: value != 0)
    def report(shaped, styled):
        return shaped["total"]


    @task
    def lonely():
        return "alone"
''')

BASE_HELPERS = textwrap.dedent('''\
    RATE = 7


    def _inner(v):
        return v * RATE


    def compute(v):
        return _inner(v) + 1
''')

ALL_TASKS = {"source", "shaped", "styled", "report", "lonely"}

# name -> {file: [(old, new), ...]}; every `old` must occur exactly once.
VARIANTS = {
    "foo_to_bar": {"flowmod.py": [("return foo()", "return bar()")]},
    "helper_body": {"flowmod.py": [("leaf(x) + len(TAGS)", "leaf(x) - len(TAGS)")]},
    "helper_of_helper": {"flowmod.py": [("return x * SCALE", "return x * SCALE + 1")]},
    "constant_read": {"flowmod.py": [("SCALE = 3", "SCALE = 4")]},
    "set_constant_read": {"flowmod.py": [('"epsilon"}', '"epsilon", "zeta"}')]},
    "dict_constant_read": {"flowmod.py": [('"c": 3}', '"c": 4}')]},
    "constant_unread": {"flowmod.py": [("UNUSED = 10", "UNUSED = 11")]},
    "when": {"flowmod.py": [('shaped["total"] > 0', 'shaped["total"] > 1')]},
    "validate": {"flowmod.py": [("value is not None", "value is None")]},
    "retry_until": {"flowmod.py": [("value != 0", "value != 1")]},
    "closure_value": {"flowmod.py": [("make_adder(2)", "make_adder(3)")]},
    "default_value": {"flowmod.py": [("extra=5", "extra=6")]},
    "method_body": {"flowmod.py": [("v * self.factor", "v * self.factor * 1")]},
    "class_attribute": {"flowmod.py": [("factor = 2", "factor = 3")]},
    "enum_value": {"flowmod.py": [("FAST = 1", "FAST = 10")]},
    "dataclass_default": {"flowmod.py": [("y: int = 1", "y: int = 2")]},
    "user_module_constant": {"helpers_mod.py": [("RATE = 7", "RATE = 8")]},
    "user_module_function": {"helpers_mod.py": [("v * RATE", "v * RATE * 1")]},
    "mutual_recursion": {"flowmod.py": [("n == 0 or", "n <= 0 or")]},
    "async_lonely": {"flowmod.py": [("def lonely():", "async def lonely():")]},
    "for_lambda_body": {"flowmod.py": [("v % 2 == 0", "v % 2 == 1")]},
    # Cosmetic edits and knobs: nothing may change.
    "renamed_task": {"flowmod.py": [("@task\ndef lonely():", '@task(name="solo")\ndef lonely():')]},
    "renamed_function": {"flowmod.py": [
        ("retry_until=lambda value: value != 0)\ndef report(",
         'retry_until=lambda value: value != 0, name="report")\ndef final_report(')]},
    "knobs": {"flowmod.py": [
        ("retry_until=lambda value: value != 0)",
         "retry_until=lambda value: value != 0, retry=3, retry_backoff_base_ms=10, "
         "retry_max_backoff_ms=20, retry_on=(ValueError,), timeout_s=5, "
         "limit=Limit(max_concurrency=2, rate='5/s'))"),
        ("@task\ndef lonely():", "@task(detached=True, retry=2)\ndef lonely():")]},
    "comments_and_blank_lines": {"flowmod.py": [
        ("import enum\n", "# A header comment.\n\n\n\nimport enum\n"),
        ("def leaf(x):\n", "\n\n\ndef leaf(x):\n    # multiply by the scale\n"),
        ("@task\ndef source():", "\n\n# the first task\n\n@task\ndef source():  # here"),
        ("    total = sum(", "    # sum the even squares\n\n    total = sum(")]},
    "unused_added": {"flowmod.py": [("UNUSED = 10", "UNUSED = 10\nMORE = [1, 2, 3]\n\n\n"
                                                   "def unused_helper():\n    return MORE\n")]},
}


def _apply(source: str, edits) -> str:
    for old, new in edits:
        assert source.count(old) == 1, f"edit target {old!r} must occur exactly once"
        source = source.replace(old, new)
    return source


def _run_all(root: Path) -> dict[str, dict[str, str]]:
    """Key every variant, each in a fresh process with its own hash seed, in parallel."""
    runs = {name: (edits, "import") for name, edits in VARIANTS.items()}
    runs.update({"base": ({}, "import"), "base_again": ({}, "import"),
                 "base_as_main": ({}, "main")})
    procs = {}
    for seed, (name, (edits, mode)) in enumerate(sorted(runs.items()), start=1):
        folder = root / name
        folder.mkdir()
        (folder / "flowmod.py").write_text(_apply(BASE_FLOWMOD, edits.get("flowmod.py", ())))
        (folder / "helpers_mod.py").write_text(_apply(BASE_HELPERS,
                                                      edits.get("helpers_mod.py", ())))
        env = dict(os.environ, PYTHONHASHSEED=str(seed * 7919), PYTHONDONTWRITEBYTECODE="1")
        procs[name] = subprocess.Popen(
            [sys.executable, str(PRINT_KEYS), str(REPO), str(folder / "flowmod.py"), mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{name}: {err}"
        results[name] = json.loads(out)
    return results


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return _run_all(tmp_path_factory.mktemp("stepkey_variants"))


def _changed(keys, variant, renames=None) -> set[str]:
    renames = renames or {}
    base = keys["base"]
    other = keys[variant]
    return {name for name in base if other.get(renames.get(name, name)) != base[name]}


def test_keys_are_hex_sha256(keys):
    assert set(keys["base"]) == ALL_TASKS
    assert all(HEX64.fullmatch(k) for k in keys["base"].values())
    assert len(set(keys["base"].values())) == len(ALL_TASKS)


def test_same_keys_in_separate_processes_with_different_hash_seeds(keys):
    # The body of `shaped` holds a list comprehension, a lambda, a nested
    # function, a generator and a dict comprehension, and helpers read set
    # and dict constants whose iteration order depends on the hash seed.
    assert keys["base_again"] == keys["base"]


def test_same_keys_when_run_as_a_script(keys):
    assert keys["base_as_main"] == keys["base"]


@pytest.mark.parametrize("variant, expected", [
    ("foo_to_bar", {"source", "shaped", "styled", "report"}),
    ("helper_body", {"shaped", "styled", "report"}),
    ("helper_of_helper", {"shaped", "styled", "report"}),
    ("constant_read", {"shaped", "styled", "report"}),
    ("set_constant_read", {"shaped", "styled", "report"}),
    ("dict_constant_read", {"shaped", "styled", "report"}),
    ("mutual_recursion", {"shaped", "styled", "report"}),
    ("for_lambda_body", {"shaped", "styled", "report"}),
    ("when", {"report"}),
    ("validate", {"report"}),
    ("retry_until", {"report"}),
    ("closure_value", {"styled", "report"}),
    ("default_value", {"styled", "report"}),
    ("method_body", {"styled", "report"}),
    ("class_attribute", {"styled", "report"}),
    ("enum_value", {"styled", "report"}),
    ("dataclass_default", {"styled", "report"}),
    ("user_module_constant", {"styled", "report"}),
    ("user_module_function", {"styled", "report"}),
    ("async_lonely", {"lonely"}),
])
def test_behaviour_edits_change_the_edited_task_and_everything_downstream(keys, variant,
                                                                           expected):
    assert _changed(keys, variant) == expected


@pytest.mark.parametrize("variant, renames", [
    ("constant_unread", None),
    ("unused_added", None),
    ("knobs", None),
    ("comments_and_blank_lines", None),
    ("renamed_function", None),
    ("renamed_task", {"lonely": "solo"}),
])
def test_cosmetic_edits_and_knobs_keep_every_key(keys, variant, renames):
    assert _changed(keys, variant, renames) == set()


# --- in-process checks ---------------------------------------------------------------

def _td(fn, **options) -> TaskDef:
    options.setdefault("name", "t")
    return TaskDef(fn, **options)


def plain_body():
    return 1


def test_dependency_keys_are_chained_and_sorted():
    td = _td(plain_body)
    a, b = "a" * 64, "b" * 64
    assert compute_step_key(td, [a, b]) == compute_step_key(td, [b, a])
    assert compute_step_key(td, [a]) != compute_step_key(td, [b])
    assert compute_step_key(td, [a]) != compute_step_key(td, [])
    assert compute_step_key(td, [a, b]) != compute_step_key(td, [a])


def test_knobs_and_name_are_not_in_the_key():
    base = compute_step_key(_td(plain_body), [])
    assert compute_step_key(_td(plain_body, name="other"), []) == base
    assert compute_step_key(_td(plain_body, retry=5, retry_backoff_base_ms=1,
                                retry_max_backoff_ms=2, retry_on=(KeyError,), timeout_s=3,
                                detached=True, limit=Limit(max_concurrency=1)), []) == base


def test_hooks_and_for_each_are_in_the_key():
    up = _td(plain_body, name="up")
    other = _td(plain_body, name="other")

    def body(up, other):
        return up

    base = compute_step_key(_td(body, depends_on=[up, other]), [])
    each_up = compute_step_key(_td(body, depends_on=[up, other], for_each="up"), [])
    each_other = compute_step_key(_td(body, depends_on=[up, other], for_each="other"), [])
    assert len({base, each_up, each_other}) == 3
    with_when = compute_step_key(_td(body, depends_on=[up, other], when=lambda up, other: up), [])
    with_validate = compute_step_key(_td(body, depends_on=[up, other], validate=lambda v: v), [])
    with_until = compute_step_key(_td(body, depends_on=[up, other], retry_until=lambda v: v), [])
    assert len({base, with_when, with_validate, with_until}) == 4


def make_closure(k):
    def body():
        return k
    return body


def make_default(value):
    def body(x=value, *, y=value):
        return x + y
    return body


def test_closure_values_and_defaults_are_in_the_fingerprint():
    assert fingerprint(make_closure(1)) == fingerprint(make_closure(1))
    assert fingerprint(make_closure(1)) != fingerprint(make_closure(2))
    assert fingerprint(make_closure({"b", "a"})) == fingerprint(make_closure({"a", "b"}))
    assert fingerprint(make_default(1)) != fingerprint(make_default(2))
    # No stable value: only its type counts, so two distinct objects agree.
    assert fingerprint(make_closure(object())) == fingerprint(make_closure(object()))


def ping(n):
    return n and pong(n - 1)


def pong(n):
    return n and ping(n - 1)


def uses_stdlib(x):
    return json.dumps({"p": os.path.join("a", str(x)), "r": re.escape(x)})


def test_mutual_recursion_terminates_and_does_not_depend_on_entry_point():
    stepkey.clear_cache()
    first_ping, first_pong = fingerprint(ping), fingerprint(pong)
    stepkey.clear_cache()
    assert (fingerprint(pong), fingerprint(ping)) == (first_pong, first_ping)
    assert first_ping != first_pong


def test_stdlib_is_not_recursed_into():
    assert not stepkey._is_user_function(json.dumps)
    assert not stepkey._is_user_function(os.path.join)
    assert stepkey._is_user_function(uses_stdlib)
    stepkey.clear_cache()
    first = fingerprint(uses_stdlib)
    stepkey.clear_cache()
    assert fingerprint(uses_stdlib) == first


class Multiplier:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return x * self.k

    def method(self, x):
        return x + self.k


def test_non_function_callables_get_stable_keys():
    candidates = [functools.partial(make_default(1), 2), Multiplier(3), len, print,
                  json.dumps, Multiplier(3).method, str.upper, "".join,
                  functools.lru_cache()(plain_body), _td(plain_body)]
    for fn in candidates:
        key = compute_step_key(_td(fn), [])
        assert HEX64.fullmatch(key)
        assert compute_step_key(_td(fn), []) == key
    assert fingerprint(Multiplier(3)) == fingerprint(Multiplier(3))
    assert fingerprint(Multiplier(3)) != fingerprint(Multiplier(4))
    assert fingerprint(functools.partial(ping, 1)) != fingerprint(functools.partial(ping, 2))
    assert fingerprint(functools.partial(ping, 1)) != fingerprint(functools.partial(pong, 1))
    assert fingerprint(len) != fingerprint(print)
    # A wrapped function is fingerprinted through its wrapper.
    assert fingerprint(functools.lru_cache()(ping)) != fingerprint(functools.lru_cache()(pong))


async def async_body():
    return 1


def sync_body():
    return 1


def test_async_functions_are_fingerprinted():
    assert fingerprint(async_body) == fingerprint(async_body)
    assert fingerprint(async_body) != fingerprint(sync_body)


class Hostile:
    def __getattribute__(self, name):
        raise RuntimeError("no")

    def __eq__(self, other):
        raise RuntimeError("no")

    __hash__ = object.__hash__

    def __call__(self):
        return 1


SELF_LIST: list = []
SELF_LIST.append(SELF_LIST)


def reads_odd_globals():
    return SELF_LIST, HOSTILE, MOCK


HOSTILE = Hostile()
MOCK = mock.Mock()


def test_odd_inputs_never_raise():
    looped = functools.wraps(plain_body)(lambda: 1)
    looped.__wrapped__ = looped
    for obj in [Hostile(), mock.Mock(), mock.MagicMock(), reads_odd_globals, looped, None, 3,
                type, object(), make_closure(Hostile())]:
        assert HEX64.fullmatch(fingerprint(obj))
        assert HEX64.fullmatch(compute_step_key(_td(plain_body, name="x"), [obj]))
    assert fingerprint(reads_odd_globals) == fingerprint(reads_odd_globals)


def test_key_changes_with_the_version_prefix(monkeypatch):
    td = _td(plain_body)
    before = compute_step_key(td, [])
    assert STEP_KEY_VERSION == 1
    monkeypatch.setattr(stepkey, "_STEP_PREFIX", b"flowing-step/2/x")
    assert compute_step_key(td, []) != before


# --- for_each items ------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(item=json_like, index=st.integers(min_value=0, max_value=10**6))
def test_item_keys_are_deterministic_and_chain_task_and_index(item, index):
    key = item_step_key("k" * 64, index, item)
    assert HEX64.fullmatch(key)
    assert item_step_key("k" * 64, index, json.loads(json.dumps(item))) == key
    assert item_step_key("j" * 64, index, item) != key
    assert item_step_key("k" * 64, index + 1, item) != key


def test_item_keys_use_the_value_when_it_is_stable():
    task_key = "k" * 64
    assert item_step_key(task_key, 0, {"a": 1, "b": {2, 3}}) == \
        item_step_key(task_key, 0, {"b": {3, 2}, "a": 1})
    assert item_step_key(task_key, 0, 1) != item_step_key(task_key, 0, 2)
    assert item_step_key(task_key, 0, 1) != item_step_key(task_key, 0, "1")
    assert item_step_key(task_key, 0, [1]) != item_step_key(task_key, 0, (1,))
    # Without a stable value, the index alone identifies the item.
    assert item_step_key(task_key, 4, object()) == item_step_key(task_key, 4, object())
    assert item_step_key(task_key, 4, object()) != item_step_key(task_key, 5, object())


# --- cost ----------------------------------------------------------------------------

def test_shared_function_is_fingerprinted_once(monkeypatch):
    """10k tasks sharing one function cost one fingerprint (speed itself is in bench/)."""
    import flowing.stepkey as stepkey

    def body(x):
        return [v * 2 for v in range(x)]

    tasks = [_td(body, name=f"t{i}") for i in range(1000)]
    stepkey.clear_cache()
    walks = []
    real = stepkey._Graph.fingerprint
    monkeypatch.setattr(stepkey._Graph, "fingerprint",
                        lambda self, obj: walks.append(obj) or real(self, obj))
    keys = {compute_step_key(td, []) for td in tasks}
    assert len(keys) == 1
    assert sum(1 for obj in walks if obj is body) == 1  # later tasks hit the cache
