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
