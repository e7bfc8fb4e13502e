"""Digests of buffers (numpy arrays, pandas frames, bytes, array.array, memoryview):
read in place, with dtype and shape, equal for equal content whatever the memory
layout, different for any difference a user can see."""

import array
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flowing.keys.digest import digest_info, value_digest

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "stepkey_fixtures"


def _base():
    return np.arange(24, dtype=np.float64).reshape(4, 6)


def _different_arrays():
    a = _base()
    one = a.copy()
    one[2, 3] = -1.0
    return {
        "int64 view of the same bytes": a.view(np.int64),
        "reshaped": a.reshape(6, 4),
        "flattened": a.reshape(-1),
        "transposed": a.T,
        "one element changed": one,
        "float32": a.astype(np.float32),
        "big-endian": a.astype(">f8"),
        "a row fewer": a[:3],
        "structured": np.zeros(4, dtype=[("x", "<f8"), ("y", "<i8")]),
        "other field names": np.zeros(4, dtype=[("x", "<f8"), ("z", "<i8")]),
        "datetime64[s]": np.arange(24).astype("datetime64[s]").reshape(4, 6),
        "datetime64[ms]": np.arange(24).astype("datetime64[ms]").reshape(4, 6),
        "list": a.tolist(),
        "-0.0": np.where(a == 0, -0.0, a),
    }


def test_any_different_array_digests_differently():
    cases = dict(_different_arrays(), original=_base())
    digests = {name: value_digest(v) for name, v in cases.items()}
    assert None not in digests.values()
    assert len(set(digests.values())) == len(digests), digests


def test_equal_arrays_digest_alike_whatever_their_layout():
    a = _base()
    d = value_digest(a)
    assert value_digest(a.copy()) == d
    assert value_digest(np.asfortranarray(a)) == d  # same content, column-major memory
    big = np.arange(2_000_000, dtype=np.float64).reshape(1000, 2000)
    strided = big[::3, ::2]  # not contiguous: hashed in bounded copies
    assert not strided.flags.c_contiguous
    assert value_digest(strided) == value_digest(np.ascontiguousarray(strided))
    assert value_digest(big.T) == value_digest(np.ascontiguousarray(big.T))
    assert value_digest(big.T) != value_digest(big)
    assert value_digest(a) != value_digest(big)


def test_object_arrays_are_read_element_by_element():
    a = np.array(["x", 1, None, (1, 2)], dtype=object)
    assert value_digest(a) == value_digest(np.array(["x", 1, None, (1, 2)], dtype=object))
    assert value_digest(a) != value_digest(np.array(["x", 1, None, [1, 2]], dtype=object))
    assert value_digest(a) != value_digest(np.array(["x", 1.0, None, (1, 2)], dtype=object))
    assert value_digest(np.array([{1, 2}], dtype=object)) == \
        value_digest(np.array([{2, 1}], dtype=object))


class Holder:
    pass


def _self_holding_array(last):
    a = np.empty(2, dtype=object)
    h = Holder()
    h.array = a  # the array holds an object that holds the array
    a[0], a[1] = h, last
    return a


def test_an_object_array_that_holds_itself():
    d = value_digest(_self_holding_array("x"))
    assert d is not None
    assert value_digest(_self_holding_array("x")) == d
    assert value_digest(_self_holding_array("y")) != d


def test_arrays_inside_objects_and_containers():
    assert value_digest({"a": _base()}) == value_digest({"a": _base()})
    assert value_digest({"a": _base()}) != value_digest({"a": _base().T})
    assert value_digest([_base(), 1]) != value_digest([_base().reshape(6, 4), 1])


def _frame():
    return pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]})


def _different_frames():
    f = _frame()
    cell = f.copy()
    cell.loc[1, "b"] = 9.0
    cell_str = f.copy()
    cell_str.loc[2, "c"] = "w"
    attrs = f.copy()
    attrs.attrs["unit"] = "m"
    return {
        "renamed column": f.rename(columns={"a": "A"}),
        "shifted index": f.set_axis([1, 2, 3], axis=0),
        "one cell": cell,
        "one string cell": cell_str,
        "dtype change": f.astype({"a": "float64"}),
        "nullable dtype": f.astype({"a": "Int64"}),
        "columns reordered": f[["b", "a", "c"]],
        "a row fewer": f.iloc[:2],
        "named index": f.rename_axis("i"),
        "attrs": attrs,
        "a column as a Series": f["a"],
        "categorical": f.astype({"c": "category"}),
    }


def test_any_different_frame_digests_differently():
    cases = dict(_different_frames(), original=_frame())
    digests = {name: value_digest(v) for name, v in cases.items()}
    assert None not in digests.values()
    assert len(set(digests.values())) == len(digests), digests


def test_equal_frames_series_and_indexes_digest_alike():
    f = _frame()
    assert value_digest(f) == value_digest(_frame())
    assert value_digest(f) == value_digest(f.copy())
    assert value_digest(f) == value_digest(pickle.loads(pickle.dumps(f)))
    assert value_digest(f["b"]) == value_digest(_frame()["b"])
    assert value_digest(f["b"]) != value_digest(f["b"].rename("other"))
    assert value_digest(pd.Index([1, 2])) != value_digest(pd.Index([1, 3]))
    assert value_digest(pd.RangeIndex(3)) != value_digest(pd.RangeIndex(4))
    assert value_digest(pd.Index(["a", "b"])) == value_digest(pd.Index(["a", "b"]))
    multi = pd.DataFrame({"v": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]))
    assert value_digest(multi) == value_digest(multi.copy())
    assert value_digest(multi) != value_digest(multi.sort_index(ascending=False))


def test_categorical_values_by_categories_order_and_codes():
    """Categoricals are hashed by dtype (categories, ordered) and codes in place:
    every difference a user can see digests differently, an equal copy alike."""
    def cat(values, categories=("x", "y", "z"), ordered=False):
        return pd.DataFrame({"c": pd.Categorical(values, categories=list(categories),
                                                 ordered=ordered)})

    base = cat(["x", "y", None, "z"])
    variants = {
        "one cell": cat(["x", "y", None, "y"]),
        "missing filled": cat(["x", "y", "x", "z"]),
        "category renamed": cat(["x", "y", None, "w"], categories=("x", "y", "w")),
        "categories reordered": cat(["x", "y", None, "z"], categories=("z", "y", "x")),
        "unused category": cat(["x", "y", None, "z"], categories=("x", "y", "z", "u")),
        "ordered": cat(["x", "y", None, "z"], ordered=True),
        "plain strings": base.astype({"c": "object"}),
        "int categories": pd.DataFrame({"c": pd.Categorical([1, 2, None, 3])}),
    }
    digests = {name: value_digest(v) for name, v in dict(variants, base=base).items()}
    assert None not in digests.values()
    assert len(set(digests.values())) == len(digests), digests
    assert value_digest(base) == value_digest(base.copy())
    assert value_digest(base) == value_digest(pickle.loads(pickle.dumps(base)))
    assert value_digest(base) == value_digest(cat(["x", "y", None, "z"]))
    assert value_digest(pd.CategoricalIndex(["a", "b"])) != \
        value_digest(pd.CategoricalIndex(["a", "a"], categories=["a", "b"]))


def test_other_buffers():
    b = bytes(range(256)) * 100
    assert value_digest(b) == value_digest(bytes(b))
    assert value_digest(b) != value_digest(bytearray(b))
    assert value_digest(b) != value_digest(b[:-1] + b"\x01")
    assert value_digest(array.array("d", [1.0, 2.0] * 1000)) == \
        value_digest(array.array("d", [1.0, 2.0] * 1000))
    assert value_digest(array.array("d", [1.0] * 10)) != value_digest(array.array("q", [1] * 10))
    big = memoryview(b)
    assert value_digest(big) == value_digest(memoryview(bytes(b)))
    assert value_digest(big) != value_digest(big[1:])
    # a memoryview over a numpy array: by format, shape and bytes
    assert value_digest(memoryview(_base())) == value_digest(memoryview(_base().copy()))


def test_what_can_change_is_reported_mutable():
    assert digest_info((1, "a", (2.5, b"x"), frozenset({1})))[1] is True
    for value in ([1], {"a": 1}, {1}, _base(), _frame(), (1, [2]), bytearray(b"x")):
        assert digest_info(value)[1] is False


PRINT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, pandas as pd
from flowing.keys.digest import value_digest
a = np.arange(24, dtype=np.float64).reshape(4, 6)
f = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]})
f.attrs["tags"] = {"p", "q", "r"}
values = [a, a.T, f, f["c"], f.astype({"c": "category"}), np.array([{"s", "t"}, "u"], dtype=object)]
print(json.dumps([value_digest(v) for v in values]))
"""


def test_same_digests_across_processes_and_hash_seeds():
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "p.py")
        with open(script, "w") as fh:
            fh.write(PRINT)
        outs = []
        for hash_seed in ("1", "4242"):
            out = subprocess.run([sys.executable, script, str(REPO)], capture_output=True,
                                 text=True, timeout=120, env=dict(os.environ,
                                                                  PYTHONHASHSEED=hash_seed))
            assert out.returncode == 0, out.stderr
            outs.append(json.loads(out.stdout))
    assert outs[0] == outs[1]
    assert None not in outs[0] and len(set(outs[0])) == len(outs[0])


def test_arrays_digest_alike_exactly_when_dtype_shape_and_elements_match():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    dtypes = st.sampled_from([np.int8, np.int64, np.float32, np.float64, np.bool_, "<U3",
                              ">i4", "datetime64[s]"])
    arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                         max_side=4)))

    def same(a, b):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

    @settings(max_examples=300, deadline=None)
    @given(a=arrays, b=arrays, order=st.sampled_from(["C", "F"]))
    def check(a, b, order):
        da = value_digest(a)
        assert da is not None
        assert (da == value_digest(b)) == same(a, b)
        assert value_digest(np.array(a, order=order)) == da  # memory layout does not matter
        if a.ndim >= 2:
            assert value_digest(a[:, ::-1]) == value_digest(np.ascontiguousarray(a[:, ::-1]))

    check()
