"""Step keys: how the journal recognises a task it has already run.

A step key is a hex SHA-256 digest (64 characters) of the fingerprint of the
task's behaviour (``Keyer.behaviour``, once per run) and the content digests
of its dependencies' values (``Behaviour.key``, when the task is released):
not the dependencies' keys, so a step edited to return the same value re-runs
alone and its dependents replay (true early cutoff). For unchanged source and
values the key is the same in every process: it never contains a memory
address, an ``id()``, a hash-seed dependent order (a dataclass's generated
docstring, which holds its defaults' reprs, is left out), a file path, a
module name or a line number.

What is in a task's key
-----------------------
* ``STEP_KEY_VERSION`` and the Python implementation and minor version (e.g.
  ``cpython-311``): bytecode differs between Python versions, so upgrading
  Python, or this fingerprint scheme, re-runs every task.
* The content digest of each dependency's value, by the dependency's name
  (``digest.inputs_digest``).
* The fingerprint of its body, unless ``@task(version=...)`` is set:
  then the version string stands in for the body and its gates, and nothing
  of their code or of the values they read is looked at (you decide when the
  results go stale, like Dagster's ``code_version``).
* The fingerprint of its ``when``, ``validate`` and ``retry_until`` callables
  (an absent one counts as a fixed marker), unless ``version`` is set; the name
  given to ``for_each``.
* The inputs the body receives from ``Flow(inputs=...)``: each name with the
  content of its value.
* When code it reaches may read ``flowing.current()`` (names ``current``): the
  task's name and ``retry`` (what ``current()`` tells), and an item's index.

A fingerprint covers, for a function of the user (defined outside the
standard library and outside site-packages/dist-packages):

* its code: bytecode, constants, the names it references (globals,
  attributes, locals, free and cell variables), argument counts and code flags
  (so ``async def`` differs from ``def``). Nested functions, lambdas,
  comprehensions and generator expressions are part of that code. A docstring
  is a constant of its code.
* every module-level name the code reads (``LOAD_GLOBAL``), looked up in the
  function's module, by the value it holds now:

  - a function of the user: its fingerprint, recursively, by these same
    rules. Mutual recursion is fine.
  - a class of the user: its name, metaclass, bases, and every attribute in
    its namespace (methods, properties and nested classes by these same
    rules, other attributes by content), except bookkeeping that Python or
    the standard library adds on its own (``__module__``, ``__qualname__``,
    ``__dict__``, ``__weakref__``, ``__firstlineno__``,
    ``__static_attributes__``, ``__slotnames__``, ``_abc_impl``).
  - a user module (``helpers.compute()``): the attributes the code reads from
    it (``helpers.compute``, ``pkg.sub.name`` chains, ``getattr(helpers,
    "compute")``), by these same rules; every name in it when the code uses
    the module itself (``h = helpers``, ``run(helpers)``).
  - a library module, function or class (``os``, ``json.dumps``,
    ``pathlib.Path``): its module and qualified name only, never its code. A
    library function made inside another function (a decorator's wrapper):
    its name and the values it closes over, by these same rules.
  - a task (a ``TaskDef``): the fingerprint of its body.
  - any other value: its content (``flowing.keys.digest``): numbers, strings,
    containers, paths, dates, decimals, enums, compiled patterns, dataclasses
    and the state of any object, recursively (a value that contains itself
    is fine); the user's functions and classes met inside a value count by
    fingerprint, a user module met inside a value by its name.

* the modules it imports itself (``import hlp``, ``import a.b as c``, ``from
  hlp import f``, relative imports, ``importlib.import_module``/``__import__``
  with a constant name): as module-level user modules above, imported now if
  they are not yet; library modules by name.
* its closure variables, argument defaults, keyword-only defaults and function
  attributes, by the same rules.

A body that is not a plain function is fingerprinted by what it is made of:
a bound method by its function and its bound object (the instance's state by
content, its class by fingerprint); a classmethod by its function and class;
a ``functools.partial`` by the function, arguments and keywords; an object
with ``__call__`` by its class (methods by code) and its state (by content);
a library callable with ``__wrapped__`` (``functools.lru_cache``) by what it
wraps.

What makes a task uncacheable
-----------------------------
Code flowing cannot follow: a module imported by a computed name,
``globals()``, ``eval``/``exec``, ``getattr``/``vars`` with a computed name on
a user module (the message names it; the fix is ``version=``). And:

A value that the body (or a gate, or a helper they call), or an input, holds
and that has no stable content: a generator, a lock, a socket, an open file, a
connection, an object whose state holds one of these, an object whose
``__reduce_ex__`` raises; also a value nested more than 100 levels deep or made
of more than 20 million pieces, and a ``version`` that is not a string. There
is then no honest key, so the task is not replayed and not journaled for that
run; ``Keyer.task_key`` returns an ``Uncacheable`` whose one-line message names
the task, the variable holding the value (``closure variable 'conn'``,
``global 'client'`` and the helper reading it, ``default of 'x'``,
``class attribute 'Client._lock'``, ``input 'db'``, or ``its body`` for a
bound method's object), its type and where inside the value it sits
(``client.session.sock``), and the fix: pass the value through
``Flow(inputs=...)`` (data such as a path or a URL), make it a dependency, or
set ``@task(version=...)``; for an input, pass plain data instead and open the
resource inside the task. A dunder attribute of a class
(``__pydantic_validator__``, ``__signature__``...) without stable content is
left out instead: it is machinery derived from the class.

What is not in it
-----------------
* The task's name (``name=``) and the function's own name: renaming a task or
  its function keeps its key. (Renaming a task still changes the key of the
  tasks that depend on it, because their parameter is named after it.)
* ``retry``, ``retry_backoff_base_ms``, ``retry_max_backoff_ms``, ``retry_on``,
  ``timeout_s``, ``limit``, ``detached``, ``cache`` and ``cache_ttl_s``.
* Comments, blank lines, line numbers, file paths, and the module a function
  lives in (running a file as a script or importing it gives the same key;
  the values the code reads still count, and ``logging.getLogger(__name__)``
  is named ``__main__`` in a script).
* The code of the standard library and of installed packages: upgrading a
  library does not re-run tasks. A project installed non-editably into
  site-packages counts as a library too.
* Module-level names the code does not read, and builtins (``len``,
  ``print``).

Good to know
------------
* Values are read when the run's keys are computed. Those that can change
  (a dict, a list, an object) are noted with their digests
  (``Behaviour.held``): a body that changes one in place while the run goes
  on keeps the tasks whose keys read it from being journaled
  (``flowing.replay.inplace``); so does rebinding or deleting any name a key read
  from a module, class or function (``Behaviour.bound``). A module-level value
  computed at import time (a timestamp, a random id) that a task reads gives
  that task a new key in every process.
* ``Keyer`` (one per run) fingerprints each function, class and value once
  for the whole run, however many tasks read it. ``compute_step_key`` and
  ``fingerprint`` share one process-wide ``Keyer``: call ``clear_cache()``
  after changing module globals at run time.

A ``for_each`` item's key (``Keyer.item_key``) is the task's behaviour with the
digests of its other dependencies, and the item's content read when the item
is handed out (never memoised: an object changed in place gets its new key),
never its position unless the body reads ``current()``: inserting, removing
or reordering items keeps the keys of the others. An item without stable
content has no key and is never replayed.

For saying what changed, ``Behaviour.parts`` gives short fingerprints of each
part of a key (``code:<function>``, ``const:<module.NAME>``, ``input:<name>``,
...; see ``Behaviour``), computed only when asked for (a run asks for the
tasks that run). A read memoised inside a value does not meet the nodes in
it again, so parts may name the value rather than the function it holds; a
node that may read ``current()`` is never memoised inside a value, so that
flag is always complete.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..keys import digest
from ..keys.digest import Canonical, Unstable
from ..tasks import TaskDef
from .encoding import _ATOMS, _frame, _text
from .fingerprints import _Fingerprints
from .nodes import _HOOKED, _node_label, _Read
from .reach import _MISSING, _UNFOLLOWED, _code_info, clear_code_cache

__all__ = ["STEP_KEY_VERSION", "Behaviour", "Keyer", "Uncacheable", "compute_step_key",
           "item_step_key", "fingerprint", "clear_cache"]

STEP_KEY_VERSION = 3

# Bytecode is only comparable within one implementation and minor version.
_PYTHON_TAG = f"{sys.implementation.name}-{sys.version_info[0]}{sys.version_info[1]}"
_STEP_PREFIX = f"flowing-step/{STEP_KEY_VERSION}/{_PYTHON_TAG}\n".encode()
_ITEM_PREFIX = f"flowing-item/{STEP_KEY_VERSION}/{_PYTHON_TAG}\n".encode()
_FP_PREFIX = f"flowing-fingerprint/{STEP_KEY_VERSION}/{_PYTHON_TAG}\n".encode()

_FIX = "pass it through Flow(inputs=...), make it a dependency, or set @task(version=...)"
_INPUT_FIX = ("pass plain data instead (a path, a URL, settings) and open the resource "
              "inside the task")
_GATES = ("when", "validate", "retry_until")


class Uncacheable:
    """Why a task has no step key this run (returned, never raised).

    ``message`` is the full one-line warning: the task, the value, its type,
    and the fix.
    """

    __slots__ = ("task", "what", "message")

    def __init__(self, task: str, what: str, fix: str = _FIX) -> None:
        self.task = task
        self.what = what
        self.message = f"task '{task}': not cached this run: {what}; {fix}"

    def __repr__(self) -> str:
        return f"Uncacheable({self.message!r})"

    def __str__(self) -> str:
        return self.message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Uncacheable) and other.message == self.message

    def __hash__(self) -> int:
        return hash(self.message)


_GATE_ABSENT = {gate: _frame(_text(gate), b"-") for gate in _GATES}


# --- keys from a behaviour and dependency digests ---------------------------------------------

_SHORT = 12  # hex characters of a part's fingerprint (for "why", never for keys)
# A name a key read from a namespace: (where, the namespace, the name, the object bound)
Bound = tuple[str, Mapping[str, object], str, object]


def _short(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_SHORT]


class Behaviour:
    """What a task does, fingerprinted once per run: everything in its step key
    but its dependencies' values.

    ``digest``   hex SHA-256 of the behaviour;
    ``parts``    part name -> short fingerprint, for saying what changed: ``keys``
                 (this scheme and Python), ``version``, ``each``, ``code:<qualname>``
                 per function reached, ``class:<qualname>``, ``const:<name>`` per
                 module-level value read (``rules.K``), ``closure:<fn>.<var>``,
                 ``default:<fn>.<param>``, ``attr:<fn>.<name>``, ``input:<name>``;
    ``current``  the body (or code it reaches) may read ``flowing.current()``: the
                 task name is in ``digest``, and an item's index in its key.
    ``held``     the values the key read that can change (a module-level dict or
                 list, a closure variable, a default, a class attribute...), each as
                 (where it was read, the value, its digest when the key was made):
                 ``changed`` digests them again (see ``flowing.replay.inplace``).
    ``bound``    every name the key read from a namespace (a module's globals, a
                 user module's attributes, a class's or a function's attributes,
                 immutable values included) as (where, namespace, name, the object
                 bound): ``changed`` also sees a name rebound or deleted since.
    """

    __slots__ = ("current", "held", "bound", "_state", "_parts", "_make", "_hash", "_digest")

    def __init__(self, hasher: Any, parts: Callable[[], dict[str, str]], current: bool,
                 held: tuple[tuple[str, object, str | None], ...] = (),
                 state: Callable[[object], str | None] | None = None,
                 bound: tuple[Bound, ...] = ()) -> None:
        self._hash = hasher  # the behaviour hashed so far: a key adds the dependencies
        self.current = current
        self.held = held
        self.bound = bound
        self._state = state
        self._parts: dict[str, str] | None = None
        self._make: Callable[[], dict[str, str]] | None = parts
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = str(self._hash.copy().hexdigest())
        return self._digest

    @property
    def parts(self) -> dict[str, str]:
        """Computed when first asked for (a run asks only for the tasks that run)."""
        if self._parts is None:
            assert self._make is not None
            self._parts = self._make()
            self._make = None
        return self._parts

    def key(self, deps_digest: str) -> str:
        """The step key: this behaviour and the digest of the values of the task's
        dependencies (``digest.inputs_digest`` of (name, value digest) pairs)."""
        h = self._hash.copy()
        h.update(b"deps:" + deps_digest.encode())
        return str(h.hexdigest())

    def changed(self) -> str | None:
        """Where a value the key read was read (``global 'SETTINGS'``) if it no
        longer digests as when the key was made (changed in place), or if a name
        the key read is now bound to another object or to none (rebound: one dict
        lookup per name, nothing encoded again), else None."""
        for where, namespace, name, value in self.bound:
            try:
                if namespace.get(name, _MISSING) is not value:
                    return where
            except Exception:  # a hostile namespace: in doubt, changed
                return where
        state = self._state
        if state is None:
            return None
        for where, value, then in self.held:
            if then is None or state(value) != then:
                return where
        return None

    def __repr__(self) -> str:
        return f"Behaviour({self.digest[:12]}..., current={self.current})"


def _deps_digest(dep_digests: Sequence[str] | Mapping[str, str]) -> str:
    if not dep_digests:
        return _NO_DEPS
    if isinstance(dep_digests, Mapping):
        pairs = [(str(n), str(d)) for n, d in dep_digests.items()]
    else:  # unnamed: only the set of values counts
        pairs = [("", str(d)) for d in dep_digests]
    found = digest.inputs_digest(pairs)
    assert found is not None
    return found


_NO_DEPS = str(digest.inputs_digest(()))


_UNFOLLOWED_FIX = ("set @task(version=\"1\") and change it when that code changes, or "
                   "import modules and read their names by constant names")


class _Failed(Exception):
    """A task has no key: carries its Uncacheable."""

    def __init__(self, result: Uncacheable) -> None:
        super().__init__(result.message)
        self.result = result



class Keyer(_Fingerprints):
    """Step keys for one run. Every fingerprint (function, class, value) is
    computed once per Keyer, however many tasks read it; make a new Keyer for
    each run so that changed module values are seen. Thread-safe.

    The walk over the user's code is ``fingerprints._Fingerprints``'s; "why" parts and
    step keys are built here.
    """

    # --- public -------------------------------------------------------------------------

    def behaviour(self, td: TaskDef, inputs: Mapping[str, object]) -> Behaviour | Uncacheable:
        """The fingerprint of what ``td`` does (everything in its key but its
        dependencies' values), or why it has none this run. Never raises."""
        with self._lock:
            name = _task_name(td)
            try:
                return self._behaviour(td, name, inputs)
            except _Failed as failed:
                return failed.result
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a hostile object this module did not foresee
                return Uncacheable(name, f"its key could not be computed "
                                         f"({digest.type_label(type(exc))})")
            finally:
                self._top = None

    def task_key(self, td: TaskDef, dep_digests: Sequence[str] | Mapping[str, str],
                 inputs: Mapping[str, object]) -> str | Uncacheable:
        """The step key of ``td`` given its dependencies' value digests (see
        ``compute_step_key``), or why it has none this run. Never raises."""
        found = self.behaviour(td, inputs)
        if isinstance(found, Uncacheable):
            return found
        return found.key(_deps_digest(dep_digests))

    def value_digest(self, value: object) -> str | None:
        """``digest.value_digest`` with this run's memo."""
        with self._lock:
            return digest.value_digest(value, self._values)

    def item_key(self, task_key: str, item: object, index: int | None = None) -> str | None:
        """The key of one ``for_each`` item: ``task_key`` (the task's behaviour with
        the digests of its other dependencies, see ``step_key``) and the item's
        content as it is now, never its position unless ``index`` is given (a body
        that reads ``current().item_index``); None when the item has no stable
        content. Never memoised: an item changed in place gets its new key."""
        atom = _ATOMS.get(type(item))  # (what ``chunk`` does first, without an encoder)
        with self._lock:
            try:
                chunk = atom(item) if atom is not None else Canonical(
                    None, self._hook, _HOOKED).chunk(item)
            except KeyboardInterrupt:
                raise
            except BaseException:  # no stable content, or a hostile __reduce__ (SystemExit)
                return None
            task_key = str(task_key)
            last, base = self._item_base
            if base is None or last != task_key:
                base = hashlib.sha256(_ITEM_PREFIX)
                base.update(_frame(b"task", _text(task_key)))
                self._item_base = (task_key, base)
            h = base.copy()
        if index is not None:
            h.update(_frame(b"index", b"%d" % index))
        h.update(_frame(b"item", chunk))
        return h.hexdigest()

    def fingerprint(self, obj: object) -> str | None:
        """Hex digest of what ``obj`` (usually a callable) does and holds; None
        when it has no stable content."""
        with self._lock:
            try:
                chunk = self._chunk(obj)
            except KeyboardInterrupt:
                raise
            except BaseException:
                return None
        return hashlib.sha256(_FP_PREFIX + chunk).hexdigest()

    def explain(self, obj: object) -> str | None:
        """Why ``obj`` has no fingerprint ("closure variable 'conn' holds a
        socket.socket with no stable content"), or None if it has one."""
        with self._lock:
            try:
                self._chunk(obj)
            except Unstable as e:
                return _describe(e, obj, "the value")
            except Exception as exc:
                return f"the value could not be read ({digest.type_label(type(exc))})"
        return None

    # --- keys -----------------------------------------------------------------------------

    def _part(self, fn: object, task: str, where: str) -> bytes:
        try:
            return self._chunk(fn)
        except Unstable as e:
            raise _Failed(Uncacheable(task, _describe(e, fn, where),
                                      _UNFOLLOWED_FIX if e.type_name == _UNFOLLOWED
                                      else _FIX)) from None

    def _behaviour(self, td: TaskDef, name: str, inputs: Mapping[str, object]) -> Behaviour:
        h = hashlib.sha256(_STEP_PREFIX)
        parts: dict[str, bytes] = {"keys": _STEP_PREFIX}
        version = getattr(td, "version", None)
        top: list[object] = []
        self._top = top
        roots: list[object] = []
        if version is not None:
            if type(version) is not str:
                raise _Failed(Uncacheable(name, f"version= must be a string, got a "
                                                f"{digest.type_label(type(version))}",
                                          "write @task(version=\"2\")"))
            h.update(_frame(b"version", _text(version)))
            parts["version"] = _text(version)
            # the code is not looked at, but what it reads through current() still counts
            code = getattr(getattr(td, "fn", None), "__code__", None)
            reads_current = isinstance(code, types.CodeType) and _code_info(code).current
        else:
            h.update(_frame(b"body", self._part(td.fn, name, "its body")))
            # the body and gates themselves are roots of "why": a memoised read meets no node
            roots.append(td.fn)
            for gate in _GATES:
                fn = getattr(td, gate, None)
                if fn is None:
                    h.update(_GATE_ABSENT[gate])
                else:
                    h.update(_frame(_text(gate), self._part(fn, name, f"its {gate}= callable")))
                    roots.append(fn)
            reaches = self._reaches_current
            reads_current = bool(reaches) and any(id(node) in reaches for node in top)
        for_each = getattr(td, "for_each", None)
        each = b"-" if for_each is None else _text(str(for_each))
        h.update(_frame(b"each", each))
        parts["each"] = each
        given = []
        for input_name, value in sorted(((str(n), v) for n, v in inputs.items()),
                                        key=lambda nv: nv[0]):
            try:
                chunk = self._chunk(value)
            except Unstable as e:
                e.name = input_name
                raise _Failed(Uncacheable(name, _describe(e, value, f"input '{input_name}'"),
                                          _INPUT_FIX)) from None
            given.append(_frame(b"input", _text(input_name)) + chunk)
            parts[f"input:{input_name}"] = chunk
        h.update(_frame(b"inputs", b"".join(given)))
        if reads_current:
            # what current() tells the body: its task name and its attempt budget
            h.update(_frame(b"current", _text(f"{name}\n{getattr(td, 'retry', 0)!r}")))
        roots.extend(top)
        held, bound = self._held(roots)
        return Behaviour(h, lambda: self._parts_of(tuple(roots), parts), bool(reads_current),
                         held, self.state, bound)

    def state(self, value: object) -> str | None:
        """The digest of a value's encoding in step keys, read afresh (never
        memoised), to see whether a value a key read changed since
        (``Behaviour.changed``); None when it has no stable content now."""
        with self._lock:
            try:
                chunk = Canonical(None, self._hook, _HOOKED).chunk(value)
            except KeyboardInterrupt:
                raise
            except BaseException:
                return None
        return hashlib.sha256(chunk).hexdigest()

    def _held(self, roots: list[object]
              ) -> tuple[tuple[tuple[str, object, str | None], ...], tuple[Bound, ...]]:
        """The values that can change (lists, dicts, objects...) read by every node
        reachable from ``roots``, each with its digest now (when the key is made),
        and the names they were read by (``Behaviour.bound``)."""
        if not self._reads:
            return (), ()
        held: dict[int, tuple[str, object, str | None]] = {}
        bound: dict[tuple[int, str], Bound] = {}
        reads: list[_Read] = []
        for root in roots:
            reads.extend(self._closure_reads(root))
        for label, value, namespace, key in reads:
            if namespace is not None:
                bound.setdefault((id(namespace), key), (label, namespace, key, value))
            v = id(value)
            if v in held or (namespace is not None and isinstance(value, _HOOKED)):
                continue
            if _cannot_change(value):  # never read again
                continue
            known = self._states.get(v)
            if known is None or known[0] is not value:
                # the encoding the key used (memoised when it was read), else read now
                chunk = self._memo.encoding(value)
                found = (hashlib.sha256(chunk).hexdigest() if chunk is not None
                         else self.state(value))
                known = self._states[v] = (value, found)
            held[v] = (label, value, known[1])
        return tuple(held.values()), tuple(bound.values())

    def _closure_reads(self, node: object) -> tuple[_Read, ...]:
        """The reads of ``node`` and of every node reachable from it, each once; kept
        per finished node, so loop-built tasks sharing helpers walk them once."""
        k = id(node)
        hit = self._closures.get(k)
        if hit is not None:
            return hit
        found: dict[tuple[str, int, int, str], _Read] = {}

        def add(reads: Iterable[_Read]) -> None:
            for r in reads:
                found.setdefault((r[0], id(r[1]), id(r[2]), r[3]), r)

        for n in self._reachable((node,), lambda n: n is not node and id(n) in self._closures):
            done = self._closures.get(id(n)) if n is not node else None
            # a node whose closure is complete already is not walked again
            add(done if done is not None else self._reads.get(id(n), ()))
        result = tuple(found.values())
        if k in self._refs:  # a finished node, kept alive by the Keyer: its id stays its own
            self._closures[k] = result
        return result

    def _reachable(self, roots: Sequence[object],
                   stop: Callable[[object], bool] | None = None) -> Iterator[object]:
        """Every node reachable from ``roots`` (through ``_refs``), once; a node for
        which ``stop`` is true is yielded but not walked past."""
        seen: set[int] = set()
        todo = list(roots)
        while todo:
            node = todo.pop()
            k = id(node)
            if k in seen:
                continue
            seen.add(k)
            yield node
            if stop is None or not stop(node):
                todo.extend(self._refs.get(k, ()))

    def _parts_of(self, roots: tuple[object, ...], own: dict[str, bytes]) -> dict[str, str]:
        """A task's parts: ``own`` and those of every node reachable from ``roots``."""
        with self._lock:
            reached = self._reach(roots)
        parts = dict(reached)
        parts.update((name, _short(chunk)) for name, chunk in own.items())
        return parts

    def _own_parts(self, node: object) -> dict[str, bytes]:
        """What "why" names of one node (read again, now: every node it refers
        to has its fingerprint, so this is one cheap pass)."""
        found = self._own.get(id(node))
        if found is not None:
            return found
        own: dict[str, bytes] = {}
        try:
            if isinstance(node, type):
                own[f"class:{_node_label(node).rpartition('<locals>.')[2]}"] = \
                    self._reader.class_parts(node)
            else:
                self._reader.function_parts(node, own)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            raise
        except BaseException:  # changed meanwhile, or hostile: only the wording of "why" suffers
            pass
        self._own[id(node)] = own
        return own

    def _reach(self, roots: tuple[object, ...]) -> dict[str, str]:
        """The own parts of every node reachable from ``roots``."""
        ids = tuple(sorted({id(r) for r in roots}))
        found = self._reached.get(ids)
        if found is not None:
            return found
        parts: dict[str, str] = {}
        for node in self._reachable(roots):
            for part, chunk in self._own_parts(node).items():
                fp = _short(chunk)
                old = parts.get(part)
                # two functions of one name: both count, in a stable order
                parts[part] = fp if old is None or old == fp else _short(
                    _text("/".join(sorted((old, fp)))))
        self._reached[ids] = parts
        return parts



_FROZEN = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _cannot_change(value: object, depth: int = 0) -> bool:
    """Made only of numbers, strings, bytes, None, tuples and frozensets (as
    ``digest.digest_info`` says ``immutable``), checked without digesting it."""
    t = type(value)
    if t in _FROZEN:
        return True
    if (t is tuple or t is frozenset) and depth < 100:
        return all(_cannot_change(x, depth + 1) for x in value)  # type: ignore[attr-defined]
    return False


def _task_name(td: object) -> str:
    name = getattr(td, "name", None)
    return name if type(name) is str else "?"



def _describe(e: Unstable, root: object, where: str) -> str:
    """'closure variable 'conn' holds a socket.socket with no stable content'."""
    if e.type_name == _UNFOLLOWED:  # "its body: it calls globals() (in 'helper'), ..."
        origin = e.origin
        inside = (f" (in '{_node_label(origin)}')" if origin is not None and origin is not root
                  else "")
        return f"{where}: {e.reason}{inside}: flowing cannot follow it"
    if e.place is None:
        place = where
    else:
        place = e.place
        origin = e.origin
        if origin is not None and origin is not root and not isinstance(origin, type):
            place += f" (in '{_node_label(origin)}')"
        if where != "its body":
            place = f"{where}: {place}"
    return f"{place} holds {e.what} {e.reason}"


# --- the process-wide keyer behind the functions of the 0.1 API -------------------------------

_shared: Keyer | None = None
_shared_lock = threading.Lock()


def _shared_keyer() -> Keyer:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Keyer()
        return _shared


def compute_step_key(td: TaskDef, dep_keys: Sequence[str] | Mapping[str, str]) -> str:
    """The step key of task ``td`` given the content digests of its dependencies'
    values (``flowing.keys.digest.value_digest``): a mapping dependency name -> digest,
    as a run computes it, or a sequence of digests (any order, unnamed). Not the
    dependencies' step keys: since 0.3.0 a key covers what the dependencies
    returned, not the code that made it (true early cutoff).

    Raises ValueError (with the ``Uncacheable`` message) when the task has no
    stable key. Uses the process-wide Keyer: see ``clear_cache``.
    """
    key = _shared_keyer().task_key(td, dep_keys, {})
    if isinstance(key, Uncacheable):
        raise ValueError(key.message)
    return key


def item_step_key(task_key: str, index: int, item: object) -> str:
    """The key of a ``for_each`` item: its content, not its position (``index``
    is ignored). An item without stable content gets a key that never repeats,
    so it is never replayed."""
    key = _shared_keyer().item_key(task_key, item)
    if key is None:
        return hashlib.sha256(_ITEM_PREFIX + b"unstable/" + os.urandom(16)).hexdigest()
    return key


def fingerprint(obj: object) -> str:
    """A hex digest of what ``obj`` (usually a callable) does and holds; see the
    module docs. Raises ValueError when it has no stable content."""
    keyer = _shared_keyer()
    found = keyer.fingerprint(obj)
    if found is None:
        raise ValueError(f"no stable fingerprint: {keyer.explain(obj)}")
    return found


def clear_cache() -> None:
    """Forget every cached fingerprint (after rebinding module globals at run time)."""
    global _shared
    with _shared_lock:
        _shared = None
    clear_code_cache()
    digest.clear_cache()
