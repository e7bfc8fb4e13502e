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

import hashlib
from collections.abc import Iterable

from .canonical import Canonical, Memo
from .encoding import _FAST_PREFIX, _PREFIX, DIGEST_VERSION, Hook, Unstable
from .fast import _Fallback, _fast_stream
from .usercode import (
    clear_cache,
    is_user_class,
    is_user_function,
    is_user_module,
    module_name,
    type_label,
    type_name,
)

# The encoder's parts live in ``usercode`` (whose code), ``encoding`` (atoms),
# ``canonical`` (the encoder), ``special`` (library types: buffers, arrays,
# frames, dates...) and ``fast`` (the pickle-based fast path); their public
# names are re-exported here.
__all__ = ["value_digest", "digest_info", "inputs_digest", "Memo", "Unstable", "Canonical",
           "Hook", "DIGEST_VERSION", "type_name", "is_user_module", "is_user_function",
           "is_user_class", "type_label", "module_name", "clear_cache"]


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
        mutable = _fast_stream(value, canonical.chunk, h.update)
        return h.hexdigest(), not mutable
    except _Fallback:
        return hashlib.sha256(_PREFIX + canonical.chunk(value)).hexdigest(), False
