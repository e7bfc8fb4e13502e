"""Content digests of values: a canonical encoding of what a value holds.

``value_digest(value)`` is the hex SHA-256 of a canonical encoding of the
value's content, or None when the value (or anything inside it) has no stable
content. The same value gives the same digest in every process and for every
``PYTHONHASHSEED``; two values with the same digest are equal (for types that
compare by content). Computing a digest never raises and never runs the
value's ``__eq__``, ``__hash__``, ``__repr__`` or ``__str__``.

The encoding
------------
Like ``joblib.hash`` or Bazel's action digests, the encoding recurses into
containers and objects, and every piece is self-delimiting (a tag, then a
length or a terminator), so distinct values never concatenate into the same
bytes. A piece whose encoding is longer than 1 KiB is replaced by its own
SHA-256 (a Merkle tree): the rule depends on content only, so it changes no
digest, and it keeps memory small and lets a large shared piece be encoded
once (see ``Memo``).

* ``None``, ``...``, ``NotImplemented``, ``bool``, ``int``, ``float``,
  ``complex``, ``str``, ``bytes``, ``bytearray``: by value and exact type, so
  ``1``, ``1.0`` and ``True`` differ. Floats by their shortest repr: ``-0.0``
  differs from ``0.0``, and every NaN encodes the same.
* ``tuple`` and ``list`` in order; ``dict``, ``set``, ``frozenset`` and
  ``types.MappingProxyType`` with their members (dict items) sorted by their
  encoded bytes, so neither the hash seed nor insertion order matters.
* ``range``, ``slice``, ``memoryview`` (format, shape, bytes).
* ``datetime.date``, ``datetime.time``, ``datetime.datetime`` (every field,
  ``fold`` and the ``tzinfo`` by content), ``datetime.timedelta``;
  ``decimal.Decimal`` by sign, digits and exponent (``1.0`` and ``1.00``
  differ); ``fractions.Fraction``; ``uuid.UUID``; ``pathlib`` paths (type
  and text); compiled ``re`` patterns (pattern and flags).
* Enum members: their class, name and value.
* ``flowing.Failed`` (a tolerated failed item): its index, item, and its
  error's type name and message (text taken when it was made, with any
  ``0x...`` address masked), not the exception object, whose state may hold
  anything.
* Classes and functions as code: library ones (standard library,
  site-packages, this package) by module and qualified name; the user's own
  classes by their bare qualified name (their module's name differs between
  running a file as a script and importing it; so two classes of yours with
  the same qualified name in two modules count as one). A user's function is
  encoded by name only when that name reaches it (like ``pickle``);
  a lambda or a nested function of the user has no stable content here
  (step keys, in ``stepkey``, digest user code by content instead).
  A library function made inside another function (a decorator's wrapper):
  its name and the values it closes over. Modules by name.
* Bound methods: the bound object (by content) and the function;
  ``functools.partial``: function, arguments, keywords and attributes;
  ``staticmethod``, ``classmethod``, ``property``,
  ``functools.cached_property``, ``functools.partialmethod``: what they
  wrap. With a hook (step keys), a library callable with ``__wrapped__``
  (``functools.lru_cache``): its type and the wrapped function; without one,
  as ``pickle`` saves it (by name).
* Any other object as ``pickle`` would save it, through ``__reduce_ex__(4)``
  (or, when that refuses, ``copyreg.dispatch_table``: the other way round
  from ``pickle``, so that a reducer some imported library registers, as
  tblib does for exceptions, changes no digest): the reconstructing callable
  (by name), its arguments, the state (``__dict__``, ``__slots__``,
  ``__getstate__``; an empty state counts as none), list items in order and
  dict items sorted (in order for an ``OrderedDict``). A name given instead
  of a reduction must reach the object, as ``pickle`` checks. Dataclasses,
  namedtuples, ``SimpleNamespace``, ``deque``, exceptions, loggers (by
  name), numpy arrays and most library objects fall in here. Nothing is
  ever read from a memory address or a ``repr``.
* A value met again inside itself (a list that contains itself, a tree whose
  nodes point to their parent) is encoded as a back-reference: how many levels
  up the path the enclosing object sits.

What has no stable content
--------------------------
A value whose ``__reduce_ex__`` refuses (generators, locks, sockets, open
files, database connections), or raises anything, or names a global that is
not this object; nesting deeper than 100 levels; more than 20,000,000
pieces. Any of these inside a container or an object's state makes the whole
value unstable. Internally this raises ``Unstable``, whose ``what`` and ``reason``
say which value, of what type and where inside (``.session.sock``,
``[3]``, ``['key']``) it was met.

``Memo`` caches, for one run, the encoding of each value digested at top
level and of each piece large enough to be hashed, by ``id()``, and keeps
those objects alive so that an ``id()`` is never reused for another object
while the memo lives. Values are assumed not to change while a memo is in
use.
"""

from __future__ import annotations

import copyreg
import functools
import hashlib
import os
import re
import site
import sys
import sysconfig
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["value_digest", "Memo", "Unstable", "Canonical", "type_name", "is_user_module",
           "is_user_function", "is_user_class", "type_label", "clear_cache"]

DIGEST_VERSION = 1
_PREFIX = f"flowing-value/{DIGEST_VERSION}\n".encode()

_MAX_DEPTH = 100           # nesting levels of one value
_BUDGET = 20_000_000       # pieces encoded for one top-level value
_HASH_OVER = 1024          # pieces longer than this are replaced by their SHA-256
_NO_REACH = 1 << 62        # "no back-reference seen"
_OWN_PACKAGE = __name__.partition(".")[0]


def inputs_digest(named: Iterable[tuple[str, str | None]]) -> str | None:
    """The digest of the dependency values a task is computed from, given
    (dependency name, value digest) pairs in any order; None if any is None."""
    parts = []
    for name, digest in named:
        if digest is None:
            return None
        parts.append(f"{name}={digest}")
    h = hashlib.sha256(b"flowing-inputs/1")
    for part in sorted(parts):
        h.update(part.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def value_digest(value: object, memo: Memo | None = None) -> str | None:
    """Hex SHA-256 of the canonical encoding of ``value``'s content, or None
    when it has no stable content. Never raises."""
    try:
        chunk = Canonical(memo).chunk(value)
    except KeyboardInterrupt:
        raise
    except BaseException:  # Unstable, or anything a hostile object managed to raise
        return None
    return hashlib.sha256(_PREFIX + chunk).hexdigest()


class Unstable(Exception):
    """A value has no stable content (raised inside the encoder, never out of
    ``value_digest``).

    ``type_name`` names the value's type, ``location`` where it sits inside
    the value being digested (``.conn``, ``[2]['k']``), ``reason`` why it has
    no stable content; ``what`` puts the first two together. ``place``,
    ``name`` and ``origin`` are for the caller (``stepkey`` records there which
    variable held the value and in which function or class it was found);
    once ``place`` is set the location is complete and ``within`` adds nothing.
    """

    def __init__(self, type_name: str, reason: str = "with no stable content", *,
                 transient: bool = False) -> None:
        super().__init__(type_name, reason)
        self.type_name = type_name
        self.reason = reason
        self.transient = transient  # depends on the context (depth, budget): not cached
        self.steps: list[str] = []  # innermost first
        self.place: str | None = None
        self.name = ""
        self.origin: object | None = None

    def within(self, step: str) -> Unstable:
        """Record one more step of the path, from the inside out."""
        if self.place is None:
            self.steps.append(step)
        return self

    @property
    def location(self) -> str:
        return "".join(reversed(self.steps))

    @property
    def what(self) -> str:
        loc = self.location
        name = self.type_name
        article = "an" if name[:1].lower() in "aeiou" else "a"
        return f"{article} {name}" + (f" (at {self.name}{loc})" if loc else "")

    def copy(self) -> Unstable:
        other = Unstable(self.type_name, self.reason, transient=self.transient)
        other.steps = list(self.steps)
        other.place = self.place
        other.name = self.name
        other.origin = self.origin
        return other

    def __str__(self) -> str:
        return f"{self.what} {self.reason}"


class Memo:
    """Encodings of values for one run, by ``id()``; keeps the values alive.

    Pass the same memo to every ``value_digest`` call of a run so that a value
    read by many tasks is encoded once. Values must not change while the memo
    is in use. A memo is not tied to a thread, but is meant for one run.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, tuple[object, bytes | Unstable]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


# --- atoms ------------------------------------------------------------------------------

def _frame(tag: bytes, payload: bytes) -> bytes:
    return b"%s%d:%s" % (tag, len(payload), payload)


def _text(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _enc_str(x: str) -> bytes:
    b = x.encode("utf-8", "surrogatepass")
    return b"s%d:%s" % (len(b), b)


def _enc_float(x: float) -> bytes:
    return b"f%s;" % float.__repr__(x).encode()  # 'nan' for every NaN, '-0.0' kept


def _enc_complex(x: complex) -> bytes:
    return b"c%s;%s;" % (float.__repr__(x.real).encode(), float.__repr__(x.imag).encode())


def _enc_bytes(x: bytes) -> bytes:
    return b"b%d:%s" % (len(x), x)


def _enc_bytearray(x: bytearray) -> bytes:
    return b"y%d:%s" % (len(x), bytes(x))


_ATOMS: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda x: b"N",
    type(...): lambda x: b"E",
    type(NotImplemented): lambda x: b"X",
    bool: lambda x: b"T" if x else b"F",
    int: lambda x: b"i%x;" % x,  # hex: no digit limit on huge ints
    float: _enc_float,
    complex: _enc_complex,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytearray,
}


def _key_step(key: object) -> str:
    """A path step for a dict key, without running any user code."""
    t = type(key)
    if t is str:
        text = str(key)
        return f"[{text[:40]!r}]" if len(text) <= 40 else f"[{text[:37]!r}...]"
    if t is int or t is bool or key is None:
        return f"[{key!r}]"
    return f"[<{type_label(t)} key>]"


# --- whose code is it -------------------------------------------------------------------

_module_kind_cache: dict[str, bool] = {}


def clear_cache() -> None:
    """Forget which modules were classified as the user's (after sys.modules changed)."""
    _module_kind_cache.clear()


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    """Directories holding the standard library and installed packages."""
    paths = sysconfig.get_paths()
    dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except Exception:  # some embedded or virtualenv setups lack these
        pass
    found = set()
    for d in dirs:
        if d:
            found.add(_norm(d))
            found.add(_norm(os.path.realpath(d)))
    return tuple(sorted(found))


def _norm(path: str) -> str:
    return os.path.normcase(os.path.abspath(path)).rstrip(os.sep) + os.sep


def _in_library_dir(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    candidates = {_norm(path), _norm(os.path.realpath(path))}
    return any(c.startswith(d) for c in candidates for d in _library_dirs())


def is_user_module(modname: object, filename: object = None) -> bool:
    """True for a module written by the user (outside the standard library,
    site-packages and this package), whose code goes into step keys."""
    if not isinstance(modname, str):
        return not isinstance(filename, str) or not _in_library_dir(filename)
    cached = _module_kind_cache.get(modname)
    if cached is not None:
        return cached
    top = modname.partition(".")[0]
    module = sys.modules.get(modname)
    file = getattr(module, "__file__", None) if module is not None else None
    if top == _OWN_PACKAGE:
        is_user = False
    elif isinstance(file, str) and file:
        # The file decides, so a project module that happens to share a name
        # with a stdlib module is still the user's.
        is_user = not _in_library_dir(file)
    elif module is None and isinstance(filename, str) and os.path.isabs(filename):
        is_user = not _in_library_dir(filename)
    else:  # builtin or frozen modules, or code made by exec()
        is_user = top not in sys.stdlib_module_names and top not in sys.builtin_module_names
    if module is not None:
        _module_kind_cache[modname] = is_user
    return is_user


def is_user_function(fn: types.FunctionType) -> bool:
    code = getattr(fn, "__code__", None)
    return is_user_module(getattr(fn, "__module__", None), getattr(code, "co_filename", None))


def is_user_class(cls: type) -> bool:
    return is_user_module(getattr(cls, "__module__", None))


def _qualified(module: object, qualname: str) -> str:
    """``module.qualname`` for library names, the bare qualname for the user's."""
    if not isinstance(module, str) or is_user_module(module):
        return qualname
    return f"{module}.{qualname}"


def type_name(cls: type) -> str:
    """``module.qualname`` for library types; the bare qualname for the user's
    own, whose module name depends on how the program was started."""
    qualname = getattr(cls, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = str(type.__dict__["__name__"].__get__(cls, type))
    return _qualified(getattr(cls, "__module__", None), qualname)


def type_label(cls: type) -> str:
    """A type's name for messages (``socket.socket``, ``list``): never raises."""
    try:
        name = type_name(cls)
    except Exception:
        return "object"
    return name[len("builtins."):] if name.startswith("builtins.") else name


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
#   ^                   back-reference to an enclosing object (a cycle), by distance
#   !                   reserved for the hook's encodings

Hook = Callable[[object], "bytes | None"]


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

    __slots__ = ("_memo", "_hook", "_hook_types", "_active", "_reach", "_budget", "taint")

    def __init__(self, memo: Memo | None = None, hook: Hook | None = None,
                 hook_types: tuple[type, ...] = ()) -> None:
        self._memo: dict[int, tuple[object, bytes | Unstable]] = (
            memo._entries if memo is not None else {})
        self._hook = hook
        self._hook_types = hook_types if hook is not None else ()
        self._active: dict[int, int] = {}  # id -> depth, of the objects being encoded
        self._reach = _NO_REACH  # shallowest object a back-reference pointed to
        self._budget = _BUDGET
        self.taint = 0

    def chunk(self, value: object) -> bytes:
        """The canonical encoding of ``value``; raises ``Unstable``.

        Re-entrant: a hook may call it for another value; each call has its
        own cycle detection and budget.
        """
        saved = self._active, self._reach, self._budget, self.taint
        self._active, self._reach, self._budget, self.taint = {}, _NO_REACH, _BUDGET, 0
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
            self._active, self._reach, self._budget, self.taint = saved

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
        self._budget -= 1
        if self._budget < 0:
            raise Unstable(type_label(t), "too large to fingerprint", transient=True)
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
        self._budget -= len(xs)
        if self._budget < 0:
            raise Unstable("collection", "too large to fingerprint", transient=True)
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
            self._budget -= 1
        if self._budget < 0:
            raise Unstable("mapping", "too large to fingerprint", transient=True)
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


def _index_step(i: int) -> str:
    return f"[{i}]"


def _member_step(i: int) -> str:
    return "{member}"


def _arg_step(i: int) -> str:
    return f"<arg {i}>"


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, TypeError):  # what pickle says: "cannot pickle '_thread.lock' object"
        return "with no stable content"
    return f"with no stable content (its __reduce_ex__ raised {type_label(type(exc))})"


def _bounded_list(items: Any) -> list[Any]:
    """Reduce's list items, within the budget (an iterator may never end)."""
    out = []
    for n, item in enumerate(items):
        if n > _BUDGET:
            raise Unstable("iterator", "too large to fingerprint", transient=True)
        out.append(item)
    return out


def _bounded(items: Any) -> Any:
    """Iterate reduce's dict items, each a (key, value) pair, within the budget."""
    for n, pair in enumerate(items):
        if n > _BUDGET:
            raise Unstable("iterator", "too large to fingerprint", transient=True)
        if type(pair) is not tuple or len(pair) != 2:
            raise Unstable("dict item", "with no stable content")
        yield pair


def _instance_dict(x: object) -> object:
    try:
        return object.__getattribute__(x, "__dict__")
    except AttributeError:
        return None


def _reaches(module: object, qualname: str, obj: object) -> bool:
    """Does ``module.qualname`` name ``obj`` (so the name identifies it, as for pickle)?"""
    found = sys.modules.get(module) if isinstance(module, str) else None
    if found is None:
        return False
    current: object = found
    for part in qualname.split("."):
        d = _instance_dict(current)
        if not isinstance(d, (dict, types.MappingProxyType)) or part not in d:
            return False
        current = d[part]
        if isinstance(current, (staticmethod, classmethod)):
            current = current.__func__
    return current is obj


# --- types with an encoding of their own ---------------------------------------------------

Special = Callable[[Canonical, Any, int], bytes]


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


def _enc_failed(c: Canonical, x: Any, depth: int) -> bytes:
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


def _enc_mapping_proxy(c: Canonical, x: Any, depth: int) -> bytes:
    return _frame(b"P", b"".join(sorted(c._pairs(x.items(), depth))))


def _enc_range(c: Canonical, x: range, depth: int) -> bytes:
    return b"r%x;%x;%x;" % (x.start, x.stop, x.step)


def _enc_slice(c: Canonical, x: slice, depth: int) -> bytes:
    return _frame(b":", c._enc(x.start, depth) + c._enc(x.stop, depth) + c._enc(x.step, depth))


def _enc_memoryview(c: Canonical, x: memoryview, depth: int) -> bytes:
    return _frame(b"v", _enc_str(x.format) + c._enc(x.shape, depth) + _enc_bytes(x.tobytes()))


def _enc_method_wrapper(c: Canonical, x: Any, depth: int) -> bytes:
    tag = b"@s" if type(x) is staticmethod else b"@c"
    return _frame(tag, c._enc(x.__func__, depth))


def _enc_property(c: Canonical, x: property, depth: int) -> bytes:
    return _frame(b"@p", c._enc(x.fget, depth) + c._enc(x.fset, depth) + c._enc(x.fdel, depth))


def _enc_cached_property(c: Canonical, x: Any, depth: int) -> bytes:
    return _frame(b"@C", c._enc(x.func, depth) + c._enc(x.attrname, depth))


def _enc_partial(c: Canonical, x: functools.partial[Any], depth: int) -> bytes:
    try:
        func = c._enc(x.func, depth)
    except Unstable as e:
        raise e.within(".func") from None
    args = _frame(b"(", b"".join(c._items(x.args, depth, _arg_step)))
    keywords = c._state(dict(x.keywords), depth)
    return _frame(b"p", func + args + keywords + c._state(_instance_dict(x), depth))


def _enc_partialmethod(c: Canonical, x: Any, depth: int) -> bytes:
    args = _frame(b"(", b"".join(c._items(tuple(x.args), depth, _arg_step)))
    return _frame(b"@m", c._enc(x.func, depth) + args + c._state(dict(x.keywords), depth))


def _enc_date(c: Canonical, x: Any, depth: int) -> bytes:
    return b"@d%d-%d-%d;" % (x.year, x.month, x.day)


def _enc_datetime(c: Canonical, x: Any, depth: int) -> bytes:
    fields = b"%d-%d-%dT%d:%d:%d.%d/%d;" % (x.year, x.month, x.day, x.hour, x.minute,
                                           x.second, x.microsecond, x.fold)
    return _frame(b"@D", fields + c._enc(x.tzinfo, depth))


def _enc_time(c: Canonical, x: Any, depth: int) -> bytes:
    fields = b"%d:%d:%d.%d/%d;" % (x.hour, x.minute, x.second, x.microsecond, x.fold)
    return _frame(b"@t", fields + c._enc(x.tzinfo, depth))


def _enc_timedelta(c: Canonical, x: Any, depth: int) -> bytes:
    return b"@w%d;%d;%d;" % (x.days, x.seconds, x.microseconds)


def _enc_decimal(c: Canonical, x: Any, depth: int) -> bytes:
    sign, digits, exponent = x.as_tuple()
    return _frame(b"$", c._enc((sign, digits, exponent), depth))


def _enc_fraction(c: Canonical, x: Any, depth: int) -> bytes:
    return b"q%x;%x;" % (x.numerator, x.denominator)


def _enc_uuid(c: Canonical, x: Any, depth: int) -> bytes:
    return b"u%x;" % x.int


def _enc_path(c: Canonical, x: Any, depth: int) -> bytes:
    # The public name (pathlib.PosixPath): the module holding it moved in 3.13.
    return _frame(b"/", _enc_str("pathlib." + type(x).__name__) + _enc_str(str(x)))


def _enc_pattern(c: Canonical, x: Any, depth: int) -> bytes:
    return _frame(b"~", c._enc(x.pattern, depth) + b"%x;" % x.flags)
