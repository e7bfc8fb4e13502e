"""The canonical encoder: any value's content as bytes, the same in every process.

Part of the content digests (see ``flowing.keys.digest`` for the policy).
``Canonical.chunk`` encodes containers, functions, classes, modules, enums
and any object as pickle would reduce it (never running what it names),
with cycle detection by distance and a per-run ``Memo``; ``special`` encodes
library types of its own, ``encoding`` the atoms.
"""

from __future__ import annotations

import copyreg
import hashlib
import operator
import sys
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .encoding import (
    _ATOMS,
    _HASH_OVER,
    Hook,
    Unstable,
    _arg_step,
    _enc_str,
    _frame,
    _index_step,
    _key_step,
    _member_step,
    _text,
)
from .special import _special
from .usercode import (
    _instance_dict,
    _qualified,
    _reaches,
    is_user_class,
    is_user_function,
    type_label,
    type_name,
)

_MAX_DEPTH = 100           # nesting levels of one value
_EXTRA_ITEMS = 10_000_000  # items a reduce's iterator may hand out beyond its length hint
_NO_REACH = 1 << 62        # "no back-reference seen"


class Memo:
    """Encodings of values for one run, by ``id()``; keeps the values alive.

    Pass the same memo to every ``value_digest`` call of a run so that a value
    read by many tasks is encoded once. Values must not change while the memo
    is in use. A memo is not tied to a thread, but is meant for one run.
    """

    __slots__ = ("_entries", "_digests")

    def __init__(self) -> None:
        self._entries: dict[int, tuple[object, bytes | Unstable]] = {}
        self._digests: dict[int, tuple[object, str | None, bool]] = {}

    def __len__(self) -> int:
        return len(self._entries) + len(self._digests)

    def encoding(self, value: object) -> bytes | None:
        """The canonical encoding of ``value`` remembered by this memo, if any."""
        hit = self._entries.get(id(value))
        if hit is None or hit[0] is not value or not isinstance(hit[1], bytes):
            return None
        return hit[1]

    def clear(self) -> None:
        self._entries.clear()
        self._digests.clear()


# --- the encoder ------------------------------------------------------------------------
#
# Tags (the first byte or two of every piece) are distinct and prefix-free:
#   N E X T F           None, Ellipsis, NotImplemented, True, False
#   i f c s b y         int, float, complex, str, bytes, bytearray
#   ( [ { Z S P         tuple, list, dict, frozenset, set, mappingproxy
#   # r : v q u $ / ~   hashed piece, range, slice, memoryview, Fraction, UUID, Decimal,
#                       path, compiled pattern
#   @d @D @t @w         date, datetime, time, timedelta
#   @s @c @p @C @m @S   staticmethod, classmethod, property, cached_property,
#                       partialmethod, set or frozenset subclass
#   C M G g B p W e     class, module, global name, library closure, bound method,
#                       partial, wrapped callable, enum member
#   R L K 2 -           reduce, its list items, its dict items, (dict, slots) state, absent
#   @A @O @a            numpy array (by buffer), numpy array of objects, array.array
#   @F @R @I @J @X @k   DataFrame, Series, Index, RangeIndex, pandas extension values,
#                       pandas categorical values (dtype, codes)
#   %                   the fast encoding's digest of a list of Python objects
#   ^                   back-reference to an enclosing object (a cycle), by distance
#   !                   reserved for the hook's encodings


class Canonical:
    """The canonical encoder. ``chunk(value)`` returns the encoding of one
    value (raising ``Unstable``); ``value_digest`` hashes it.

    ``hook``: called for values that are instances of ``hook_types`` before
    the default encoding; it returns their encoding, or None for the default.
    ``stepkey`` uses it to encode the user's functions and classes by their
    code. A hook whose answer depends on the context (not only on the value)
    must increment ``taint``: nothing enclosing that answer is memoised. Each
    ``chunk`` call has its own ``taint``, so a stand-in used inside a nested
    call taints only that call.
    """

    __slots__ = ("_memo", "_hook", "_hook_types", "_active", "_reach", "taint", "_fast_owners")

    def __init__(self, memo: Memo | None = None, hook: Hook | None = None,
                 hook_types: tuple[type, ...] = ()) -> None:
        self._memo: dict[int, tuple[object, bytes | Unstable]] = (
            memo._entries if memo is not None else {})
        self._hook = hook
        self._hook_types = hook_types if hook is not None else ()
        self._active: dict[int, int] = {}  # id -> depth, of the objects being encoded
        self._reach = _NO_REACH  # shallowest object a back-reference pointed to
        self.taint = 0
        self._fast_owners: set[int] = set()  # arrays and columns in _enc_objects now

    def chunk(self, value: object) -> bytes:
        """The canonical encoding of ``value``; raises ``Unstable``.

        Re-entrant: a hook may call it for another value; each call has its
        own cycle detection.
        """
        saved = self._active, self._reach, self.taint
        self._active, self._reach, self.taint = {}, _NO_REACH, 0
        try:
            f = _ATOMS.get(type(value))
            if f is not None:
                return f(value)
            return self._enc(value, 0)
        except Unstable as e:
            if not e.transient and self.taint == 0:
                self._memo[id(value)] = (value, e.copy())
            raise
        except RecursionError:
            raise Unstable(type_label(type(value)), "nested too deeply to fingerprint",
                           transient=True) from None
        except Exception as exc:  # a hostile object somewhere inside
            raise Unstable(type_label(type(value)),
                           f"with no stable content (reading it raised {type_label(type(exc))})",
                           transient=True) from None
        finally:
            self._active, self._reach, self.taint = saved

    # The recursive core. Atoms are encoded inline by the container loops.
    def _enc(self, x: object, depth: int) -> bytes:
        t = type(x)
        f = _ATOMS.get(t)
        if f is not None:
            return f(x)
        k = id(x)
        hit = self._memo.get(k)
        if hit is not None:
            found = hit[1]
            if isinstance(found, Unstable):
                raise found.copy()
            return found
        at = self._active.get(k)
        if at is not None:
            # A back-reference to an object being encoded (a cycle): its
            # distance up the path, which depends on the structure only.
            if at < self._reach:
                self._reach = at
            return b"^%x;" % (depth - at)
        if depth > _MAX_DEPTH:
            raise Unstable(type_label(t), "nested too deeply to fingerprint", transient=True)
        self._active[k] = depth
        outer_reach, self._reach = self._reach, _NO_REACH
        taint = self.taint
        try:
            raw = self._dispatch(x, t, depth + 1)
        finally:
            del self._active[k]
            reach = self._reach
            self._reach = min(outer_reach, reach)
        # Memoise only what does not depend on the context: no stand-in from the
        # hook, and no back-reference at all. (A piece on a cycle unfolds
        # differently from each entry point; a piece that met no back-reference
        # cannot reach any object above it, so it reads the same from anywhere.)
        context_free = self.taint == taint and reach == _NO_REACH
        if len(raw) > _HASH_OVER:
            raw = b"#" + hashlib.sha256(raw).digest()
            if context_free:
                self._memo[k] = (x, raw)
        elif depth == 0 and context_free:
            self._memo[k] = (x, raw)
        return raw

    def _items(self, xs: Any, depth: int, steps: Callable[[int], str]) -> list[bytes]:
        """Encode the members of an exact list, tuple or set, in iteration order."""
        out: list[bytes] = []
        append = out.append
        atoms = _ATOMS
        i = 0
        try:
            for v in xs:
                t = type(v)
                if t is int:
                    append(b"i%x;" % v)
                elif t is str:
                    append(_enc_str(v))
                else:
                    f = atoms.get(t)
                    append(f(v) if f is not None else self._enc(v, depth))
                i += 1
        except Unstable as e:
            raise e.within(steps(i)) from None
        return out

    def _pairs(self, items: Any, depth: int, attrs: bool = False) -> list[bytes]:
        """Encoded (key, value) pairs, each one piece, in iteration order."""
        out: list[bytes] = []
        for key, value in items:
            try:
                ek = self._enc(key, depth)
                ev = self._enc(value, depth)
            except Unstable as e:
                step = f".{key}" if attrs and type(key) is str else _key_step(key)
                raise e.within(step) from None
            out.append(ek + ev)
        return out

    def _dispatch(self, x: Any, t: type, depth: int) -> bytes:
        if t is tuple:
            return _frame(b"(", b"".join(self._items(x, depth, _index_step)))
        if t is list:
            return _frame(b"[", b"".join(self._items(x, depth, _index_step)))
        if t is dict:
            return _frame(b"{", b"".join(sorted(self._pairs(x.items(), depth))))
        if t is frozenset or t is set:
            members = sorted(self._items(x, depth, _member_step))
            return _frame(b"Z" if t is frozenset else b"S", b"".join(members))
        hook = self._hook
        if hook is not None and isinstance(x, self._hook_types):
            found = hook(x)
            if found is not None:
                return found
        if t is types.FunctionType:
            return self._function(x, depth)
        if issubclass(t, type):
            return _frame(b"C", _text(type_name(x)))
        if issubclass(t, types.ModuleType):
            return _frame(b"M", _text(str(x.__name__)))
        if t is types.MethodType:
            try:
                bound = self._enc(x.__self__, depth)
            except Unstable as e:
                raise e.within(".__self__") from None
            return _frame(b"B", bound + self._enc(x.__func__, depth))
        special = _special(t)
        if special is not None:
            return special(self, x, depth)
        enum = sys.modules.get("enum")
        if enum is not None and issubclass(t, enum.Enum):
            return _frame(b"e", self._enc(t, depth) + _enc_str(str(x._name_))
                          + self._enc(x._value_, depth))
        if issubclass(t, (set, frozenset)):
            members = sorted(self._items(set.__iter__(x) if issubclass(t, set)
                                         else frozenset.__iter__(x), depth, _member_step))
            return _frame(b"@S", self._enc(t, depth) + _frame(b"S", b"".join(members))
                          + self._state(_instance_dict(x), depth))
        if self._hook is not None and not is_user_class(t):
            # Step keys want the code a library wrapper wraps (lru_cache...).
            inner = _instance_dict(x)
            if isinstance(inner, dict) and "__wrapped__" in inner and callable(x):
                return _frame(b"W", self._enc(t, depth) + self._enc(inner["__wrapped__"], depth))
        return self._reduce(x, t, depth)

    def _function(self, fn: types.FunctionType, depth: int) -> bytes:
        qualname = fn.__qualname__
        module = fn.__module__
        library = not is_user_function(fn)
        local = "<locals>" in qualname or "<lambda>" in qualname
        if not local and (library or _reaches(module, qualname, fn)):
            return _frame(b"G", _text(_qualified(module, qualname)))
        if not library:
            raise Unstable(f"function {qualname}",
                           "(a nested function or a lambda, not reachable by its name) "
                           "with no stable content")
        # A library function made inside another (a decorator's wrapper): its
        # name and the values it closes over.
        parts = [_enc_str(_qualified(module, qualname))]
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:  # a cell not assigned yet
                parts.append(_enc_str(var) + b"-")
                continue
            try:
                parts.append(_enc_str(var) + self._enc(content, depth))
            except Unstable as e:
                raise e.within(f".<closure {var}>") from None
        parts.append(self._enc(fn.__defaults__, depth))
        parts.append(self._enc(fn.__kwdefaults__, depth))
        return _frame(b"g", b"".join(parts))

    def _state(self, state: object, depth: int) -> bytes:
        """An object's state: a dict of attributes, (dict, slots dict), or anything.

        An empty state restores nothing, so it encodes like no state: an
        exception reports ``{}`` or nothing depending on whether anything
        ever touched its ``__dict__``."""
        if state is None or (type(state) is dict and not state) or (
                type(state) is tuple and len(state) == 2 and all(
                    s is None or (type(s) is dict and not s) for s in state)):
            return b"N"
        if type(state) is dict:
            return _frame(b"{", b"".join(sorted(self._pairs(state.items(), depth, attrs=True))))
        if type(state) is tuple and len(state) == 2 and all(
                s is None or type(s) is dict for s in state):
            return _frame(b"2", self._state(state[0], depth) + self._state(state[1], depth))
        try:
            return self._enc(state, depth)
        except Unstable as e:
            raise e.within(".<state>") from None

    def _reduce(self, x: object, t: type, depth: int) -> bytes:
        """Anything else, as pickle would save it (never running what it names)."""
        # The type's own reduce first: a registration in copyreg.dispatch_table by
        # whatever the process imported (tblib registers every exception class)
        # must not change a digest. The table serves types that refuse on their own.
        try:
            reduce_ex: Any = t.__reduce_ex__  # from the type: no instance tricks
            rv = reduce_ex(x, 4)
        except Exception as exc:
            reducer = copyreg.dispatch_table.get(t)
            if reducer is None:
                raise Unstable(type_label(t), _refusal(exc)) from None
            try:
                rv = reducer(x)
            except Exception as again:
                raise Unstable(type_label(t), _refusal(again)) from None
        if type(rv) is str:  # "the global of that name", which pickle checks is this object
            module = getattr(x, "__module__", None)
            if not _reaches(module, rv, x):
                raise Unstable(type_label(t), "(not reachable by the name it gives) with no "
                                              "stable content")
            return _frame(b"G", _text(_qualified(module, rv)))
        if type(rv) is not tuple or not 2 <= len(rv) <= 6 or type(rv[1]) is not tuple:
            raise Unstable(type_label(t), "with no stable content (its __reduce_ex__ returned "
                                      "something pickle would refuse)")
        parts = [self._enc(rv[0], depth),
                 _frame(b"(", b"".join(self._items(rv[1], depth, _arg_step)))]
        parts.append(self._state(rv[2] if len(rv) > 2 else None, depth))
        listitems = rv[3] if len(rv) > 3 else None
        if listitems is None:
            parts.append(b"-")
        else:
            try:
                parts.append(_frame(b"L", b"".join(self._items(_bounded_list(listitems),
                                                               depth, _index_step))))
            except Unstable:
                raise
            except Exception as exc:
                raise Unstable(type_label(t), _refusal(exc)) from None
        dictitems = rv[4] if len(rv) > 4 else None
        if dictitems is None:
            parts.append(b"-")
        else:
            try:
                pairs = self._pairs(_bounded(dictitems), depth)
            except Unstable:
                raise
            except Exception as exc:
                raise Unstable(type_label(t), _refusal(exc)) from None
            if not isinstance(x, OrderedDict):
                pairs.sort()
            parts.append(_frame(b"K", b"".join(pairs)))
        parts.append(self._enc(rv[5] if len(rv) > 5 else None, depth))
        return _frame(b"R", b"".join(parts))


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, TypeError):  # what pickle says: "cannot pickle '_thread.lock' object"
        return "with no stable content"
    return f"with no stable content (its __reduce_ex__ raised {type_label(type(exc))})"


def _bounded_list(items: Any) -> list[Any]:
    """Reduce's list items: an iterator that hands out far more than its length
    hint promised never ends (a hostile reduce), so it is cut off."""
    out = []
    limit = _item_limit(items)
    for n, item in enumerate(items):
        if n > limit:
            raise Unstable("iterator", "that never ends", transient=True)
        out.append(item)
    return out


def _item_limit(items: Any) -> int:
    try:
        hint = operator.length_hint(items, 0)
    except Exception:  # a hostile __length_hint__
        hint = 0
    return max(hint, 0) + _EXTRA_ITEMS


def _bounded(items: Any) -> Any:
    """Iterate reduce's dict items, each a (key, value) pair (see ``_bounded_list``)."""
    limit = _item_limit(items)
    for n, pair in enumerate(items):
        if n > limit:
            raise Unstable("iterator", "that never ends", transient=True)
        if type(pair) is not tuple or len(pair) != 2:
            raise Unstable("dict item", "with no stable content")
        yield pair
