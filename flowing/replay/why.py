"""Why a journaled task runs again, as data (``Why``), worded once by ``str()``.

A journal entry keeps small per-part fingerprints of what its key was
computed from (``Behaviour.parts`` plus ``dep:<name>`` per dependency value;
see ``flowing.keys.stepkey``). When a task's key is not in the journal, comparing
the parts of now with those of the task's newest entry names the change.

Wording (``str(why)``), the public strings of ``Flow.why``, the task-start log
line, ``summary()``, ``report()`` and ``Flow.dry_run()``:

=================  =====================================================
kind               text
=================  =====================================================
NO_ENTRY           ``no journal entry``
OLD_ENTRY          ``its journal entries were written under older key rules``
CHANGED            ``code of 'scale' changed``, ``rules.K changed``,
                   ``input 'folder' changed``, ``'up' returned a different
                   value``... (up to three, most telling first, ``; ``
                   between them); ``its code or a value it reads changed``
                   when the parts do not tell
MAYBE              ``'up' may return a different value`` (dry runs)
CACHE_FALSE        ``cache=False``
NOT_CACHED         ``not cached: <which value>``
UNSTABLE_DEP       ``a dependency's value has no stable content``
EXPIRED            ``expired (older than cache_ttl_s=60)``
FORCED             ``re-run on request``
UNLOADABLE         ``its journaled value could not be loaded``
=================  =====================================================
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["Why", "WhyKind", "changed"]


class WhyKind(enum.Enum):
    NO_ENTRY = "no journal entry"
    OLD_ENTRY = "its journal entries were written under older key rules"
    CHANGED = "changed"
    MAYBE = "maybe"
    CACHE_FALSE = "cache=False"
    NOT_CACHED = "not cached"
    UNSTABLE_DEP = "a dependency's value has no stable content"
    EXPIRED = "expired"
    FORCED = "re-run on request"
    UNLOADABLE = "its journaled value could not be loaded"


# how a part is named in a sentence, by its kind (the text before ':'), in the
# order reasons are listed
_ORDER = ("code", "const", "input", "dep", "closure", "default", "attr", "class", "version",
          "each", "keys")
_MAX_LISTED = 3


class Why:
    """One reason. ``parts``: the changed parts (CHANGED), or the dependencies
    that will run (MAYBE); ``detail``: the uncacheable value (NOT_CACHED) or the
    ttl (EXPIRED). (A plain class: ``import flowing`` stays free of dataclasses.)"""

    __slots__ = ("kind", "parts", "detail")

    def __init__(self, kind: WhyKind, parts: tuple[str, ...] = (), detail: str = "") -> None:
        self.kind = kind
        self.parts = parts
        self.detail = detail

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Why) and other.kind is self.kind
                and other.parts == self.parts and other.detail == self.detail)

    def __hash__(self) -> int:
        return hash((self.kind, self.parts, self.detail))

    def __repr__(self) -> str:
        return f"Why({self.kind.name}, {self.parts!r}, {self.detail!r})"

    def __str__(self) -> str:
        kind = self.kind
        if kind is WhyKind.CHANGED:
            if not self.parts:
                return "its code or a value it reads changed"
            return "; ".join(_part_text(p) for p in self.parts[:_MAX_LISTED])
        if kind is WhyKind.MAYBE:
            return "; ".join(f"'{d}' may return a different value"
                             for d in self.parts[:_MAX_LISTED])
        if kind is WhyKind.NOT_CACHED:
            return f"not cached: {self.detail}"
        if kind is WhyKind.EXPIRED:
            return f"expired (older than cache_ttl_s={self.detail})"
        return str(kind.value)


def _part_text(part: str) -> str:
    kind, _, name = part.partition(":")
    if kind == "code":
        return f"code of '{name}' changed"
    if kind == "const":
        return f"{name} changed"
    if kind == "input":
        return f"input '{name}' changed"
    if kind == "dep":
        return f"'{name}' returned a different value"
    if kind in ("closure", "default", "attr"):
        owner, _, var = name.rpartition(".")
        noun = {"closure": "closure variable", "default": "default of",
                "attr": "attribute"}[kind]
        return f"{noun} '{var}' of '{owner}' changed"
    if kind == "class":
        return f"class '{name}' changed"
    if kind == "version":
        return "version= changed"
    if kind == "each":
        return "for_each= changed"
    if kind == "keys":
        return "the key rules or the Python version changed"
    return f"{part} changed"


def _rank(part: str) -> tuple[int, str]:
    kind = part.partition(":")[0]
    return (_ORDER.index(kind) if kind in _ORDER else len(_ORDER), part)


def changed(now: Mapping[str, str], then: Mapping[str, str] | None, known: bool) -> Why:
    """Why a key is not in the journal: ``then`` are the parts of the task's
    newest entry (None: it has none with parts), ``known`` whether the journal
    has any entry of the task."""
    if then is None:
        return Why(WhyKind.OLD_ENTRY if known else WhyKind.NO_ENTRY)
    differ = sorted((p for p in set(now) | set(then) if now.get(p) != then.get(p)), key=_rank)
    if not differ:
        return Why(WhyKind.NO_ENTRY)  # same parts: its value was never stored
    if any(p.partition(":")[0] != "class" for p in differ):
        # a method's code names the change better than the class holding it
        differ = [p for p in differ if not p.startswith("class:")] + [
            p for p in differ if p.startswith("class:")]
    return Why(WhyKind.CHANGED, tuple(differ))
