"""The atoms of the content encodings: framing, scalars, path steps, ``Unstable``.

Part of the content digests (see ``flowing.keys.digest`` for the policy and
``canonical`` for the tags). An atom (None, a bool, an int, a float, a
complex, a str, bytes, a bytearray) is encoded without recursion by
``_ATOMS``; a piece longer than ``_HASH_OVER`` bytes is replaced by its
SHA-256 (``#``), hashed in place. ``Encoder`` is what the encodings of
special types (``special``) use of the canonical encoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

from .usercode import type_label

DIGEST_VERSION = 2
_PREFIX = f"flowing-value/{DIGEST_VERSION}/canonical\n".encode()
_FAST_PREFIX = f"flowing-value/{DIGEST_VERSION}/pickle\n".encode()
_HASH_OVER = 1024          # pieces longer than this are replaced by their SHA-256

Hook = Callable[[object], "bytes | None"]


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


class Encoder(Protocol):
    """What the encodings of special types use of ``canonical.Canonical``."""

    _hook: Hook | None
    _fast_owners: set[int]

    def chunk(self, value: object) -> bytes: ...

    def _enc(self, x: object, depth: int) -> bytes: ...

    def _items(self, xs: Any, depth: int, steps: Callable[[int], str]) -> list[bytes]: ...

    def _pairs(self, items: Any, depth: int, attrs: bool = False) -> list[bytes]: ...

    def _state(self, state: object, depth: int) -> bytes: ...


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


def _index_step(i: int) -> str:
    return f"[{i}]"


def _member_step(i: int) -> str:
    return "{member}"


def _arg_step(i: int) -> str:
    return f"<arg {i}>"
