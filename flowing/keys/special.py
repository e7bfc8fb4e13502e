"""Types with an encoding of their own: buffers, numpy arrays, pandas frames, dates...

Part of the content digests (see ``flowing.keys.digest`` for the policy and
``canonical`` for the tags). ``_special(t)`` finds the encoder of a library
type by identity, without importing its module (a value of a type whose
module was never imported cannot exist); the canonical encoder calls it
before falling back to ``__reduce_ex__``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import types
from collections.abc import Callable
from typing import Any

from .encoding import (
    _HASH_OVER,
    Encoder,
    Unstable,
    _arg_step,
    _enc_bytes,
    _enc_str,
    _frame,
    _sha,
)
from .fast import _Fallback, _fast_hash
from .usercode import _instance_dict

_OWN_PACKAGE = __name__.partition(".")[0]

# --- types with an encoding of their own ---------------------------------------------------

Special = Callable[[Encoder, Any, int], bytes]


def _special(t: type) -> Special | None:
    """Encoders for library types, looked up without importing their modules
    (a value of a type whose module was never imported cannot exist)."""
    found = _SPECIAL.get(t)
    if found is not None:
        return found
    if t is types.MappingProxyType:
        return _enc_mapping_proxy
    if t is range:
        return _enc_range
    if t is slice:
        return _enc_slice
    if t is memoryview:
        return _enc_memoryview
    if t is staticmethod or t is classmethod:
        return _enc_method_wrapper
    if t is property:
        return _enc_property
    if t is functools.partial:
        return _enc_partial
    if t is functools.partialmethod:
        return _enc_partialmethod
    if t is functools.cached_property:
        return _enc_cached_property
    modules = sys.modules
    np = modules.get("numpy")
    if np is not None and t is getattr(np, "ndarray", None):
        return _remember(t, _enc_ndarray)
    pd = modules.get("pandas")
    if pd is not None:
        for cls, enc in ((getattr(pd, "DataFrame", None), _enc_frame),
                         (getattr(pd, "Series", None), _enc_series),
                         (getattr(pd, "RangeIndex", None), _enc_range_index),
                         (getattr(pd, "Index", None), _enc_index)):
            if t is cls:
                return _remember(t, enc)
    ar = modules.get("array")
    if ar is not None and t is ar.array:
        return _remember(t, _enc_pyarray)
    dt = modules.get("datetime")
    if dt is not None:
        for cls, enc in ((dt.datetime, _enc_datetime), (dt.date, _enc_date),
                         (dt.time, _enc_time), (dt.timedelta, _enc_timedelta)):
            if t is cls:
                return _remember(t, enc)
    dec = modules.get("decimal")
    if dec is not None and t is dec.Decimal:
        return _remember(t, _enc_decimal)
    frac = modules.get("fractions")
    if frac is not None and t is frac.Fraction:
        return _remember(t, _enc_fraction)
    uid = modules.get("uuid")
    if uid is not None and t is uid.UUID:
        return _remember(t, _enc_uuid)
    rx = modules.get("re")
    if rx is not None and t is rx.Pattern:
        return _remember(t, _enc_pattern)
    res = modules.get(_OWN_PACKAGE + ".results")
    if res is not None and t is res.Failed:
        return _remember(t, _enc_failed)
    pl = modules.get("pathlib")
    if pl is not None:
        for cls in (pl.PurePosixPath, pl.PureWindowsPath, pl.PosixPath, pl.WindowsPath):
            if t is cls:
                return _remember(t, _enc_path)
    return None


_SPECIAL: dict[type, Special] = {}


def _remember(t: type, enc: Special) -> Special:
    _SPECIAL[t] = enc
    return enc


def _enc_failed(c: Encoder, x: Any, depth: int) -> bytes:
    try:
        item = c._enc(x.item, depth)
    except Unstable as e:
        raise e.within(".item") from None
    # a message naming an object by its address ("<Session at 0x7f3a...>") must not
    # make the digest differ between processes
    message = _ADDRESS.sub("0x?", str(x.message))
    return _frame(b"!F", c._enc(x.index, depth) + item + _enc_str(str(x.error_type))
                  + _enc_str(message))


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


def _enc_mapping_proxy(c: Encoder, x: Any, depth: int) -> bytes:
    return _frame(b"P", b"".join(sorted(c._pairs(x.items(), depth))))


def _enc_range(c: Encoder, x: range, depth: int) -> bytes:
    return b"r%x;%x;%x;" % (x.start, x.stop, x.step)


def _enc_slice(c: Encoder, x: slice, depth: int) -> bytes:
    return _frame(b":", c._enc(x.start, depth) + c._enc(x.stop, depth) + c._enc(x.step, depth))


def _enc_memoryview(c: Encoder, x: memoryview, depth: int) -> bytes:
    return _frame(b"v", _enc_str(x.format) + c._enc(x.shape, depth) + _enc_buffer(x))


def _enc_buffer(x: memoryview) -> bytes:
    """A buffer's bytes (in C order) as ``_enc_bytes`` encodes them; a large
    C-contiguous one is hashed in place."""
    if x.nbytes > _HASH_OVER and x.c_contiguous:
        return b"#" + _sha(b"b%d:" % x.nbytes, x.cast("B") if x.ndim <= 1 else x)
    return _enc_bytes(x.tobytes())


def _enc_pyarray(c: Encoder, x: Any, depth: int) -> bytes:
    with memoryview(x) as view:
        return _frame(b"@a", _enc_str(x.typecode) + _enc_buffer(view))


# numpy and pandas: recognised by type (never imported here), their data read in
# place. An array is its dtype (byte order, fields, units), its shape and its
# elements' bytes in C order, whatever its memory layout: a C-contiguous array
# is hashed where it lies, any other in copies of at most _CHUNK bytes. An
# array of Python objects is encoded element by element.

_CHUNK = 4 << 20


def _enc_ndarray(c: Encoder, x: Any, depth: int) -> bytes:
    head = c._enc(x.dtype, depth) + c._enc(tuple(x.shape), depth)
    if x.dtype.hasobject:
        return _frame(b"@O", head + _enc_objects(c, x, x.ravel().tolist(), depth))
    h = hashlib.sha256()
    _hash_array(h, x, sys.modules["numpy"])
    return _frame(b"@A", head + h.digest())


def _hash_array(h: Any, x: Any, np: Any) -> None:
    if x.flags.c_contiguous:
        if x.size:
            h.update(x.reshape(-1).view(np.uint8))
        return
    row = x.itemsize
    for n in x.shape[1:]:
        row *= n
    if row > _CHUNK:
        for i in range(x.shape[0]):
            _hash_array(h, x[i], np)
        return
    step = max(1, _CHUNK // max(row, 1))
    for i in range(0, x.shape[0], step):
        h.update(np.ascontiguousarray(x[i:i + step]).reshape(-1).view(np.uint8))


def _enc_objects(c: Encoder, owner: object, items: list[Any], depth: int) -> bytes:
    """Python objects in an array or a column (``owner``): through the fast
    encoding when it takes them (strings, numbers...), else one by one.

    One by one too when a hook is set (a stand-in of the hook met inside the
    fast encoding's own ``chunk`` calls would not taint this piece), and when
    ``owner`` is met again inside its own elements (a cycle through the fast
    encoding, which starts each object afresh: the canonical encoder, whose
    cycle detection spans this ``chunk``, takes over)."""
    key = id(owner)
    if c._hook is None and key not in c._fast_owners:
        c._fast_owners.add(key)
        try:
            return b"%" + _fast_hash(items, c.chunk)
        except _Fallback:
            pass
        finally:
            c._fast_owners.discard(key)
    return c._enc(items, depth)


def _enc_values(c: Encoder, x: Any, depth: int) -> bytes:
    """The values of a pandas Series or Index: in place when numpy holds them,
    else (extension types: strings, categories, nullable integers) their dtype
    and their values as Python objects."""
    dtype = x.dtype
    if isinstance(dtype, sys.modules["numpy"].dtype):
        return c._enc(x.to_numpy(copy=False), depth)
    if type(dtype).__name__ == "CategoricalDtype" and type(dtype).__module__.startswith("pandas"):
        # A categorical's values are its categories (and ordered flag, both in its
        # dtype) taken at its codes (-1: missing): the codes are hashed in place.
        return _frame(b"@k", c._enc(dtype, depth) + c._enc(x.array.codes, depth))
    # As Python objects, _ROWS at a time: memory stays bounded.
    values = x.array
    parts = [_enc_objects(c, x, values[i:i + _ROWS].to_numpy(dtype=object).tolist(), depth)
             for i in range(0, len(values), _ROWS)]
    return _frame(b"@X", c._enc(dtype, depth) + b"%d;" % len(values) + b"".join(parts))


_ROWS = 1 << 16


def _enc_frame(c: Encoder, x: Any, depth: int) -> bytes:
    parts = [c._enc(x.columns, depth), c._enc(x.index, depth),
             c._state(dict(x.attrs), depth), b"T" if x.flags.allows_duplicate_labels else b"F"]
    for j in range(x.shape[1]):
        parts.append(_enc_values(c, x.iloc[:, j], depth))
    return _frame(b"@F", b"".join(parts))


def _enc_series(c: Encoder, x: Any, depth: int) -> bytes:
    return _frame(b"@R", c._enc(x.name, depth) + c._enc(x.index, depth)
                  + c._state(dict(x.attrs), depth) + _enc_values(c, x, depth))


def _enc_index(c: Encoder, x: Any, depth: int) -> bytes:
    return _frame(b"@I", c._enc(x.name, depth) + _enc_values(c, x, depth))


def _enc_range_index(c: Encoder, x: Any, depth: int) -> bytes:
    return _frame(b"@J", b"%x;%x;%x;" % (x.start, x.stop, x.step) + c._enc(x.name, depth))


def _enc_method_wrapper(c: Encoder, x: Any, depth: int) -> bytes:
    tag = b"@s" if type(x) is staticmethod else b"@c"
    return _frame(tag, c._enc(x.__func__, depth))


def _enc_property(c: Encoder, x: property, depth: int) -> bytes:
    return _frame(b"@p", c._enc(x.fget, depth) + c._enc(x.fset, depth) + c._enc(x.fdel, depth))


def _enc_cached_property(c: Encoder, x: Any, depth: int) -> bytes:
    return _frame(b"@C", c._enc(x.func, depth) + c._enc(x.attrname, depth))


def _enc_partial(c: Encoder, x: functools.partial[Any], depth: int) -> bytes:
    try:
        func = c._enc(x.func, depth)
    except Unstable as e:
        raise e.within(".func") from None
    args = _frame(b"(", b"".join(c._items(x.args, depth, _arg_step)))
    keywords = c._state(dict(x.keywords), depth)
    return _frame(b"p", func + args + keywords + c._state(_instance_dict(x), depth))


def _enc_partialmethod(c: Encoder, x: Any, depth: int) -> bytes:
    args = _frame(b"(", b"".join(c._items(tuple(x.args), depth, _arg_step)))
    return _frame(b"@m", c._enc(x.func, depth) + args + c._state(dict(x.keywords), depth))


def _enc_date(c: Encoder, x: Any, depth: int) -> bytes:
    return b"@d%d-%d-%d;" % (x.year, x.month, x.day)


def _enc_datetime(c: Encoder, x: Any, depth: int) -> bytes:
    fields = b"%d-%d-%dT%d:%d:%d.%d/%d;" % (x.year, x.month, x.day, x.hour, x.minute,
                                           x.second, x.microsecond, x.fold)
    return _frame(b"@D", fields + c._enc(x.tzinfo, depth))


def _enc_time(c: Encoder, x: Any, depth: int) -> bytes:
    fields = b"%d:%d:%d.%d/%d;" % (x.hour, x.minute, x.second, x.microsecond, x.fold)
    return _frame(b"@t", fields + c._enc(x.tzinfo, depth))


def _enc_timedelta(c: Encoder, x: Any, depth: int) -> bytes:
    return b"@w%d;%d;%d;" % (x.days, x.seconds, x.microseconds)


def _enc_decimal(c: Encoder, x: Any, depth: int) -> bytes:
    sign, digits, exponent = x.as_tuple()
    return _frame(b"$", c._enc((sign, digits, exponent), depth))


def _enc_fraction(c: Encoder, x: Any, depth: int) -> bytes:
    return b"q%x;%x;" % (x.numerator, x.denominator)


def _enc_uuid(c: Encoder, x: Any, depth: int) -> bytes:
    return b"u%x;" % x.int


def _enc_path(c: Encoder, x: Any, depth: int) -> bytes:
    # The public name (pathlib.PosixPath): the module holding it moved in 3.13.
    return _frame(b"/", _enc_str("pathlib." + type(x).__name__) + _enc_str(str(x)))


def _enc_pattern(c: Encoder, x: Any, depth: int) -> bytes:
    return _frame(b"~", c._enc(x.pattern, depth) + b"%x;" % x.flags)
