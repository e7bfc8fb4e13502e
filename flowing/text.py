"""Text made from user values: it never raises and never spans lines.

Policy
------
Every formatter of flowing (log lines, reports, progress, error messages) goes
through ``safe_str`` / ``safe_repr`` / ``error_line``: a ``__str__`` or
``__repr__`` that raises, or returns something that is not a string, gives
``<unprintable TypeName>``; a huge value gives a cut one-liner; control
characters, line separators and lone surrogates are replaced (``printable``).
Truth values and equality of user objects are never asked for.

A failed ``for_each`` item is always named by its index *and* a short repr
of the item itself (``item 16 (17)``): ``item_label``, ``item_failure`` and
``items_line`` make those texts for every message that mentions items.

This module imports nothing of flowing but ``interrupts.is_terminal`` (a real
Ctrl-C raised while a user's ``__repr__`` runs must still propagate).
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any

from .interrupts import is_terminal

LOGGER_NAME = "flowing"

# Longest log line, prefix included; names, reasons and errors are cut to fit.
MAX_LINE = 200
_PREFIX = "flowing: "
NAME_WIDTH = 60     # longest task name shown in a line
REASON_WIDTH = 100  # longest skip reason / error shown in a line
WHY_WIDTH = 60      # longest "why it ran" note on a start line
ITEM_WIDTH = 40     # longest item repr in a message about an item
SAFE_WIDTH = 1000   # default bound of safe_str


class _NoItem:
    """The item of a message is not known (``item_label(16)`` -> ``item 16``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ITEM"


NO_ITEM: Any = _NoItem()


# ----- safe text -------------------------------------------------------------------

# Characters that would break a one-line message: C0/C1 controls, DEL, Unicode
# line/paragraph separators -> space; lone surrogates (unencodable) -> U+FFFD.
_ONE_LINE = {c: " " for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}
_ONE_LINE.update({c: "\ufffd" for c in range(0xD800, 0xE000)})
# The same, keeping newlines and tabs (multi-line text in reports).
_MULTI_LINE = {c: v for c, v in _ONE_LINE.items() if c not in (0x0A, 0x09)}


def printable(s: str, width: int | None = None) -> str:
    """``s`` with every non-printable character (controls, line breaks, bidi marks such
    as U+202E, zero-width characters) escaped as in ``repr``; past ``width``, cut with
    "...". The one escaping used by log lines, ``summary()`` and the command line:
    a task name or a message holding an escape sequence or a bidi override must not
    be able to drive a terminal or make one line look like another.
    """
    if width is not None:
        s = s[:width + 1]
    if s.isprintable():  # the common case: nothing to do
        out = s
    else:
        out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    if width is not None and len(out) > width:
        out = out[:max(0, width - 3)] + "..."
    return out


def type_name(x: object) -> str:
    """``type(x).__name__``, or ``"object"`` should even that misbehave."""
    try:
        name = type(x).__name__
    except Exception:
        return "object"
    return name if type(name) is str else "object"


def _as_str(x: object, use_repr: bool = False) -> str | None:
    """``str(x)`` (or ``repr(x)``) as an exact ``str``, or None when user code fails."""
    try:
        if type(x) is str and not use_repr:
            return x
        text = repr(x) if use_repr else str(x)
        if type(text) is not str:  # a str subclass: copy it, so its methods are str's
            text = str.__str__(text)
        return text
    except BaseException as exc:  # whatever a hostile __str__ raises: formatting goes on
        if is_terminal(exc):
            raise
        return None


def unprintable(x: object) -> str:
    """``<unprintable TypeName>``: what a value that cannot be shown shows instead."""
    return f"<unprintable {type_name(x)}>"


def _cut(text: str, width: int) -> str:
    width = max(0, width)
    if len(text) <= width:
        return text
    return text[:max(0, width - 3)] + "..."[:width]


def clip(text: object, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters (ending in ``...`` when cut).

    Not a string? Its ``safe_str``. Never raises.
    """
    if type(text) is not str:
        text = safe_str(text, width)
    return _cut(text, width).translate(_ONE_LINE)


def safe_str(x: object, width: int = SAFE_WIDTH, *, one_line: bool = True) -> str:
    """``str(x)`` cut to ``width`` characters; never raises.

    ``one_line`` (default): control characters and line breaks become spaces.
    With ``one_line=False`` newlines and tabs are kept (reports, tooltips).
    A ``__str__`` that raises or returns a non-string gives
    ``<unprintable TypeName>``.
    """
    text = _as_str(x)
    if text is None:
        return _cut(unprintable(x), width)
    return _cut(text, width).translate(_ONE_LINE if one_line else _MULTI_LINE)


def safe_repr(x: object, width: int = 60) -> str:
    """A short one-line ``repr(x)`` of at most ``width`` characters; never raises.

    Containers and strings are shortened the way ``reprlib`` does (``[1, 2,
    ...]``, ``'abc...xyz'``), so a huge value costs little. A ``__repr__``
    that raises or returns a non-string gives ``<unprintable TypeName>``.
    """
    width = max(8, int(width))
    try:
        text = _short_repr(x, width)
    except BaseException as exc:
        if is_terminal(exc):
            raise
        text = None
    if text is None:
        if type(x) is int:  # too many digits for str()
            return _cut(f"<int of {x.bit_length()} bits>", width)
        return _cut(unprintable(x), width)
    return clip(text, width)


class _ShortRepr(reprlib.Repr):
    """``reprlib`` limits; a failing ``__repr__`` shows as ``<unprintable TypeName>``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = width
        self.maxlevel = 3

    def repr_instance(self, x: Any, level: int) -> str:
        text = _as_str(x, use_repr=True)
        if text is None:  # "unprintable", rather than reprlib's memory address
            return unprintable(x)
        return _cut(text, self.maxother)


def _short_repr(x: object, width: int) -> str | None:
    text = _ShortRepr(width).repr(x)
    return text if type(text) is str else _as_str(text)


def error_line(error: BaseException | None, width: int = 120) -> str:
    """``Type: first line of message``, cut to ``width`` characters. Never raises."""
    if error is None:
        return ""
    name = type_name(error)
    text = _as_str(error)
    if text is None:  # an exception whose __str__ fails still gets a line
        return clip(f"{name}: <unprintable message>", width)
    head = text[:max(4 * width, 1000)].strip()  # a 1 GB message costs no more than a short one
    first = head.splitlines()[0] if head else ""
    return clip(name + (f": {first}" if first else ""), width)


def format_duration(ms: float | None) -> str:
    """``12ms``, ``1.4s``, ``3m05s``, ``2h10m``; ``?`` when unknown."""
    try:
        ms = float(ms)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return "?"
    if ms != ms or ms in (float("inf"), float("-inf")):
        return "?"
    ms = max(0.0, ms)
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    if ms >= 3.6e12:  # a million hours: no clock of ours, but keep the line short
        return f"{ms / 3.6e6:.3g}h"
    minutes, seconds = divmod(ms / 1000, 60)
    if minutes < 60:
        return f"{int(minutes)}m{int(seconds):02d}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes:02d}m"


# ----- messages about for_each items -------------------------------------------------

def item_label(index: object, item: object = NO_ITEM, width: int = ITEM_WIDTH) -> str:
    """``item 16 (17)``: an item's index and a short repr of the item itself.

    ``item`` left out (not known): ``item 16``.
    """
    text = f"item {clip(index, 20)}"
    if item is not NO_ITEM:
        text += f" ({safe_repr(item, width)})"
    return text


def _or_empty(x: object) -> object:
    """``x``, or "" for None (never ``x or ""``: a user object's truth value may raise)."""
    return "" if x is None else x


def item_failure(index: object, item: object = NO_ITEM, error: BaseException | None = None,
                 reason: object = None, width: int = REASON_WIDTH) -> str:
    """``item 16 (17): HTTPError: 500``: which item failed, and why (error or reason)."""
    why = error_line(error, width) or clip(_or_empty(reason), width)
    return item_label(index, item) + (f": {why}" if why else "")


def _item_state(it: object) -> str:
    state = getattr(it, "state", None)
    value = getattr(state, "value", state)
    return value if type(value) is str else "?"


def items_line(items: Sequence[Any] | None, width: int = MAX_LINE, listed: int = 3,
               allowed: int | None = None) -> str:
    """One line on the items of a ``for_each`` task, failures first named::

        40 items: 38 ok (12 cached), 2 failed: item 16 (17): HTTPError: 500; item 28 (29): ...
        60 items: 57 ok, 3 failed (allowed 6): item 4 ('doc-4'): HTTPError: 404; ...

    ``items`` are ``ItemResult``s (None for an item that never finished);
    ``allowed``: the task's ``allow_failed_items`` as a count, if it has one.
    Never raises; at most ``width`` characters.
    """
    try:
        return _items_line(items, width, listed, allowed)
    except Exception:  # a half-built result must not break a summary
        return clip(f"{len(items or ())} items", width)


def _items_line(items: Sequence[Any] | None, width: int, listed: int,
                allowed: int | None = None) -> str:
    items = list(items or ())
    ok = cached = failed = skipped = not_run = 0
    bad: list[Any] = []
    for it in items:
        state = _item_state(it) if it is not None else "not run"
        if state == "succeeded":
            ok += 1
            cached += getattr(it, "cached", False) is True
        elif state == "failed":
            failed += 1
            bad.append(it)
        elif state == "skipped":
            skipped += 1
            bad.append(it)
        else:
            not_run += 1
    n = len(items)
    text = f"{n} item{'s' if n != 1 else ''}"
    if not n:
        return text
    parts = [f"{ok} ok" + (f" ({cached} cached)" if cached else "")]
    if failed:
        parts.append(f"{failed} failed" + (f" (allowed {allowed})" if allowed is not None
                                           else ""))
    if skipped:
        parts.append(f"{skipped} skipped")
    if not_run:
        parts.append(f"{not_run} not run")
    text += ": " + ", ".join(parts)
    if bad:
        shown = [item_failure(getattr(it, "index", "?"), getattr(it, "item", NO_ITEM),
                              _exception_or_none(getattr(it, "error", None)),
                              getattr(it, "reason", None), 60)
                 for it in bad[:max(0, listed)]]
        rest = len(bad) - len(shown)
        text += ": " + "; ".join(shown) + (f"; +{rest} more" if rest else "")
    return clip(text, width)


def _exception_or_none(error: object) -> BaseException | None:
    return error if isinstance(error, BaseException) else None


# ----- events ----------------------------------------------------------------------
