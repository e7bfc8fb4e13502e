"""The walk over the user's functions and classes behind a run's step keys.

Part of the step keys (the policy is in ``flowing.keys.stepkey``'s docstring).
``_Fingerprints`` gives each function and class of the user a fingerprint
(Tarjan's strongly connected components, iterative, in two passes: see the
class) and keeps, for one run, what "why" and the in-place check need: each
node's references, reads, and whether it may read ``flowing.current()``.
``nodes._NodeReader`` reads one node; ``stepkey.Keyer`` builds keys on top.
"""

from __future__ import annotations

import hashlib
import threading
import types
from typing import cast

from ..tasks import TaskDef
from .digest import Canonical, Memo, Unstable, is_user_class, is_user_function, is_user_module
from .encoding import _frame, _text
from .nodes import _HOOKED, _node_label, _NodeReader, _Read


class _Fingerprints:
    """Fingerprints of the user's functions and classes, and of values, for one
    run (the state and the walk behind ``Keyer``).

    The user's functions and classes form a graph (helpers, methods,
    recursion), possibly with cycles. Each strongly connected component
    (Tarjan) is hashed as a whole from its members' content, so a fingerprint
    does not depend on which member was reached first. The walk is iterative
    (no recursion from one function to the next), in two passes per node:
    the first encodes its parts with stand-ins to find the functions and
    classes it refers to; once its component is complete, the second encodes
    them with their fingerprints (a stand-in remains only for a member of the
    same component, and depends only on that member's code). So a value that
    holds the user's functions or classes (an instance of a dataclass of
    yours) is read twice the first time it is met, and never again in the
    run; plain data is read once.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._values = Memo()  # value_digest
        self._memo = Memo()  # the encodings of values (and of pieces of them) this run
        self._canon = Canonical(self._memo, self._hook, _HOOKED)
        self._reader = _NodeReader(self._canon)   # reads one node's parts
        self._fps: dict[int, bytes] = {}          # finished nodes
        self._failed: dict[int, Unstable] = {}    # nodes without stable content
        self._keep: list[object] = []             # keeps nodes alive: ids stay unique
        # While a walk is solving: 1 = finding references, 2 = final encoding.
        self._pass = 0
        self._found: list[object] = []            # pass 1: references met
        self._stand_ins = 0                       # stand-ins handed out so far
        self._final: dict[int, bytes] = {}        # pass 1 results that had no stand-in
        self._members: set[int] = set()           # pass 2: the component being finished
        # For "why": each node's own parts (name -> short fingerprint), the nodes it
        # refers to, and whether its code may read flowing.current().
        self._own: dict[int, dict[str, bytes]] = {}  # filled only when "why" asks
        self._refs: dict[int, list[object]] = {}
        # item_key: the hash state after the prefix and the task part, for the last
        # task key seen (a fan-out keys all its items with one task key)
        self._item_base: tuple[str, hashlib._Hash | None] = ("", None)
        # nodes whose own code may read current() (``_reader.current``), or that reach one
        self._reaches_current: set[int] = set()
        self._touched: list[object] = []          # pass 1: every node met (finished or not)
        self._top: list[object] | None = None     # pass 0: the nodes a task's parts start from
        self._reached: dict[tuple[int, ...], dict[str, str]] = {}
        # For the in-place check (see ``Behaviour.changed``): the values each node reads
        # (globals, closure variables, defaults, attributes), noted in pass 1, and the
        # state of each such value when the run's keys were made, by id (kept alive)
        # (where, value, the namespace it was read from or None, the name read there)
        self._reads: dict[int, list[_Read]] = {}
        self._states: dict[int, tuple[object, str | None]] = {}
        # per finished node: its reads and those of every node it reaches (a node's
        # references and reads are fixed once it is finished, so this never goes stale)
        self._closures: dict[int, tuple[_Read, ...]] = {}

    # --- the hook: the user's code, by content ----------------------------------------------

    def _chunk(self, value: object) -> bytes:
        return self._canon.chunk(value)


    def _hook(self, obj: object) -> bytes | None:
        t = type(obj)
        if t is types.FunctionType:
            return self._node(obj) if is_user_function(obj) else None  # type: ignore[arg-type]
        if issubclass(t, type):
            return self._node(obj) if is_user_class(obj) else None  # type: ignore[arg-type]
        if issubclass(t, types.ModuleType):
            name = str(getattr(obj, "__name__", "?"))
            return _frame(b"!u", _text(name)) if is_user_module(name) else None
        if issubclass(t, TaskDef):
            return _frame(b"!t", self._canon.chunk(cast(TaskDef, obj).fn))
        return None

    def _node(self, node: object) -> bytes:
        """A function or class of the user: its fingerprint, or, inside a walk,
        a stand-in (noted as a reference in the first pass)."""
        k = id(node)
        at = self._pass  # note the node where the references are being collected
        if at == 1:
            self._touched.append(node)
        elif not at and self._top is not None:
            self._top.append(node)
        fp = self._fps.get(k)
        if fp is not None:
            if k in self._reaches_current:
                # never memoised inside a value: whoever reads that value must meet
                # this node again, to know that it may read current()
                self._canon.taint += 1
            return _frame(b"!n", fp)
        failed = self._failed.get(k)
        if failed is not None:
            raise failed.copy()
        if self._pass == 0:
            self._walk(node)
            if k in self._reaches_current:
                self._canon.taint += 1  # as above
            return _frame(b"!n", self._fps[k])
        if self._pass == 1:
            self._found.append(node)
        elif k not in self._members:  # not met in the first pass: the value changed meanwhile
            raise Unstable(_node_label(node), "(changed while being read) with no fingerprint",
                           transient=True)
        self._canon.taint += 1  # a stand-in is only valid inside its component
        self._stand_ins += 1
        return self._stand_in(node)

    def _stand_in(self, node: object) -> bytes:
        if isinstance(node, type):
            return _frame(b"!k", _text(str(node.__name__)))
        return _frame(b"!c", self._reader.code(node.__code__).digest)  # type: ignore[attr-defined]

    def _walk(self, root: object) -> None:
        """Fingerprint ``root`` and every node it reaches (iterative Tarjan)."""
        index: dict[int, int] = {}
        low: dict[int, int] = {}
        stack: list[object] = []
        on_stack: set[int] = set()
        path: list[tuple[object, list[object], int]] = []  # DFS: node, references, next

        def enter(node: object) -> None:
            k = id(node)
            self._keep.append(node)
            index[k] = low[k] = len(index)
            stack.append(node)
            on_stack.add(k)
            path.append((node, self._references(node, [p[0] for p in path]), 0))

        try:
            enter(root)
            while path:
                node, refs, at = path[-1]
                k = id(node)
                while at < len(refs):
                    child = refs[at]
                    at += 1
                    c = id(child)
                    if c in self._fps:
                        continue
                    failed = self._failed.get(c)
                    if failed is not None:
                        self._fail([p[0] for p in path], failed.copy())
                    if c not in index:
                        path[-1] = (node, refs, at)
                        enter(child)
                        break
                    if c in on_stack:
                        low[k] = min(low[k], index[c])
                else:
                    path.pop()
                    if path:
                        parent = id(path[-1][0])
                        low[parent] = min(low[parent], low[k])
                    if low[k] == index[k]:
                        members = []
                        while True:
                            member = stack.pop()
                            on_stack.discard(id(member))
                            members.append(member)
                            if member is node:
                                break
                        self._finish(members)
        finally:
            self._pass = 0
            self._final.clear()

    def _references(self, node: object, ancestors: list[object]) -> list[object]:
        """Pass 1: the user's functions and classes ``node`` refers to."""
        self._pass = 1
        self._found = []
        self._touched = []
        stand_ins = self._stand_ins
        reading: list[_Read] = []
        self._reader.reading = reading
        try:
            parts = self._reader.parts(node)
            self._refs[id(node)] = self._touched
            if reading:
                self._reads[id(node)] = reading
            if self._stand_ins == stand_ins:  # every reference already had its fingerprint
                self._final[id(node)] = parts
        except Unstable as e:
            if e.origin is None:
                e.origin = node
            self._fail(ancestors + [node], e)
        finally:
            self._reader.reading = None
        refs: dict[int, object] = {}
        for ref in self._found:
            refs.setdefault(id(ref), ref)
        return list(refs.values())

    def _fail(self, chain: list[object], e: Unstable) -> None:
        """``chain[-1]`` has no fingerprint, nor has anything reaching it."""
        if not e.transient:
            for node in chain:
                self._keep.append(node)
                self._failed[id(node)] = e.copy()
        raise e

    def _finish(self, members: list[object]) -> None:
        """Pass 2: encode a complete component and give each member its fingerprint."""
        self._pass = 2
        self._members = {id(m) for m in members}
        try:
            own = [hashlib.sha256(self._final_parts(m)).digest() for m in members]
        except Unstable as e:
            if e.origin is None:
                e.origin = members[0]
            raise
        finally:
            self._members = set()
        component = hashlib.sha256(b"".join(sorted(own))).digest()
        for m, d in zip(members, own):
            self._fps[id(m)] = hashlib.sha256(component + d).digest()
        # Whether the component may read current(): what it refers to outside itself
        # was finished before it (Tarjan), so its answer is known already.
        if self._reader.current:
            self._mark_current(members)

    def _mark_current(self, members: list[object]) -> None:
        reaches, current, refs = self._reaches_current, self._reader.current, self._refs
        for m in members:
            if id(m) in current or any(id(r) in reaches for r in refs.get(id(m), ())):
                reaches.update(id(m) for m in members)
                return

    def _final_parts(self, node: object) -> bytes:
        found = self._final.pop(id(node), None)
        return found if found is not None else self._reader.parts(node)
