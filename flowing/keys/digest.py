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
* Classes and functions by module and qualified name (``module_name``: a
  script's ``__main__`` is named as its file would be imported, so running
  a file and importing it agree, and two classes of one name in two modules
  differ). A user's function is encoded by name only when that name reaches
  it (like ``pickle``); a lambda or a nested function of the user has no
  stable content here (step keys, in ``stepkey``, digest user code by
  content instead). A library function made inside another function (a
  decorator's wrapper): its name and the values it closes over. Modules by
  name.
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
  name) and most library objects fall in here. Nothing is ever read from a
  memory address or a ``repr``.
* Buffers, read in place (no copy): numpy arrays (exact ``ndarray``) by
  dtype, shape and their elements' bytes in C order whatever the memory
  layout (non-contiguous ones in copies of at most ``_CHUNK`` bytes); pandas
  ``DataFrame``, ``Series``, ``Index``, ``RangeIndex`` (exact types) by
  labels, index, ``attrs`` and each column; ``array.array``, memoryviews,
  and bytes or bytearrays over 1 KiB (hashed in place, to the same piece a
  copy would give). Arrays and columns of Python objects (object dtype,
  pandas extension columns as their dtype and Python values) element by
  element, through the fast encoding below. numpy and pandas are never
  imported here: their types are recognised once their modules are loaded.
* A value met again inside itself (a list that contains itself, a tree whose
  nodes point to their parent) is encoded as a back-reference: how many levels
  up the path the enclosing object sits.

The fast encoding
-----------------
``value_digest`` first tries the C pickler (see ``_Pickler``, below): plain
data (None, bool, int, float, str, bytes, list, tuple, dict) is written at C
speed, and ``persistent_id`` puts the canonical rules where pickle is not
canonical (dict order, sets, NaN) and the canonical encoding above for every
other object. Its digest is ``sha256("flowing-value/2/pickle\n" + stream)``;
a value pickle refuses (a cycle) gets ``sha256("flowing-value/2/canonical\n"
+ encoding)`` instead. Which encoding a value takes depends on its content
only, and the two prefixes never meet, so the rules above hold for both.
Pickle's memo is off: a shared object is encoded in full where it occurs,
so ``[a, a]`` and ``[a, copy(a)]`` digest alike. ``digest_info`` also says
whether the value is immutable (numbers, strings, bytes, None, tuples,
frozensets only), for ``inplace``.

What has no stable content
--------------------------
A value whose ``__reduce_ex__`` refuses (generators, locks, sockets, open
files, database connections), or raises anything, or names a global that is
not this object; nesting deeper than 100 levels; a reduce iterator that hands
out 10,000,000 items beyond its length hint (one that never ends). Size is no
limit: a large value is large, not unstable. Any of these inside a container
or an object's state makes the whole value unstable. Internally this raises
``Unstable``, whose ``what`` and ``reason`` say which value, of what type and
where inside (``.session.sock``, ``[3]``, ``['key']``) it was met.

``Memo`` caches, for one run, the digest of each value digested at top
level and the encoding of each piece large enough to be hashed, by ``id()``,
and keeps those objects alive so that an ``id()`` is never reused for another
object while the memo lives. Values are assumed not to change while a memo
is in use: it serves step keys (code constants, closure values, read once
per run), never the digests of task values (``inplace.RunDigests``).
"""

from __future__ import annotations

import copyreg
import functools
import hashlib
import operator
import os
import pickle
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

DIGEST_VERSION = 2
_PREFIX = f"flowing-value/{DIGEST_VERSION}/canonical\n".encode()
_FAST_PREFIX = f"flowing-value/{DIGEST_VERSION}/pickle\n".encode()

_MAX_DEPTH = 100           # nesting levels of one value
_EXTRA_ITEMS = 10_000_000  # items a reduce's iterator may hand out beyond its length hint
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
    return digest_info(value, memo)[0]


def digest_info(value: object, memo: Memo | None = None) -> tuple[str | None, bool]:
    """``(value_digest(value), immutable)``: ``immutable`` is True when the value
    is made only of numbers, strings, bytes, None, tuples and frozensets, so
    that it cannot change once digested. Never raises."""
    if memo is not None:
        hit = memo._digests.get(id(value))
        if hit is not None:
            return hit[1], hit[2]
    found: tuple[str | None, bool]
    try:
        found = _digest(value, memo)
    except KeyboardInterrupt:
        raise
    except BaseException:  # Unstable, or anything a hostile object managed to raise
        found = None, False
    if memo is not None:
        memo._digests[id(value)] = (value, *found)
    return found


def _digest(value: object, memo: Memo | None) -> tuple[str, bool]:
    canonical = Canonical(memo)
    try:
        h = hashlib.sha256(_FAST_PREFIX)
        mutable = _fast_stream(value, canonical, h.update)
        return h.hexdigest(), not mutable
    except _Fallback:
        return hashlib.sha256(_PREFIX + canonical.chunk(value)).hexdigest(), False


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


def _sha(head: bytes, buffer: Any) -> bytes:
    """SHA-256 of ``head`` followed by ``buffer``'s bytes, read in place."""
    h = hashlib.sha256(head)
    h.update(buffer)
    return h.digest()


def _enc_bytes(x: bytes) -> bytes:
    if len(x) > _HASH_OVER:  # hashed in place: what hashing b"b<n>:<bytes>" gives
        return b"#" + _sha(b"b%d:" % len(x), x)
    return b"b%d:%s" % (len(x), x)


def _enc_bytearray(x: bytearray) -> bytes:
    if len(x) > _HASH_OVER:
        return b"#" + _sha(b"y%d:" % len(x), x)
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
    """``module.qualname``, with a script's ``__main__`` named as if imported
    (see ``module_name``)."""
    if not isinstance(module, str):
        return qualname
    return f"{module_name(module)}.{qualname}"


_main_names: dict[str, tuple[object, str]] = {}  # __main__ -> (the module seen, its name)


def module_name(module: str) -> str:
    """The name a module has when imported: itself, except for ``__main__``.

    A script's ``__main__`` is named as ``import`` would name its file, so
    that running a file as a script and importing it as a module agree:
    ``__spec__.name`` when it was started with ``python -m``; otherwise the
    file's path relative to the ``sys.path`` entry nearest to it (the longest
    one holding it), with ``/`` as ``.`` and without ``.py`` (``__init__``
    names its package). ``__main__`` with no file (``python -c``, an
    interactive session) keeps its name. ``__mp_main__`` (the script, in a
    process started by ``multiprocessing``) is named the same way.
    """
    if module != "__main__" and module != "__mp_main__":
        return module
    main = sys.modules.get(module)
    cached = _main_names.get(module)
    if cached is not None and cached[0] is main:
        return cached[1]
    name = _main_module_name(main)
    if name == "__mp_main__":
        name = "__main__"
    _main_names[module] = (main, name)
    return name


def _main_module_name(main: object) -> str:
    spec = getattr(main, "__spec__", None)
    spec_name = getattr(spec, "name", None)
    if isinstance(spec_name, str) and spec_name and spec_name != "__main__":
        return spec_name  # python -m pkg.mod (python -m pkg: pkg.__main__)
    file = getattr(main, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return "__main__"
    path = os.path.realpath(file)
    best: str | None = None
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        root = os.path.realpath(entry or os.getcwd())
        rel = os.path.relpath(path, root)
        if rel.startswith(os.pardir) or os.path.isabs(rel):
            continue
        parts = rel[:-3].split(os.sep)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and all(p.isidentifier() for p in parts):
            dotted = ".".join(parts)
            if best is None or len(dotted) < len(best):
                best = dotted
    return best if best is not None else os.path.basename(path)[:-3]


def type_name(cls: type) -> str:
    """``module.qualname`` of a class (``module_name`` for a script's own)."""
    qualname = getattr(cls, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = str(type.__dict__["__name__"].__get__(cls, type))
    return _qualified(getattr(cls, "__module__", None), qualname)


def type_label(cls: type) -> str:
    """A type's name for messages (``socket.socket``, ``list``; the user's own
    classes by their qualified name): never raises."""
    try:
        qualname = getattr(cls, "__qualname__", None)
        module = getattr(cls, "__module__", None)
        if isinstance(qualname, str) and (not isinstance(module, str) or is_user_module(module)):
            return qualname
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
#   @A @O @a            numpy array (by buffer), numpy array of objects, array.array
#   @F @R @I @J @X @k   DataFrame, Series, Index, RangeIndex, pandas extension values,
#                       pandas categorical values (dtype, codes)
#   %                   the fast encoding's digest of a list of Python objects
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
    return _frame(b"v", _enc_str(x.format) + c._enc(x.shape, depth) + _enc_buffer(x))


def _enc_buffer(x: memoryview) -> bytes:
    """A buffer's bytes (in C order) as ``_enc_bytes`` encodes them; a large
    C-contiguous one is hashed in place."""
    if x.nbytes > _HASH_OVER and x.c_contiguous:
        return b"#" + _sha(b"b%d:" % x.nbytes, x.cast("B") if x.ndim <= 1 else x)
    return _enc_bytes(x.tobytes())


def _enc_pyarray(c: Canonical, x: Any, depth: int) -> bytes:
    with memoryview(x) as view:
        return _frame(b"@a", _enc_str(x.typecode) + _enc_buffer(view))


# numpy and pandas: recognised by type (never imported here), their data read in
# place. An array is its dtype (byte order, fields, units), its shape and its
# elements' bytes in C order, whatever its memory layout: a C-contiguous array
# is hashed where it lies, any other in copies of at most _CHUNK bytes. An
# array of Python objects is encoded element by element.

_CHUNK = 4 << 20


def _enc_ndarray(c: Canonical, x: Any, depth: int) -> bytes:
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


def _enc_objects(c: Canonical, owner: object, items: list[Any], depth: int) -> bytes:
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
            return b"%" + _fast_hash(items, c)
        except _Fallback:
            pass
        finally:
            c._fast_owners.discard(key)
    return c._enc(items, depth)


def _enc_values(c: Canonical, x: Any, depth: int) -> bytes:
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


def _enc_frame(c: Canonical, x: Any, depth: int) -> bytes:
    parts = [c._enc(x.columns, depth), c._enc(x.index, depth),
             c._state(dict(x.attrs), depth), b"T" if x.flags.allows_duplicate_labels else b"F"]
    for j in range(x.shape[1]):
        parts.append(_enc_values(c, x.iloc[:, j], depth))
    return _frame(b"@F", b"".join(parts))


def _enc_series(c: Canonical, x: Any, depth: int) -> bytes:
    return _frame(b"@R", c._enc(x.name, depth) + c._enc(x.index, depth)
                  + c._state(dict(x.attrs), depth) + _enc_values(c, x, depth))


def _enc_index(c: Canonical, x: Any, depth: int) -> bytes:
    return _frame(b"@I", c._enc(x.name, depth) + _enc_values(c, x, depth))


def _enc_range_index(c: Canonical, x: Any, depth: int) -> bytes:
    return _frame(b"@J", b"%x;%x;%x;" % (x.start, x.stop, x.step) + c._enc(x.name, depth))


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


# --- the fast encoding: the C pickler, canonical where pickle is not ---------------------
#
# Plain data (None, bool, int, str, bytes, list, tuple, and float but NaN) is
# written by the C pickler (protocol 5, ``fast`` mode: no memo, so a shared
# object is written in full wherever it occurs and ``[a, a]`` reads as
# ``[a, copy(a)]``; a cycle makes pickle refuse, and the value is encoded by the
# canonical encoder instead). ``persistent_id`` sees every object first and
# replaces what pickle would not write canonically by a persistent id (a
# BINPERSID opcode follows it, so an id never reads as plain data):
#   dict          the dict with its items in canonical order (keys sorted by their
#                 encoding; keys other than str, int, bytes, bool, None make the
#                 dict go through the canonical encoder)
#   set, frozenset  ("S"/"Z", members sorted by their encoding) (same rule)
#   NaN           ("n",): every NaN alike
#   anything else ("c", its canonical encoding): classes and functions by module and
#                 name, numpy arrays and pandas frames by their buffers, objects by
#                 their state
# The stream is a pickle program that rebuilds the value (ids aside), so two
# values with one stream are equal. It is hashed as it is written.

_PLAIN = frozenset({str, int, type(None), bool, bytes, tuple})
_KEY_TYPES = frozenset({str, int, bytes, bool, type(None)})
_NAN = ("n",)


class _Fallback(Exception):
    """The value needs the canonical encoder (a cycle, nesting pickle refuses)."""


class _Sink:
    __slots__ = ("write",)

    def __init__(self, write: Callable[[Any], object]) -> None:
        self.write = write


def _key_bytes(k: object) -> bytes:
    return _ATOMS[type(k)](k)


class _Pickler(pickle.Pickler):
    def __init__(self, write: Callable[[Any], object], canonical: Canonical) -> None:
        super().__init__(_Sink(write), protocol=5)
        self.fast = True
        self.canonical = canonical
        self.orders: dict[tuple[Any, ...], tuple[tuple[Any, ...], Callable[[Any], Any] | None]] = {}
        self.mutable = False

    def persistent_id(self, obj: Any) -> Any:
        t = type(obj)
        if t in _PLAIN:
            return None
        if t is float:
            return None if obj == obj else _NAN
        if t is dict:
            self.mutable = True
            return self._dict(obj)
        if t is list:
            self.mutable = True
            return None
        if t is frozenset or t is set:
            if t is set:
                self.mutable = True
            if _KEY_TYPES.issuperset(map(type, obj)):
                return ("Z" if t is frozenset else "S", tuple(sorted(obj, key=_key_bytes)))
        self.mutable = True
        return ("c", self.canonical.chunk(obj))

    def _dict(self, d: dict[Any, Any]) -> Any:
        keys = tuple(d)
        if not _KEY_TYPES.issuperset(map(type, keys)):
            return ("c", self.canonical.chunk(d))
        orders = self.orders
        found = orders.get(keys)
        if found is None:
            ordered = tuple(sorted(keys, key=_key_bytes))
            getter: Callable[[Any], Any] | None = (
                operator.itemgetter(*ordered) if len(ordered) > 1 else None)
            if len(orders) > 4096:
                orders.clear()
            found = orders[keys] = (ordered, getter if ordered != keys else None)
        ordered, getter = found
        if getter is None:  # already in canonical order
            return d
        return dict(zip(ordered, getter(d)))


def _fast_stream(value: object, canonical: Canonical, write: Callable[[Any], object]) -> bool:
    """Write the fast encoding of ``value``; True if it met anything mutable.
    Raises ``Unstable``, or ``_Fallback`` when pickle refuses the structure."""
    pickler = _Pickler(write, canonical)
    try:
        pickler.dump(value)
    except (Unstable, KeyboardInterrupt):
        raise
    except Exception:  # cycles (ValueError), nesting (RecursionError), pickle's own refusals
        raise _Fallback from None
    return pickler.mutable


def _fast_hash(value: object, canonical: Canonical) -> bytes:
    """SHA-256 of the fast encoding of ``value`` (for the elements of arrays and
    columns holding Python objects)."""
    h = hashlib.sha256(_FAST_PREFIX)
    _fast_stream(value, canonical, h.update)
    return h.digest()
