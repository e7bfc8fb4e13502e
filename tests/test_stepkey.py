"""Step keys: stable across processes, sensitive to behaviour and to the content of
every value a task reads, blind to cosmetics; uncacheable tasks say why."""

import collections
import copy
import dataclasses
import datetime
import decimal
import enum
import functools
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowing import Flow, task  # noqa: E402
from flowing.keys import (  # noqa: E402
    digest,
    stepkey,  # noqa: E402
)
from flowing.keys.stepkey import (  # noqa: E402
    STEP_KEY_VERSION,
    Keyer,
    Uncacheable,
    compute_step_key,
    fingerprint,
    item_step_key,
)
from flowing.limits import Limit  # noqa: E402
from flowing.tasks import TaskDef  # noqa: E402

PRINT_KEYS = Path(__file__).resolve().parent / "stepkey_fixtures" / "print_keys.py"
HEX64 = re.compile(r"[0-9a-f]{64}")


# --- a task module, and edits of it, each keyed in its own process -------------------

BASE_FLOWMOD = textwrap.dedent('''\
    import enum
    import json
    import os.path
    from dataclasses import dataclass
    from pathlib import Path

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


    class Client:
        def __init__(self, url):
            self.url = url

        def fetch(self):
            return self.url + "/items"


    client = Client("http://a")
    bound = task(client.fetch, name="bound")


    def make_reader(path):
        def read():
            return path.read_text()
        return read


    read_a, read_b = [task(make_reader(Path(n)), name=f"read_{n[0]}") for n in ("a.csv", "b.csv")]
''')

BASE_HELPERS = textwrap.dedent('''\
    RATE = 7


    def _inner(v):
        return v * RATE


    def compute(v):
        return _inner(v) + 1
''')

ALL_TASKS = {"source", "shaped", "styled", "report", "lonely", "bound", "read_a", "read_b"}

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
    "bound_state": {"flowmod.py": [('Client("http://a")', 'Client("http://b")')]},
    "bound_method_body": {"flowmod.py": [('"/items"', '"/things"')]},
    "loop_path": {"flowmod.py": [('"b.csv")]', '"c.csv")]')]},
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
    ("bound_state", {"bound"}),
    ("bound_method_body", {"bound"}),
    ("loop_path", {"read_b"}),
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


def key_of(fn, inputs=None, **options) -> str:
    """The key of a one-task flow built around ``fn``, from a fresh Keyer."""
    key = Keyer().task_key(_td(fn, **options), [], inputs or {})
    assert isinstance(key, str), key
    return key


def refusal(fn, inputs=None, **options) -> Uncacheable:
    key = Keyer().task_key(_td(fn, **options), [], inputs or {})
    assert isinstance(key, Uncacheable), "expected the task to be uncacheable"
    return key


def plain_body():
    return 1


def test_dependency_keys_are_chained_and_sorted():
    td = _td(plain_body)
    a, b = "a" * 64, "b" * 64
    assert compute_step_key(td, [a, b]) == compute_step_key(td, [b, a])
    assert compute_step_key(td, [a]) != compute_step_key(td, [b])
    assert compute_step_key(td, [a]) != compute_step_key(td, [])
    assert compute_step_key(td, [a, b]) != compute_step_key(td, [a])
    keyer = Keyer()
    assert keyer.task_key(td, [a, b], {}) == compute_step_key(td, [a, b])


def test_knobs_and_name_are_not_in_the_key():
    base = compute_step_key(_td(plain_body), [])
    assert compute_step_key(_td(plain_body, name="other"), []) == base
    assert compute_step_key(_td(plain_body, retry=5, retry_backoff_base_ms=1,
                                retry_max_backoff_ms=2, retry_on=(KeyError,), timeout_s=3,
                                detached=True, limit=Limit(max_concurrency=1)), []) == base
    assert compute_step_key(_td(plain_body, cache=False, cache_ttl_s=5.0), []) == base


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
    assert fingerprint(make_closure(1)) != fingerprint(make_closure(1.0))
    assert fingerprint(make_closure({"b", "a"})) == fingerprint(make_closure({"a", "b"}))
    assert fingerprint(make_default(1)) != fingerprint(make_default(2))
    # Changed by the spec: a bare object() is fingerprinted by its content (none), no
    # longer by "its type only"; objects with state differ by state (below).
    assert fingerprint(make_closure(object())) == fingerprint(make_closure(object()))


def ping(n):
    return n and pong(n - 1)


def pong(n):
    return n and ping(n - 1)


def uses_stdlib(x):
    return json.dumps({"p": os.path.join("a", str(x)), "r": re.escape(x)})


def test_mutual_recursion_terminates_and_does_not_depend_on_entry_point():
    first = Keyer()
    first_ping, first_pong = first.fingerprint(ping), first.fingerprint(pong)
    second = Keyer()
    assert (second.fingerprint(pong), second.fingerprint(ping)) == (first_pong, first_ping)
    assert first_ping != first_pong


def test_stdlib_is_not_recursed_into():
    assert not digest.is_user_function(json.dumps)
    assert not digest.is_user_function(os.path.join)
    assert digest.is_user_function(uses_stdlib)
    assert Keyer().fingerprint(uses_stdlib) == Keyer().fingerprint(uses_stdlib)


class Multiplier:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return x * self.k

    def method(self, x):
        return x + self.k

    @classmethod
    def build(cls, k):
        return cls(k)

    @staticmethod
    def helper(x):
        return x


def test_non_function_callables_get_stable_keys():
    candidates = [functools.partial(make_default(1), 2), Multiplier(3), len, print,
                  json.dumps, Multiplier(3).method, Multiplier.build, Multiplier.helper,
                  str.upper, "".join, functools.lru_cache()(plain_body), _td(plain_body)]
    for fn in candidates:
        key = key_of(fn)
        assert HEX64.fullmatch(key)
        assert key_of(fn) == key
    assert fingerprint(Multiplier(3)) == fingerprint(Multiplier(3))
    assert fingerprint(Multiplier(3)) != fingerprint(Multiplier(4))
    assert fingerprint(functools.partial(ping, 1)) != fingerprint(functools.partial(ping, 2))
    assert fingerprint(functools.partial(ping, 1)) != fingerprint(functools.partial(pong, 1))
    assert fingerprint(functools.partial(ping, k=1)) != fingerprint(functools.partial(ping, k=2))
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


def test_key_changes_with_the_version_prefix(monkeypatch):
    td = _td(plain_body)
    before = compute_step_key(td, [])
    assert STEP_KEY_VERSION == 3
    monkeypatch.setattr(stepkey, "_STEP_PREFIX", b"flowing-step/4/x")
    assert compute_step_key(td, []) != before


# --- bodies: bound methods, partials, callable objects (keyed by function + bound state) ---

def _make_class(source: str):
    namespace: dict = {"__name__": __name__}
    exec(textwrap.dedent(source), namespace)
    return namespace["Reader"]


READER_V1 = '''
class Reader:
    def __init__(self, path):
        self.path = path

    def read(self):
        return "v1:" + self.path

    def __call__(self):
        return self.read()
'''


def test_bound_methods_are_keyed_by_function_and_bound_state():
    reader = _make_class(READER_V1)
    reader_v2 = _make_class(READER_V1.replace('"v1:"', '"v2:"'))
    assert key_of(reader("a").read) == key_of(reader("a").read)
    assert key_of(reader("a").read) != key_of(reader("b").read)  # instance state
    assert key_of(reader("a").read) != key_of(reader_v2("a").read)  # method code
    assert key_of(reader("a")) != key_of(reader("b"))  # callable object: state
    assert key_of(reader("a")) != key_of(reader_v2("a"))  # callable object: class code
    assert key_of(reader("a").read) != key_of(reader("a"))


def test_classmethods_staticmethods_and_partials():
    assert key_of(Multiplier.build) == key_of(Multiplier.build)
    assert key_of(Multiplier.build) != key_of(Multiplier.helper)
    assert key_of(functools.partial(max, 1)) != key_of(functools.partial(max, 2))
    assert key_of(functools.partial(max, key=len)) != key_of(functools.partial(max, key=abs))
    assert key_of(functools.partial(Multiplier(1).method, 1)) != \
        key_of(functools.partial(Multiplier(2).method, 1))


# --- issue: loop-built tasks must never share a key (values swapped on replay) -------------

@dataclasses.dataclass
class Settings:
    path: str
    retries: int = 3


class Opaque:
    """A plain object with no __eq__: fingerprinted by its state."""

    def __init__(self, name):
        self.name = name


Pt = collections.namedtuple("Pt", "x y")


class Shade(enum.Enum):
    LIGHT = 1
    DARK = 2


LOOP_VALUES = {
    "Path": (Path("data/a.csv"), Path("data/b.csv")),
    "date": (datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)),
    "aware datetime": (datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
                       datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(
                           datetime.timedelta(hours=1)))),
    "Decimal": (decimal.Decimal("1.10"), decimal.Decimal("1.20")),
    "dataclass": (Settings("a"), Settings("a", retries=4)),
    "plain object": (Opaque("a"), Opaque("b")),
    "compiled regex": (re.compile(r"\d+"), re.compile(r"\w+")),
    "compiled regex flags": (re.compile("a"), re.compile("a", re.IGNORECASE)),
    "namedtuple": (Pt(1, 2), Pt(2, 1)),
    "enum": (Shade.LIGHT, Shade.DARK),
    "nested": ({"paths": [Path("a")]}, {"paths": [Path("b")]}),
}


def make_task(value, name="t"):
    def body():
        return str(value)
    return task(body, name=name)


@pytest.mark.parametrize("kind", sorted(LOOP_VALUES))
def test_loop_built_tasks_get_distinct_keys_by_content(kind):
    a, b = LOOP_VALUES[kind]
    keyer = Keyer()
    key_a = keyer.task_key(make_task(a), [], {})
    key_b = keyer.task_key(make_task(b), [], {})
    assert isinstance(key_a, str) and isinstance(key_b, str)
    assert key_a != key_b
    # Equal content, another object, another Keyer: the same key.
    twin = copy.deepcopy(a)
    assert Keyer().task_key(make_task(twin), [], {}) == key_a


CONFIG = None


def test_instance_state_read_through_a_global_is_in_the_key():
    def body():
        return CONFIG.name

    global CONFIG
    try:
        CONFIG = Opaque("a")
        first = key_of(body)
        CONFIG = Opaque("b")
        second = key_of(body)
        CONFIG = Opaque("a")
        assert key_of(body) == first
    finally:
        CONFIG = None
    assert first != second


def _readers(values):
    readers = [make_task(v, name=f"read_{i}") for i, v in enumerate(values)]

    @task(depends_on=readers)
    def combine(**parts):
        return [parts[f"read_{i}"] for i in range(len(values))]

    return combine


# END-TO-END (needs the scheduler and journal: Flow(journal_path=...) with Keyer wired in).
@pytest.mark.parametrize("kind", ["Path", "date", "Decimal", "dataclass", "plain object",
                                  "compiled regex"])
def test_end_to_end_replay_never_swaps_values(tmp_path, kind):
    a, b = LOOP_VALUES[kind]
    journal = tmp_path / "run.jsonl"
    expected = [str(a), str(b)]
    first = Flow(_readers((a, b)), journal_path=str(journal), log=False)
    first.run()
    assert first.results["combine"].value == expected
    second = Flow(_readers((a, b)), journal_path=str(journal), log=False)
    second.run()
    assert second.results["combine"].value == expected
    assert all(r.cached for r in second.results.values())
    # Swapped inputs: each reader replays its own value, never the other's.
    third = Flow(_readers((b, a)), journal_path=str(journal), log=False)
    third.run()
    assert third.results["combine"].value == [str(b), str(a)]


ISSUE_SCRIPT = '''
import pathlib, sys
sys.path.insert(0, sys.argv[1])
from flowing import task, Flow

D = pathlib.Path(sys.argv[2])

def reader(p):
    def read():
        return p.read_text()
    return task(read, name=f"read_{p.stem}")

readers = [reader(D / f"{n}.csv") for n in "ab"]

@task(depends_on=readers)
def combine(**kw):
    return [kw["read_a"], kw["read_b"]]

flow = Flow(combine, journal_path=str(D / "run.jsonl"), log=False)
flow.run()
print(repr(flow.results["combine"].value), all(r.cached for r in flow.results.values()))
'''


# END-TO-END, in fresh processes: the exact script of the issue, run twice.
def test_end_to_end_issue_script_in_fresh_processes(tmp_path):
    for n in "ab":
        (tmp_path / f"{n}.csv").write_text(f"contents of {n}.csv")
    script = tmp_path / "pipeline.py"
    script.write_text(ISSUE_SCRIPT)
    outputs = []
    for hash_seed in ("1", "2"):
        proc = subprocess.run([sys.executable, str(script), str(REPO), str(tmp_path)],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONHASHSEED=hash_seed))
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.strip())
    assert outputs == ["['contents of a.csv', 'contents of b.csv'] False",
                       "['contents of a.csv', 'contents of b.csv'] True"]


# --- values without stable content: uncacheable, with one precise message --------------------

class Client:
    def __init__(self, conn):
        self.conn = conn

    def fetch(self):
        return self.conn


class WithLock:
    _lock = threading.Lock()

    def get(self):
        return 1


def read_client():
    return CLIENT.fetch()


def uses_read_client():
    return read_client()


def uses_with_lock():
    return WithLock().get()


CLIENT = None


def test_uncacheable_names_task_value_type_and_fix():
    sock = socket.socket()
    global CLIENT
    try:
        CLIENT = Client(threading.Lock())

        def closure():
            return sock.recv(1)

        def default(conn=sock):
            return conn

        def gen_closure():
            return next(lines)

        lines = (x for x in "ab")
        cases = [
            (closure, {}, {}, "closure variable 'sock' holds a socket.socket"),
            (default, {}, {}, "default of 'conn' holds a socket.socket"),
            (gen_closure, {}, {}, "closure variable 'lines' holds a generator"),
            (read_client, {}, {}, "global 'CLIENT' holds a _thread.lock (at CLIENT.conn)"),
            (uses_read_client, {}, {},
             "global 'CLIENT' (in 'read_client') holds a _thread.lock (at CLIENT.conn)"),
            (uses_with_lock, {}, {}, "class attribute 'WithLock._lock' holds a _thread.lock"),
            (Client(sock).fetch, {}, {}, "its body holds a socket.socket (at .__self__.conn)"),
            (plain_body, {"when": closure}, {},
             "its when= callable: closure variable 'sock' holds a socket.socket"),
        ]
        for fn, options, inputs, expected in cases:
            found = refusal(fn, inputs, name="load", **options)
            assert found.task == "load"
            assert found.message == (f"task 'load': not cached this run: {expected} with no "
                                     f"stable content; pass it through Flow(inputs=...), "
                                     f"make it a dependency, or set @task(version=...)")
            with pytest.raises(ValueError) as raised:
                compute_step_key(_td(fn, name="load", **options), [])
            assert str(raised.value) == found.message
        found = refusal(plain_body, {"db": sock}, name="load")
        assert found.message.startswith("task 'load': not cached this run: input 'db' holds a "
                                        "socket.socket with no stable content; pass plain data")
    finally:
        CLIENT = None
        sock.close()


def test_an_unstable_value_does_not_matter_when_version_is_set():
    sock = socket.socket()
    try:
        def body():
            return sock
        assert isinstance(Keyer().task_key(_td(body), [], {}), Uncacheable)
        assert HEX64.fullmatch(key_of(body, version="1"))
    finally:
        sock.close()


def test_the_same_failure_is_reported_for_every_task_that_reads_it():
    global CLIENT
    CLIENT = Client(threading.Lock())
    try:
        keyer = Keyer()
        first = keyer.task_key(_td(uses_read_client, name="a"), [], {})
        second = keyer.task_key(_td(read_client, name="b"), [], {})
        third = keyer.task_key(_td(uses_read_client, name="c"), [], {})
        assert isinstance(first, Uncacheable) and isinstance(second, Uncacheable)
        assert first.what == third.what
        assert "global 'CLIENT'" in second.what
        # Tasks that do not read it are unaffected.
        assert isinstance(keyer.task_key(_td(plain_body), [], {}), str)
    finally:
        CLIENT = None


def test_hostile_bodies_and_globals_never_raise():
    class Hostile:
        def __getattribute__(self, name):
            raise RuntimeError("no")

        def __eq__(self, other):
            raise RuntimeError("no")

        __hash__ = object.__hash__

        def __call__(self):
            return 1

    class BadReduce:
        def __reduce_ex__(self, protocol):
            raise ValueError("no")

        def __call__(self):
            return 1

    self_list: list = []
    self_list.append(self_list)
    looped = functools.wraps(plain_body)(lambda: 1)
    looped.__wrapped__ = looped
    hostile = Hostile()

    def reads_odd_values():
        return self_list, hostile, mock.Mock()

    keyer = Keyer()
    for obj in [Hostile(), BadReduce(), mock.Mock(), mock.MagicMock(), reads_odd_values,
                looped, make_closure(Hostile()), make_closure(self_list), type, object()]:
        as_body = _td(plain_body)
        as_body.fn = obj  # past the decorator's own checks, which may refuse it
        as_gate = _td(plain_body)
        as_gate.when = obj
        for td in (as_body, as_gate):
            key = keyer.task_key(td, [], {})
            assert isinstance(key, Uncacheable) or HEX64.fullmatch(key)
        found = keyer.fingerprint(obj)
        assert found is None or HEX64.fullmatch(found)
        try:
            fingerprint(obj)
        except ValueError as e:
            assert "no stable" in str(e)
    # A value that contains itself is fingerprinted (by back-references), not refused.
    assert isinstance(keyer.task_key(_td(make_closure(self_list)), [], {}), str)
    assert isinstance(keyer.task_key(_td(make_closure(Hostile())), [], {}), Uncacheable)


# --- version= --------------------------------------------------------------------------------

def test_version_pins_the_key_and_a_bump_changes_it():
    def first():
        return 1

    def edited():
        return 2  # an edit of the body...

    pinned = key_of(first, version="2024-06")
    assert key_of(edited, version="2024-06") == pinned  # ...does not change a pinned key
    assert key_of(first, version="2024-07") != pinned  # a bump does
    assert key_of(first) != pinned
    # Gates are covered by the version too.
    assert key_of(first, version="2024-06", when=lambda: True) == pinned
    # Dependencies, for_each and inputs still count.
    td = _td(first, version="2024-06")
    assert Keyer().task_key(td, ["a" * 64], {}) != pinned
    assert key_of(first, {"n": 1}, version="2024-06") != pinned


def test_a_version_that_is_not_a_string_is_refused():
    td = _td(plain_body)
    td.version = 3
    found = Keyer().task_key(td, [], {})
    assert isinstance(found, Uncacheable)
    assert "version= must be a string" in found.message


# --- inputs ------------------------------------------------------------------------------------

def test_inputs_are_keyed_by_content():
    def body(case_dir, n):
        return case_dir, n

    base = key_of(body, {"case_dir": Path("cases/a"), "n": 1})
    assert key_of(body, {"n": 1, "case_dir": Path("cases/a")}) == base  # order: no matter
    assert key_of(body, {"case_dir": Path("cases/b"), "n": 1}) != base
    assert key_of(body, {"case_dir": Path("cases/a"), "n": 1.0}) != base
    assert key_of(body, {"case_dir": "cases/a", "n": 1}) != base
    assert key_of(body, {"case_dir": Path("cases/a"), "m": 1}) != base  # the name counts


# --- for_each items ------------------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(item=json_like, index=st.integers(min_value=0, max_value=10**6))
def test_item_keys_are_deterministic_and_chain_task_and_content(item, index):
    key = item_step_key("k" * 64, index, item)
    assert HEX64.fullmatch(key)
    assert item_step_key("k" * 64, index, json.loads(json.dumps(item))) == key
    assert item_step_key("j" * 64, index, item) != key
    # Changed by the spec: the position is not in an item's key, its content is.
    assert item_step_key("k" * 64, index + 1, item) == key
    assert Keyer().item_key("k" * 64, item) == key


def test_item_keys_use_the_content_never_the_position():
    keyer = Keyer()
    task_key = "k" * 64
    assert keyer.item_key(task_key, {"a": 1, "b": {2, 3}}) == \
        keyer.item_key(task_key, {"b": {3, 2}, "a": 1})
    assert keyer.item_key(task_key, 1) != keyer.item_key(task_key, 2)
    assert keyer.item_key(task_key, 1) != keyer.item_key(task_key, "1")
    assert keyer.item_key(task_key, 1) != keyer.item_key(task_key, 1.0)
    assert keyer.item_key(task_key, [1]) != keyer.item_key(task_key, (1,))
    assert keyer.item_key(task_key, Path("a.csv")) != keyer.item_key(task_key, Path("b.csv"))
    assert keyer.item_key(task_key, Opaque("a")) == Keyer().item_key(task_key, Opaque("a"))
    # Without stable content there is no key: such an item is never replayed.
    lock = threading.Lock()
    assert keyer.item_key(task_key, lock) is None
    assert keyer.item_key(task_key, [1, lock]) is None
    assert item_step_key(task_key, 0, lock) != item_step_key(task_key, 0, lock)


# --- cost: each distinct value is fingerprinted once per run -----------------------------------

class Counted:
    """Counts how often it is read for a fingerprint."""

    reads = 0

    def __init__(self, payload):
        self.payload = payload

    def __reduce_ex__(self, protocol):
        Counted.reads += 1
        return (Counted, (self.payload,))


SHARED = [Counted("x")] + list(range(200_000))


def make_reader_of_shared(i):
    def body():
        return SHARED[i]
    return task(body, name=f"t{i}")


def test_a_shared_constant_is_fingerprinted_once_per_run():
    """2,000 loop-built tasks reading one 200k-element list: a fixed number of reads per
    Keyer, not one per task (speed itself: bench/keys.py)."""
    tasks = [make_reader_of_shared(i) for i in range(2000)]
    Counted.reads = 0
    keyer = Keyer()
    keys = {keyer.task_key(td, [], {}) for td in tasks[:1000]}
    assert len(keys) == 1000 and all(isinstance(k, str) for k in keys)
    # It holds an instance of a class of the user: read once to find that class,
    # once more with the class's fingerprint, then never again in this run.
    first = Counted.reads
    assert first <= 2
    keys = {keyer.task_key(td, [], {}) for td in tasks[1000:]}
    assert Counted.reads == first
    Keyer().task_key(tasks[0], [], {})  # a new run reads module values afresh
    assert Counted.reads > first


PLAIN_SHARED = list(range(200_000))


def test_plain_data_is_read_exactly_once_per_run():
    reads = []

    class Probe(list):
        def __reduce_ex__(self, protocol):
            reads.append(1)
            return (list, (list(self),))

    probe = Probe(PLAIN_SHARED[:10])
    tasks = [make_task(probe, name=f"t{i}") for i in range(500)]
    keyer = Keyer()
    for td in tasks:
        assert isinstance(keyer.task_key(td, [], {}), str)
    assert len(reads) == 1


def test_keys_do_not_depend_on_the_order_tasks_are_keyed_in():
    handlers: dict = {}

    def handle_a(x):
        return handlers["b"](x) if x else 0

    def handle_b(x):
        return handlers["a"](x - 1)

    handlers.update(a=handle_a, b=handle_b)

    def entry():
        return handlers["a"](3)

    tds = [_td(entry, name="e"), _td(handle_a, name="a"), _td(handle_b, name="b"),
           _td(make_closure(handlers), name="c")]
    forward = [Keyer().task_key(td, [], {}) for td in tds]
    keyer = Keyer()
    backward = [keyer.task_key(td, [], {}) for td in reversed(tds)][::-1]
    assert forward == backward
    assert all(isinstance(k, str) for k in forward)
    assert len(set(forward)) == len(forward)


def test_one_keyer_is_safe_across_threads():
    tasks = [make_task(Path(f"p{i}"), name=f"t{i}") for i in range(200)]
    expected = [Keyer().task_key(td, [], {}) for td in tasks]
    keyer = Keyer()
    results: dict = {}

    def work(n):
        results[n] = [keyer.task_key(td, [], {}) for td in tasks]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(results[n] == expected for n in range(4))


def test_long_chains_of_helpers_are_walked_without_recursion():
    """The walk over functions is iterative: 2,000 helpers calling the next one."""
    source = "\n".join(f"def f{i}(x):\n    return f{i + 1}(x) + 1" for i in range(2000))
    namespace = {"__name__": "chain_module"}
    exec(source + "\ndef f2000(x):\n    return x\n", namespace)
    first = key_of(namespace["f0"])
    namespace["f1999"].__code__ = (lambda x: f2000(x) + 2).__code__  # noqa: F821
    assert key_of(namespace["f0"]) != first
