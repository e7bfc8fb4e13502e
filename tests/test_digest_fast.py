"""The fast encoding of plain data (the C pickler with canonical rules where
pickle is not canonical): for JSON-like values, equal digests if and only if
the values are equal with their exact types, whatever the dict insertion
order, set order or hash seed, every NaN alike."""

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from flowing.keys.digest import value_digest

NAN = float("nan")

keys = st.one_of(st.text(max_size=3), st.integers(-3, 3), st.binary(max_size=2), st.booleans(),
                 st.none())
atoms = st.one_of(keys, st.floats(allow_nan=True), st.just(-0.0), st.just(NAN),
                  st.integers(min_value=-(2**70), max_value=2**70))
plain = st.recursive(
    atoms,
    lambda c: st.one_of(st.lists(c, max_size=4), st.tuples(c, c),
                        st.dictionaries(keys, c, max_size=4), st.sets(keys, max_size=4),
                        st.frozensets(keys, max_size=4)),
    max_leaves=12)


def strict_eq(a, b) -> bool:
    """Equality with exact types, NaN equal to NaN, -0.0 apart from 0.0."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                     math.copysign(1, b))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        if len(a) != len(b):
            return False
        for k, v in a.items():
            match = [k2 for k2 in b if type(k2) is type(k) and k2 == k]
            if not match or not strict_eq(v, b[match[0]]):
                return False
        return True
    if type(a) in (set, frozenset):
        return len(a) == len(b) and all(any(type(x) is type(y) and x == y for y in b) for x in a)
    return a == b


def reordered(v, rnd):
    """An equal value built in another order: dicts and sets inserted shuffled."""
    t = type(v)
    if t is list:
        return [reordered(x, rnd) for x in v]
    if t is tuple:
        return tuple(reordered(x, rnd) for x in v)
    if t is dict:
        items = list(v.items())
        rnd.shuffle(items)
        return {k: reordered(x, rnd) for k, x in items}
    if t in (set, frozenset):
        members = list(v)
        rnd.shuffle(members)
        return t(members)
    if t is float and math.isnan(v):
        return -NAN  # another NaN
    return v


@settings(max_examples=400, deadline=None)
@given(a=plain, b=plain, seed=st.integers(0, 2**16))
def test_digests_are_equal_exactly_when_plain_values_are(a, b, seed):
    da, db = value_digest(a), value_digest(b)
    assert da is not None and db is not None
    assert (da == db) == strict_eq(a, b)
    assert value_digest(reordered(a, random.Random(seed))) == da


def test_shared_and_copied_members_digest_alike():
    x = {"k": [1, 2]}
    assert value_digest([x, x]) == value_digest([{"k": [1, 2]}, {"k": [1, 2]}])
    t = (1, "a")
    assert value_digest({"a": t, "b": t}) == value_digest({"b": (1, "a"), "a": (1, "a")})


def test_cycles_fall_back_to_the_canonical_encoding():
    a: list = [1]
    a.append(a)
    b: list = [1]
    b.append(b)
    assert value_digest(a) is not None
    assert value_digest(a) == value_digest(b)
    assert value_digest(a) != value_digest([1, [1]])


# --- the pickler is reused from digest to digest: nothing of one digest leaks into the next

class _Boom:
    """Refuses to be read (its digest raises inside the pickler)."""

    def __reduce_ex__(self, protocol):
        raise ValueError("no")


class _Nested:
    """Asks for another digest while its own is being taken (same thread)."""

    def __init__(self, inner):
        self.inner = inner

    def __reduce_ex__(self, protocol):
        value_digest([self.inner, {"x": NAN}])
        return (_Nested, (self.inner,))


def _sample_values(seed: int) -> list:
    rnd = random.Random(seed)

    def make(depth: int):
        kind = rnd.randrange(7 if depth < 4 else 3)
        if kind == 0:
            return rnd.randrange(-10**20, 10**20)
        if kind == 1:
            return rnd.choice(["", "a", "é", "\ud800", "x" * 70])
        if kind == 2:
            return rnd.choice([0.5, -0.0, NAN, 1e300, True, None, b"\x00"])
        if kind == 3:
            return [make(depth + 1) for _ in range(rnd.randrange(4))]
        if kind == 4:
            return {rnd.choice(["k", "b", "a", 3, b"z"]): make(depth + 1) for _ in range(3)}
        if kind == 5:
            return frozenset(rnd.choice(["p", "q", 1, 2]) for _ in range(3))
        return tuple(make(depth + 1) for _ in range(2))

    return [make(0) for _ in range(120)]


def _nested_lists(depth: int, inner):
    for _ in range(depth):
        inner = [inner]
    return inner


def test_digests_after_failed_and_nested_digests_equal_a_fresh_process(tmp_path):
    """Digests that raised halfway (at every nesting depth, past pickle's own
    limits), cycles and digests nested in another one, interleaved with plain
    values from several threads: every plain value digests exactly as in a fresh
    process that never saw a failure."""
    import pickle
    import subprocess
    import sys
    import threading

    values = _sample_values(7)
    (tmp_path / "values.pkl").write_bytes(pickle.dumps(values))
    code = ("import pickle, sys; from flowing.keys.digest import value_digest; "
            "print('\\n'.join(str(value_digest(v)) for v in "
            "pickle.load(open(sys.argv[1], 'rb'))))")
    fresh = subprocess.run([sys.executable, "-c", code, str(tmp_path / "values.pkl")],
                           capture_output=True, text=True, timeout=120, check=True)
    want = fresh.stdout.split()
    assert len(want) == len(values)

    cycle: list = []
    cycle.append(cycle)
    troubles = [_nested_lists(d, _Boom()) for d in (0, 1, 10, 49, 50, 51, 120)]
    troubles += [_nested_lists(5000, 1), cycle, {"a": [_Boom()]}, _Nested([1, {"b": 2}])]
    got: dict[int, list[str | None]] = {}

    def digest_all(t: int) -> None:
        out = []
        for k, v in enumerate(values):
            value_digest(troubles[(k + t) % len(troubles)])
            out.append(value_digest(v))
        got[t] = out

    digest_all(0)
    pool = [threading.Thread(target=digest_all, args=(t,)) for t in range(1, 4)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    for t in range(4):
        assert [str(d) for d in got[t]] == want, t
    assert value_digest(troubles[0]) is None and value_digest(cycle) is not None


def test_dicts_whose_keys_compare_equal_across_types_never_share_an_order():
    """``False == 0`` and ``True == 1``: a dict keyed by False must not take the key
    order (and so the keys) of one keyed by 0, in one value or from value to value."""
    a, b = {False: 1, None: 2}, {0: 1, None: 2}
    assert value_digest(a) != value_digest(b)
    assert value_digest([a, b]) != value_digest([a, a]) != value_digest([b, b])
    assert value_digest([b, a]) != value_digest([b, b])
    assert value_digest({True: "x", "k": 0}) != value_digest({1: "x", "k": 0})
    # keys out of canonical order: the order found for the first dict was applied to
    # the second, renaming 0 to False (0.3.0 gave these two lists one digest)
    c, d = {None: 2, False: 1}, {None: 2, 0: 1}
    assert value_digest([c, d]) != value_digest([c, c])
    assert value_digest([{"k": 0, True: "x"}, {"k": 0, 1: "x"}]) != value_digest(
        [{"k": 0, True: "x"}, {"k": 0, True: "x"}])


def test_digests_do_not_keep_the_keys_of_dicts_the_user_dropped():
    """The reused pickler remembers key orders of small dicts with short keys only:
    dicts with long keys or many keys leave nothing behind once dropped."""
    import gc
    import tracemalloc

    value_digest({"warm": 1})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            d = {bytes([i % 256]) * 100_000 + str(i).encode(): i, "b": 2}
            value_digest(d)
            del d
        big = {f"k{i}": i for i in range(50_000)}
        value_digest(big)
        del big
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2_000_000, held
