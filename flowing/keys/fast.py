"""The fast encoding of a value: the C pickler, made canonical where pickle is not.

Part of the content digests (see ``flowing.keys.digest``); the format is
below. What pickle cannot write canonically goes through the canonical
encoder (``chunk``); a structure pickle refuses raises ``_Fallback``, and the
value is then encoded by the canonical encoder alone.
"""

from __future__ import annotations

import hashlib
import operator
import pickle
import threading
from collections.abc import Callable
from typing import Any

from .encoding import _ATOMS, _FAST_PREFIX, Unstable

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
# The key orders a pickler remembers (it outlives one digest: see ``_idle``): at most
# this many, of dicts of at most this many keys, so the keys of dicts a user dropped
# are never held in bulk (about 2 MB of keys at worst).
_ORDERS = 1024
_ORDER_KEYS = 32
_ORDER_KEY_LEN = 64                 # ... whose str and bytes keys are this long at most
_SIZED_KEYS = (str, bytes)


class _Fallback(Exception):
    """The value needs the canonical encoder (a cycle, nesting pickle refuses)."""


class _Sink:
    """The pickler's file: forwards to ``target``, the writer of the current dump
    (the C pickler binds ``write`` once, when it is made)."""

    __slots__ = ("target",)

    def __init__(self) -> None:
        self.target: Callable[[Any], object] = _nowhere

    def write(self, data: Any) -> None:
        self.target(data)


def _nowhere(data: Any) -> None:
    raise RuntimeError("no dump in progress")


def _key_bytes(k: object) -> bytes:
    return _ATOMS[type(k)](k)


class _Pickler(pickle.Pickler):
    def __init__(self) -> None:
        sink = _Sink()
        super().__init__(sink, protocol=5)
        self.sink = sink
        self.fast = True
        self.chunk: Callable[[object], bytes] = _no_chunk
        # keys (see ``_dict``) -> their canonical order (content only: kept from dump to dump)
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
        return ("c", self.chunk(obj))

    def _dict(self, d: dict[Any, Any]) -> Any:
        keys = tuple(d)
        types = set(map(type, keys))
        if not types <= _KEY_TYPES:
            return ("c", self.chunk(d))
        if len(keys) > _ORDER_KEYS:  # (a big dict: sorted afresh, its keys never held)
            return _in_order(d, keys, tuple(sorted(keys, key=_key_bytes)))
        orders = self.orders
        # Keys of these types equal only keys of their own type, but for bool and int
        # (``(False, None) == (0, None)``): the order found for one must never rename
        # the keys of the other, so keys holding a bool are told apart by their types
        # (a tuple of two tuples never equals a tuple of keys).
        cached: tuple[Any, ...] = keys if bool not in types else (keys, tuple(map(type, keys)))
        found = orders.get(cached)
        if found is None:
            ordered = tuple(sorted(keys, key=_key_bytes))
            if any(type(k) in _SIZED_KEYS and len(k) > _ORDER_KEY_LEN for k in keys):
                return _in_order(d, keys, ordered)  # (long keys: never held)
            getter: Callable[[Any], Any] | None = (
                operator.itemgetter(*ordered) if len(ordered) > 1 else None)
            if len(orders) >= _ORDERS:
                orders.clear()
            found = orders[cached] = (ordered, getter if ordered != keys else None)
        ordered, getter = found
        if getter is None:  # already in canonical order
            return d
        return dict(zip(ordered, getter(d)))


def _in_order(d: dict[Any, Any], keys: tuple[Any, ...], ordered: tuple[Any, ...]) -> Any:
    """``d`` with its items in the canonical order ``ordered`` (of its ``keys``)."""
    return d if ordered == keys else {k: d[k] for k in ordered}


def _no_chunk(obj: object) -> bytes:
    raise RuntimeError("no dump in progress")


# One idle pickler per thread, reused: making one costs more than pickling a small
# value. It is reused only after a dump that returned (a dump that raised may leave
# the C pickler's nesting state behind: that pickler is dropped), and never by a
# dump nested in another on the same thread (it is taken while in use).
_idle = threading.local()


def _fast_stream(value: object, chunk: Callable[[object], bytes], write: Callable[[Any], object]) -> bool:
    """Write the fast encoding of ``value``; True if it met anything mutable.
    Raises ``Unstable``, or ``_Fallback`` when pickle refuses the structure."""
    pickler: _Pickler | None = getattr(_idle, "pickler", None)
    if pickler is None:
        pickler = _Pickler()
    else:
        _idle.pickler = None
    pickler.sink.target, pickler.chunk, pickler.mutable = write, chunk, False
    try:
        pickler.dump(value)
    except (Unstable, KeyboardInterrupt):
        raise
    except Exception:  # cycles (ValueError), nesting (RecursionError), pickle's own refusals
        raise _Fallback from None
    mutable = pickler.mutable
    pickler.sink.target, pickler.chunk = _nowhere, _no_chunk  # (holds nothing of this dump)
    _idle.pickler = pickler
    return mutable


def _fast_hash(value: object, chunk: Callable[[object], bytes]) -> bytes:
    """SHA-256 of the fast encoding of ``value`` (for the elements of arrays and
    columns holding Python objects)."""
    h = hashlib.sha256(_FAST_PREFIX)
    _fast_stream(value, chunk, h.update)
    return h.digest()
