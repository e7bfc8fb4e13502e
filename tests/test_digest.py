"""Content digests: equal digests mean equal values, in every process and hash seed;
values without stable content (and hostile ones) give None, never an exception."""

import collections
import copy
import dataclasses
import datetime
import decimal
import fractions
import functools
import json
import logging
import os
import pathlib
import pickle
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import types
import uuid
import weakref
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "stepkey_fixtures"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(FIXTURES))

from digest_types import Box, Color, Level, Pair, Plain, Point, Slotted  # noqa: E402

from flowing.keys import canonical  # noqa: E402
from flowing.keys.digest import Canonical, Memo, Unstable, value_digest  # noqa: E402

HEX64 = re.compile(r"[0-9a-f]{64}")
NAN = float("nan")  # one NaN object: containers compare it equal to itself by identity


def same(a, b) -> bool:
    """Equality where the one NaN object counts as equal to itself."""
    return a is b or a == b


# --- strategies -----------------------------------------------------------------------------

TIMEZONES = [None, datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=1)),
             datetime.timezone(datetime.timedelta(hours=1), "CET"),
             datetime.timezone(datetime.timedelta(hours=-5, minutes=-30)),
             zoneinfo.ZoneInfo("Europe/Paris"), zoneinfo.ZoneInfo("UTC")]

small = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([0.0, -0.0, 1.0, NAN]),
    st.text(alphabet="ab", max_size=2), st.binary(max_size=2),
    st.sampled_from(list(Color) + list(Level)),
    st.builds(pathlib.PurePosixPath, st.sampled_from(["a", "a/b", "/a", "."])),
    st.builds(Path, st.sampled_from(["a", "a/b"])),
    st.builds(decimal.Decimal, st.sampled_from(["1", "1.0", "1.00", "-0", "0", "Infinity"])),
    st.dates(min_value=datetime.date(2020, 1, 1), max_value=datetime.date(2020, 1, 3)),
)
wide = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8),
    st.complex_numbers(allow_nan=False),
    st.datetimes(timezones=st.sampled_from(TIMEZONES)),
    st.times(timezones=st.sampled_from(TIMEZONES[:5])), st.timedeltas(),
    st.decimals(allow_nan=False), st.fractions(), st.uuids(),
    st.builds(pathlib.PurePosixPath, st.text(alphabet="ab/.-", max_size=6)),
)
leaves = small | wide

hashables = st.recursive(
    leaves,
    lambda c: st.tuples(c, c) | st.frozensets(c, max_size=3) | st.builds(Point, c, c)
    | st.builds(Pair, c, c),
    max_leaves=6)

values = st.recursive(
    leaves,
    lambda c: st.one_of(
        st.tuples(c, c), st.lists(c, max_size=3), st.frozensets(hashables, max_size=3),
        st.sets(hashables, max_size=3), st.dictionaries(hashables, c, max_size=3),
        st.builds(Point, c, c), st.builds(Box, c, st.tuples(c)), st.builds(Plain, c, c),
        st.builds(Slotted, c, c), st.builds(Pair, c, c)),
    max_leaves=10)


# --- the properties -----------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_equal_digests_imply_equal_values(data):
    a = data.draw(values, label="a")
    b = data.draw(st.one_of(values, st.just(a), st.builds(copy.deepcopy, st.just(a))),
                  label="b")
    da, db = value_digest(a), value_digest(b)
    assert da is not None and db is not None
    assert HEX64.fullmatch(da)
    if da == db:
        assert same(a, b)


@settings(max_examples=150, deadline=None)
@given(value=values)
def test_digest_is_a_function_of_content(value):
    d = value_digest(value)
    assert d is not None
    assert value_digest(copy.deepcopy(value)) == d
    assert value_digest(pickle.loads(pickle.dumps(value))) == d
    memo = Memo()
    assert value_digest(value, memo) == d == value_digest(value, memo)


@settings(max_examples=100, deadline=None)
@given(members=st.lists(hashables, max_size=8, unique=True),
       vals=st.lists(values, min_size=8, max_size=8))
def test_neither_insertion_order_nor_hash_order_matters(members, vals):
    assert value_digest(set(members)) == value_digest(set(reversed(members)))
    assert value_digest(frozenset(members)) == value_digest(frozenset(reversed(members)))
    pairs = list(zip(members, vals))
    assert value_digest(dict(pairs)) == value_digest(dict(reversed(pairs)))
    # Ordered containers keep their order.
    if len(members) > 1:
        assert value_digest(members) != value_digest(list(reversed(members)))
        assert value_digest(collections.OrderedDict(pairs)) != \
            value_digest(collections.OrderedDict(reversed(pairs)))


def _rich_corpus() -> list:
    """Values whose natural iteration order depends on the hash seed, and one of each kind."""
    words = [f"w{i}" for i in range(40)]
    return [
        set(words), frozenset(words), {w: i for i, w in enumerate(words)},
        {frozenset(words[:5]): set(words[5:9]), ("k", 1): {b"x", b"y", 2.5}},
        Box(set(words[:7]), (Point(1, frozenset({"a", "b", "c"})),)),
        Plain({"x", "y", "z"}, [Slotted({1: {"q", "r"}}, Level.HIGH)]),
        Pair(Color.BLUE, decimal.Decimal("-1.50")),
        datetime.datetime(2024, 3, 31, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        [NAN, -0.0, 0.0, 1, 1.0, True, 10**40, -(10**40)], fractions.Fraction(-7, 3),
        uuid.UUID(int=12345), Path("a") / "b.csv", re.compile(rb"x+\d", re.I | re.M),
        range(1, 10, 3), slice(1, None, "s"), types.SimpleNamespace(z=1, a={"m", "n"}),
        collections.deque(["p", "q"], maxlen=5), collections.Counter("mississippi"),
        logging.getLogger("flowing.test"), ValueError("bad", {"why", "how"}), json.dumps,
        functools.partial(sorted, key=len), str.upper,
    ]


@seed(20240611)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=st.lists(values, min_size=40, max_size=40))
def test_same_digests_in_fresh_processes_with_other_hash_seeds(drawn):
    corpus = _rich_corpus() + drawn
    expected = [value_digest(v) for v in corpus]
    assert None not in expected
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.pickle")
        with open(path, "wb") as f:
            pickle.dump(corpus, f)
        procs = [subprocess.Popen(
            [sys.executable, str(FIXTURES / "print_digests.py"), str(REPO), path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONHASHSEED=hash_seed)) for hash_seed in ("1", "4242")]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert json.loads(out) == expected


# --- what the encoding distinguishes -----------------------------------------------------------

def _tz(hours, name=None):
    delta = datetime.timedelta(hours=hours)
    return datetime.timezone(delta) if name is None else datetime.timezone(delta, name)


@pytest.mark.parametrize("a, b", [
    (1, 1.0), (1, True), (1.0, True), (0, False), (0.0, -0.0), (0, None), ("1", 1), ("a", b"a"),
    (b"a", bytearray(b"a")), ((1, 2), [1, 2]), ({1, 2}, frozenset({1, 2})), ({}, set()),
    ({1: 2}, {2: 1}), ({"a": 1}, {("a",): 1}), ([[1], 2], [[1, 2]]), (["ab"], ["a", "b"]),
    (Pair(1, 2), (1, 2)), (Point(1, 2), Box(1, 2)), (Color.RED, 1), (Level.LOW, 1),
    (Level.LOW, Level.HIGH), (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
    (decimal.Decimal(1), 1), (fractions.Fraction(1, 2), 0.5),
    (pathlib.PurePosixPath("a"), Path("a")), (Path("a"), "a"),
    (datetime.date(2020, 1, 1), datetime.datetime(2020, 1, 1)),
    (datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 1, tzinfo=_tz(0))),
    (datetime.datetime(2020, 1, 1, tzinfo=_tz(1)), datetime.datetime(2020, 1, 1, tzinfo=_tz(2))),
    (datetime.datetime(2020, 1, 1, tzinfo=_tz(1)),
     datetime.datetime(2020, 1, 1, tzinfo=_tz(1, "CET"))),
    (datetime.datetime(2020, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
     datetime.datetime(2020, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin"))),
    (datetime.time(1, fold=0), datetime.time(1, fold=1)),
    (datetime.timedelta(1), datetime.timedelta(seconds=1)),
    (uuid.UUID(int=1), uuid.UUID(int=2)), (re.compile("a"), re.compile("a", re.I)),
    (re.compile("a"), re.compile(b"a")), (range(3), range(0, 3, 2)), (slice(1), slice(1, None, 1)),
    (Plain(1), Plain(2)), (Plain(1, 2), Plain(2, 1)), (Slotted(1, 2), Slotted(2, 1)),
    (Plain(1), Slotted(1, None)), (collections.OrderedDict(a=1), {"a": 1}),
    (collections.defaultdict(list), {}), (json.dumps, json.loads), (len, max),
    (functools.partial(max, 1), functools.partial(max, 2)), ("é", "e\u0301"), ("\ud800", "?"),
    (10**30, 10**30 + 1), (memoryview(b"ab"), memoryview(b"ab").cast("c")),
])
def test_distinct_values_get_distinct_digests(a, b):
    da, db = value_digest(a), value_digest(b)
    assert da is not None and db is not None
    assert da != db


@pytest.mark.parametrize("make", [
    lambda: float("nan"), lambda: -float("nan"), lambda: float("inf") - float("inf"),
    lambda: struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0],
])
def test_every_nan_encodes_the_same(make):
    assert value_digest(make()) == value_digest(NAN)
    assert value_digest([make(), {make()}]) == value_digest([NAN, {NAN}])


def test_library_code_by_name_user_values_by_content():
    assert value_digest(json.dumps) == value_digest(json.dumps)
    assert value_digest(Plain(1, [2])) == value_digest(Plain(1, [2]))
    assert value_digest(same) is not None  # reachable by its qualified name, like pickle
    assert value_digest(lambda: 1) is None  # no name reaches it
    # A bound method: the bound object by content, and the function.
    assert value_digest(Plain(1).__eq__) == value_digest(Plain(1).__eq__)
    assert value_digest(Plain(1).__eq__) != value_digest(Plain(2).__eq__)
    assert value_digest([].append) != value_digest([1].append)


# --- cycles, depth, size -------------------------------------------------------------------------

class Node:
    def __init__(self, parent=None):
        self.parent = parent
        self.children = []


def _tree(shape):
    root = Node()
    for n in shape:
        child = Node(root)
        child.children = [Node(child) for _ in range(n)]
        root.children.append(child)
    return root


def test_self_references_are_encoded_by_position():
    a, b = [], []
    a.append(a)
    b.append(b)
    assert value_digest(a) is not None
    assert value_digest(a) == value_digest(b)
    assert value_digest(a) != value_digest([[]])
    d = {"k": 1}
    d["self"] = d
    assert value_digest(d) is not None
    assert value_digest(_tree([1, 2])) == value_digest(_tree([1, 2]))
    assert value_digest(_tree([1, 2])) != value_digest(_tree([2, 1]))
    assert value_digest(_tree([1, 2])) != value_digest(_tree([1]))
    # Sharing without a cycle is not a back-reference: content only.
    x = [1]
    assert value_digest([x, x]) == value_digest([[1], [1]])


def test_back_references_do_not_poison_the_memo():
    memo = Memo()
    t = _tree([2])
    inner = t.children[0]  # refers up to its parent: its encoding depends on where it sits
    first = value_digest(t, memo)
    assert value_digest(inner, memo) == value_digest(inner)
    assert value_digest(t, memo) == first == value_digest(t)


def test_nesting_too_deep_is_unstable_not_a_crash():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert value_digest(deep) is None
    shallow: list = []
    for _ in range(50):
        shallow = [shallow]
    assert value_digest(shallow) is not None


class EndlessItems:
    """Its reduce hands out list items that never end."""

    def __reduce_ex__(self, protocol):
        def forever():
            while True:
                yield 1
        return (list, (), None, forever())


class FreshEachTime:
    """Its reduce returns a new object of its kind every time: an endless regress."""

    def __reduce_ex__(self, protocol):
        return (FreshEachTime, (FreshEachTime(),))


def test_endless_reductions_end(monkeypatch):
    monkeypatch.setattr(canonical, "_EXTRA_ITEMS", 10_000)
    assert value_digest(EndlessItems()) is None
    assert value_digest(FreshEachTime()) is None


def test_big_values_are_hashed_in_pieces_and_memoised():
    big = list(range(200_000))
    memo = Memo()
    d = value_digest(big, memo)
    assert d == value_digest(list(range(200_000)))
    assert len(memo) >= 1
    # The memo trusts that values do not change during a run: it is keyed by identity.
    big.append(1)
    assert value_digest(big, memo) == d
    assert value_digest(big) != d


def test_memo_keeps_its_objects_alive():
    memo = Memo()
    obj = Plain([1, 2, 3])
    ref = weakref.ref(obj)
    value_digest(obj, memo)
    del obj
    assert ref() is not None  # its id() cannot be reused while the memo lives
    memo.clear()
    assert ref() is None


# --- values without stable content -------------------------------------------------------------

def _generator():
    yield 1


class HoldsALock:
    def __init__(self):
        self.lock = threading.Lock()


@dataclasses.dataclass
class Conn:
    host: str
    sock: object = None


UNSTABLE = {
    "generator": lambda: _generator(),
    "lock": threading.Lock,
    "rlock": threading.RLock,
    "event": threading.Event,
    "socket": lambda: socket.socket(),
    "open file": lambda: open(os.devnull),
    "object holding a lock": HoldsALock,
    "dataclass holding a socket": lambda: Conn("db", socket.socket()),
    "lock deep in a container": lambda: [1, {"k": (2, [threading.Lock()])}],
    "set holding a socket": lambda: {1, socket.socket()},
    "dict keyed by a lock": lambda: {threading.Lock(): 1},
    "weakref": lambda: weakref.ref(HoldsALock),
    "lambda": lambda: (lambda: 1),
    "nested function": lambda: (lambda: (lambda: 2))(),
    "frame": lambda: sys._getframe(),
    "match": lambda: re.match("a", "a"),
}


@pytest.mark.parametrize("name", sorted(UNSTABLE))
def test_values_without_stable_content_give_none(name):
    value = UNSTABLE[name]()
    try:
        assert value_digest(value) is None
        with pytest.raises(Unstable) as caught:
            Canonical().chunk(value)
        assert caught.value.type_name
        assert "stable" in str(caught.value) or "fingerprint" in str(caught.value)
    finally:
        for closable in (value, getattr(value, "sock", None)):
            if isinstance(closable, (socket.socket,)) or hasattr(closable, "closed"):
                closable.close()


def test_unstable_says_what_and_where():
    with pytest.raises(Unstable) as caught:
        Canonical().chunk({"db": [Conn("h", threading.Lock())]})
    e = caught.value
    assert e.type_name == "_thread.lock"
    assert e.location == "['db'][0].sock"
    assert e.what == "a _thread.lock (at ['db'][0].sock)"
    assert "no stable content" in e.reason


# --- hostile objects ----------------------------------------------------------------------------

class Boom(Exception):
    pass


def _raise(*args, **kwargs):
    raise Boom("no")


class RaisingEverything:
    """Every dunder that could be called raises; its state is plain."""

    def __init__(self):
        self.a = 1

    __eq__ = __hash__ = __repr__ = __str__ = __bool__ = __len__ = __iter__ = _raise


class RaisingReduce:
    __reduce_ex__ = _raise


class RaisingGetstate:
    def __init__(self):
        self.a = 1

    __getstate__ = _raise


class RaisingGetattribute:
    def __getattribute__(self, name):
        raise Boom(name)


class RaisingClassAttr:
    @property
    def __class__(self):
        raise Boom("class")


def _class_with_hostile_metaclass() -> type:
    """Made on demand: a module-level class like this upsets tools that scan globals."""

    class HostileMeta(type):
        __hash__ = __eq__ = __repr__ = _raise

        def __getattribute__(cls, name):
            raise Boom(name)

    class WithHostileMeta(metaclass=HostileMeta):
        pass

    return WithHostileMeta


class BadIter(list):
    def __iter__(self):
        raise Boom("iter")


class BadDict(dict):
    def items(self):
        raise Boom("items")

    def __iter__(self):
        raise Boom("iter")


class Garbage:
    def __init__(self, make_rv):
        self.make_rv = make_rv

    def __reduce_ex__(self, protocol):
        return object.__getattribute__(self, "make_rv")()


class RaisingEq:
    """Usable as a dict key (hashes by identity), but comparing it raises."""

    def __init__(self):
        self.a = 1

    __eq__ = __repr__ = __str__ = _raise
    __hash__ = object.__hash__


class RecursiveReduce:
    def __reduce_ex__(self, protocol):
        return self.__reduce_ex__(protocol)


HOSTILE = {
    "raising dunders": RaisingEverything,
    "raising __reduce_ex__": RaisingReduce,
    "raising __getstate__": RaisingGetstate,
    "raising __getattribute__": RaisingGetattribute,
    "raising __class__": RaisingClassAttr,
    "hostile metaclass (instance)": lambda: _class_with_hostile_metaclass()(),
    "hostile metaclass (class)": _class_with_hostile_metaclass,
    "list with raising __iter__": lambda: BadIter([1, 2]),
    "dict with raising items": lambda: BadDict(a=1),
    "reduce returns an int": lambda: Garbage(lambda: 3),
    "reduce returns a short tuple": lambda: Garbage(lambda: (list,)),
    "reduce args not a tuple": lambda: Garbage(lambda: (list, [1])),
    "reduce with bad dict items": lambda: Garbage(lambda: (dict, (), None, None, iter([1, 2]))),
    "reduce with raising list items": lambda: Garbage(lambda: (list, (), None, BadIter([1]))),
    "reduce names a missing global": lambda: Garbage(lambda: "no_such_global_name"),
    "reduce that recurses forever": RecursiveReduce,
    "hostile inside a container": lambda: [{"k": RaisingGetattribute()}],
    "hostile as a dict key": lambda: {RaisingEq(): 1, RaisingEq(): 2},
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_objects_never_raise(name):
    value = HOSTILE[name]()
    d = value_digest(value)
    assert d is None or HEX64.fullmatch(d)
    assert value_digest(value, Memo()) == d
    with pytest.raises(Unstable) if d is None else _nothing():
        Canonical().chunk(value)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_hostile_dunders_are_never_called_when_the_state_is_plain():
    # __eq__, __hash__, __repr__ raise, but the content (class and attributes) is plain.
    assert value_digest(RaisingEverything()) is not None
    assert value_digest(RaisingEverything()) == value_digest(RaisingEverything())
    assert value_digest({RaisingEq(): 1}) is not None
    assert value_digest({RaisingEq(), RaisingEq()}) == value_digest({RaisingEq(), RaisingEq()})


# --- what the process happens to have imported changes nothing -------------------------------

def test_an_empty_state_is_no_state():
    untouched = ValueError("bad", 1)
    touched = ValueError("bad", 1)
    touched.__dict__  # noqa: B018 - materialises an empty instance dict
    assert value_digest(untouched) == value_digest(touched)
    touched.note = "x"
    assert value_digest(untouched) != value_digest(touched)


def test_copyreg_registrations_do_not_change_digests():
    """Libraries register reducers (tblib does for every exception class): a type's
    own reduce comes first, so digests do not depend on what was imported."""
    import copyreg

    before = value_digest(Plain(1, {"a"}))
    err_before = value_digest(ValueError("x"))
    copyreg.pickle(Plain, lambda p: (Plain, ("something else",)))
    copyreg.pickle(ValueError, lambda e: (ValueError, ("other",), None))
    try:
        assert value_digest(Plain(1, {"a"})) == before
        assert value_digest(ValueError("x")) == err_before
    finally:
        del copyreg.dispatch_table[Plain]
        del copyreg.dispatch_table[ValueError]
