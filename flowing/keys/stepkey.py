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

import dis
import hashlib
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from ..context import current
from ..keys import digest
from ..keys.digest import Canonical, Memo, Unstable, is_user_class, is_user_function, is_user_module
from ..tasks import TaskDef

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


def _frame(tag: bytes, payload: bytes) -> bytes:
    return b"%s%d:%s" % (tag, len(payload), payload)


def _text(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


_GATE_ABSENT = {gate: _frame(_text(gate), b"-") for gate in _GATES}


# --- code objects -------------------------------------------------------------------------

_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_LOCAL_OPS = frozenset({"LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_FAST_CHECK",
                        "LOAD_FAST_AND_CLEAR"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_STORE_LOCAL = frozenset({"STORE_FAST", "STORE_NAME"})
_CALL_OPS = frozenset({"PRECALL", "CALL", "CALL_FUNCTION", "CALL_METHOD"})
# Builtins through which a body reads names flowing cannot follow.
_DYNAMIC = {"globals": "it calls globals()", "eval": "it calls eval()",
            "exec": "it calls exec()"}
_IMPORTERS = frozenset({"import_module", "__import__"})

# chains of attribute names read from a module (() alone: the whole module)
Chains = frozenset[tuple[str, ...]]


class _CodeInfo:
    """What a code object (with its nested code) contributes to a fingerprint."""

    __slots__ = ("digest", "globals", "chains", "imports", "dynamic", "computed", "current",
                 "reaches")

    def __init__(self, digest_: bytes, scan: _Scan) -> None:
        self.digest = digest_
        self.globals = tuple(sorted(scan.globals))  # module-level names read, sorted
        # global.attr.attr... chains read (a 1-tuple: the global read bare)
        self.chains = frozenset(scan.chains)
        # modules imported inside the code: (name, level, chains read through them)
        self.imports = tuple(sorted((m, lv, frozenset(c)) for (m, lv), c in scan.imports.items()))
        # (builtin name, what it reads) of dynamic reads flowing cannot follow
        self.dynamic = tuple(sorted(scan.dynamic))
        # getattr() with a computed name on these chains (rooted at a global, or at
        # a module imported inside: ("import", name, level, *attrs))
        self.computed = frozenset(scan.computed)
        self.current = scan.current  # may read flowing.current()
        self.reaches = bool(self.imports or self.dynamic or self.computed)  # beyond globals


class _Scan:
    """What ``_scan`` finds in one code object and the code nested in it."""

    __slots__ = ("globals", "chains", "imports", "dynamic", "computed", "current")

    def __init__(self) -> None:
        self.globals: set[str] = set()
        self.chains: set[tuple[str, ...]] = set()
        self.imports: dict[tuple[str, int], set[tuple[str, ...]]] = {}
        self.dynamic: set[tuple[str, str]] = set()
        self.computed: set[tuple[str | int, ...]] = set()
        self.current = False

    def merge(self, other: _CodeInfo) -> None:
        self.globals.update(other.globals)
        self.chains.update(other.chains)
        for m, lv, c in other.imports:
            self.imports.setdefault((m, lv), set()).update(c)
        self.dynamic.update(other.dynamic)
        self.computed.update(other.computed)
        self.current = self.current or other.current


# Code objects compare by content, so equal code shares one entry, which is
# correct: equal code has an equal digest.
_code_cache: weakref.WeakKeyDictionary[types.CodeType, _CodeInfo] = weakref.WeakKeyDictionary()
_code_lock = threading.Lock()


def _code_info(code: types.CodeType) -> _CodeInfo:
    with _code_lock:
        cached = _code_cache.get(code)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    scan = _Scan()
    _scan(code, scan)
    constants = Canonical()  # code constants are plain literals: no hook, no memo needed
    # Not hashed on purpose: co_name/co_qualname (renaming keeps the key),
    # co_filename, co_firstlineno and the line tables (moving code keeps it).
    h.update(_frame(b"sig", f"{code.co_argcount},{code.co_posonlyargcount},"
                           f"{code.co_kwonlyargcount},{code.co_flags}".encode()))
    h.update(_frame(b"op", code.co_code))
    h.update(_frame(b"exc", getattr(code, "co_exceptiontable", b"")))
    for label, group in ((b"names", code.co_names), (b"vars", code.co_varnames),
                         (b"free", code.co_freevars), (b"cell", code.co_cellvars)):
        h.update(_frame(label, constants.chunk(group)))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            # By content, never by repr: the repr of a code object holds an address.
            nested = _code_info(const)
            h.update(_frame(b"code", nested.digest))
            scan.merge(nested)
        else:
            h.update(_frame(b"k", constants.chunk(const)))
    info = _CodeInfo(h.digest(), scan)
    with _code_lock:
        _code_cache[code] = info
    return info


def _scan(code: types.CodeType, scan: _Scan) -> None:
    """What this code reads: module-level names, the attribute chains read
    from them (``helpers.compute`` -> ("helpers", "compute")), the modules it
    imports and what it reads through them, and the reads it cannot follow.

    Sound before precise: a module bound by an import and then used in any way
    but ``name.attr...`` (passed on, aliased, held in a cell) counts whole."""
    ins = list(dis.get_instructions(code))
    n = len(ins)
    # names it (flowing.current(), current(), from flowing import current, or
    # getattr(flowing, "current")); a module-level alias is seen by its value
    scan.current = scan.current or "current" in code.co_names or "current" in code.co_consts
    # 1. imports, and the local names they bind: name -> (module, level, prefix)
    bound: dict[str, tuple[str, int, tuple[str, ...]]] = {}
    for k, i in enumerate(ins):
        if i.opname == "IMPORT_STAR" and k and ins[k - 1].opname == "IMPORT_NAME":
            continue  # noted with its IMPORT_NAME
        if i.opname != "IMPORT_NAME":
            continue
        name = str(i.argval)
        level = ins[k - 2].argval if k >= 2 and ins[k - 2].opname == "LOAD_CONST" else 0
        level = level if type(level) is int else 0
        fromlist = ins[k - 1].argval if k >= 1 and ins[k - 1].opname == "LOAD_CONST" else None
        reads = scan.imports.setdefault((name, level), set())
        j = k + 1
        if not fromlist:  # import a.b  /  import a.b as c (IMPORT_FROM b)
            prefix: tuple[str, ...] = ()
            target = name if j < n and ins[j].opname == "IMPORT_FROM" else name.partition(".")[0]
            while j < n and ins[j].opname == "IMPORT_FROM":
                j += 1
            if target != name:  # ``import a.b`` binds a: a.b... chains start at a
                reads_of = scan.imports.setdefault((target, level), set())
            else:
                reads_of = reads
            if j < n and ins[j].opname in _STORE_LOCAL:
                bound[str(ins[j].argval)] = (target, level, prefix)
            else:
                reads_of.add(())
            continue
        while j < n and ins[j].opname == "IMPORT_FROM":  # from m import a, b as c
            attr = str(ins[j].argval)
            if j + 1 < n and ins[j + 1].opname in _STORE_LOCAL:
                bound[str(ins[j + 1].argval)] = (name, level, (attr,))
                j += 2
            else:
                reads.add((attr,))
                j += 1
        if j < n and ins[j].opname == "IMPORT_STAR":
            reads.add(())
    # 2. reads: name.attr.attr chains, getattr() and importers
    k = 0
    while k < n:
        i = ins[k]
        op = i.opname
        is_global = op in _GLOBAL_OPS
        if not (is_global or (op in _LOCAL_OPS and i.argval in bound)) or \
                not isinstance(i.argval, str):
            k += 1
            continue
        root = i.argval
        chain = [root]
        k += 1
        while k < n and ins[k].opname in _ATTR_OPS:
            chain.append(str(ins[k].argval))
            k += 1
        nxt = ins[k] if k < n else None
        if len(chain) == 1 and is_global and root in ("getattr", "vars"):
            k = _scan_getattr(ins, k, bound, scan, root == "vars")
            continue
        if chain[-1] in _IMPORTERS:
            if (nxt is not None and nxt.opname == "LOAD_CONST" and type(nxt.argval) is str
                    and k + 1 < n and ins[k + 1].opname in _CALL_OPS):
                scan.imports.setdefault((nxt.argval, 0), set()).add(())
            else:
                # "": whatever the module namespace holds, this is an import
                scan.dynamic.add(("", f"it imports a module by a computed name ({chain[-1]})"))
        if is_global:
            scan.globals.add(root)
            if root in _DYNAMIC and len(chain) == 1:
                scan.dynamic.add((root, _DYNAMIC[root]))
            scan.chains.add(tuple(chain))
        else:
            module, level, prefix = bound[root]
            scan.imports.setdefault((module, level), set()).add(prefix + tuple(chain[1:]))


def _scan_getattr(ins: list[dis.Instruction], k: int,
                  bound: dict[str, tuple[str, int, tuple[str, ...]]], scan: _Scan,
                  computed: bool = False) -> int:
    """``getattr(x.y, "name")`` reads the chain x.y.name; with a computed name, the
    chain is noted as read through an attribute flowing cannot name. Returns the
    index of the next instruction to look at."""
    scan.globals.add("vars" if computed else "getattr")
    n = len(ins)
    if k >= n:
        return k
    first = ins[k]
    is_global = first.opname in _GLOBAL_OPS
    if not (is_global or (first.opname in _LOCAL_OPS and first.argval in bound)) \
            or not isinstance(first.argval, str):
        return k  # not a name: a value, by content
    chain = [first.argval]
    j = k + 1
    while j < n and ins[j].opname in _ATTR_OPS:
        chain.append(str(ins[j].argval))
        j += 1
    arg = ins[j] if j < n else None
    constant = (not computed and arg is not None and arg.opname == "LOAD_CONST" and type(arg.argval) is str
                and j + 1 < n and (ins[j + 1].opname in _CALL_OPS
                                   or (ins[j + 1].opname.startswith("LOAD_")
                                       and j + 2 < n and ins[j + 2].opname in _CALL_OPS)))
    if constant:
        assert arg is not None
        chain.append(str(arg.argval))
        j += 1
    if is_global:
        scan.globals.add(chain[0])
        scan.chains.add(tuple(chain))
        if not constant:
            scan.computed.add(tuple(chain))
    else:
        module, level, prefix = bound[chain[0]]
        reads = prefix + tuple(chain[1:])
        scan.imports.setdefault((module, level), set()).add(reads)
        if not constant:
            scan.computed.add(("import", module, level, *reads))
    return j


# --- keys from a behaviour and dependency digests ---------------------------------------------

_HOOKED = (types.FunctionType, type, types.ModuleType, TaskDef)
_CURRENT = current
_SHORT = 12  # hex characters of a part's fingerprint (for "why", never for keys)
_MISSING = object()
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


def _own_part(own: dict[str, bytes], name: str, value: object, chunk: bytes) -> None:
    """Note a value a node reads as one of its parts (hashed only if "why" asks);
    the user's functions and classes are parts of their own (``code:``, ``class:``)."""
    if not isinstance(value, (types.FunctionType, type, TaskDef)):
        own[name] = chunk


# --- code flowing cannot follow ----------------------------------------------------------------

_UNFOLLOWED = "<unfollowed>"
_UNFOLLOWED_FIX = ("set @task(version=\"1\") and change it when that code changes, or "
                   "import modules and read their names by constant names")


def _unfollowed(what: str) -> Unstable:
    e = Unstable(_UNFOLLOWED, what)
    return e


def _import(modname: str, level: int, namespace: Mapping[str, object]
            ) -> tuple[types.ModuleType | None, str]:
    """The module an import inside a body binds, imported now if it is the user's
    and not imported yet (the body would import it when it runs); None for a
    library module (counted by name). Raises Unstable when it cannot be found."""
    import importlib
    import importlib.util

    absname = modname
    if level:
        package = namespace.get("__package__") or ""
        try:
            absname = importlib.util.resolve_name("." * level + modname, str(package))
        except (ImportError, ValueError):
            raise _unfollowed(f"it imports '{'.' * level}{modname}' relative to a module "
                              f"that is not in a package") from None
    module = sys.modules.get(absname)
    if module is None:
        top = absname.partition(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            return None, absname
        try:
            spec = importlib.util.find_spec(absname)
        except KeyboardInterrupt:
            raise
        except BaseException:
            spec = None
        if spec is None:
            raise _unfollowed(f"it imports '{absname}', which is not importable here")
        origin = spec.origin
        if not is_user_module(absname, origin if isinstance(origin, str) else None):
            return None, absname
        try:
            module = importlib.import_module(absname)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise _unfollowed(f"it imports '{absname}', whose import raised "
                              f"{digest.type_label(type(exc))}") from None
    if not is_user_module(str(getattr(module, "__name__", absname))):
        return None, absname
    return module, absname


def _submodule(package: str, attr: str) -> types.ModuleType | None:
    """``package.attr`` when it is a module not bound in ``package`` yet."""
    try:
        module, _ = _import(f"{package}.{attr}", 0, {})
    except Unstable:
        return None
    return module


def _check_computed(chain: tuple[str | int, ...], namespace: Mapping[str, object]) -> None:
    """``getattr(x, <computed>)`` / ``vars(x)``: fine on data (its content is in the
    key), unfollowable on a user module (any of its names may be read)."""
    if chain[0] == "import":
        module, _ = _import(str(chain[1]), int(chain[2]), namespace)
        target: object = module
        attrs = chain[3:]
        shown = str(chain[1])
    else:
        target = namespace.get(str(chain[0]), _MISSING)
        attrs = chain[1:]
        shown = str(chain[0])
    for attr in attrs:
        if target is None or target is _MISSING:
            return
        shown += f".{attr}"
        target = getattr(target, str(attr), None) if isinstance(target, types.ModuleType) \
            else None
    if isinstance(target, types.ModuleType) and is_user_module(
            str(getattr(target, "__name__", "?"))):
        raise _unfollowed(f"it reads module '{shown}' by a computed name (getattr or vars)")


# --- the keyer ------------------------------------------------------------------------------

# Class attributes that are bookkeeping, not behaviour: descriptors for the
# instance dict, caches that pickling or abc add on their own, line numbers.
_CLASS_SKIP = frozenset({"__module__", "__qualname__", "__dict__", "__weakref__",
                         "__firstlineno__", "__static_attributes__", "__slotnames__",
                         "_abc_impl"})


class _Failed(Exception):
    """A task has no key: carries its Uncacheable."""

    def __init__(self, result: Uncacheable) -> None:
        super().__init__(result.message)
        self.result = result


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
        self._codes: dict[int, tuple[types.CodeType, _CodeInfo]] = {}
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
        self._current: set[int] = set()           # nodes whose own code may read current()
        self._reaches_current: set[int] = set()   # ... or that reach such a node
        self._touched: list[object] = []          # pass 1: every node met (finished or not)
        self._saw_current = False                 # a function read flowing.current by value
        self._top: list[object] | None = None     # pass 0: the nodes a task's parts start from
        self._reached: dict[tuple[int, ...], dict[str, str]] = {}
        # For the in-place check (see ``Behaviour.changed``): the values each node reads
        # (globals, closure variables, defaults, attributes), noted in pass 1, and the
        # state of each such value when the run's keys were made, by id (kept alive)
        # (where, value, the namespace it was read from or None, the name read there)
        self._reading: list[_Read] | None = None
        self._reads: dict[int, list[_Read]] = {}
        self._states: dict[int, tuple[object, str | None]] = {}
        # per finished node: its reads and those of every node it reaches (a node's
        # references and reads are fixed once it is finished, so this never goes stale)
        self._closures: dict[int, tuple[_Read, ...]] = {}

    # --- the hook: the user's code, by content ----------------------------------------------

    def _part(self, fn: object, task: str, where: str) -> bytes:
        try:
            return self._chunk(fn)
        except Unstable as e:
            raise _Failed(Uncacheable(task, _describe(e, fn, where),
                                      _UNFOLLOWED_FIX if e.type_name == _UNFOLLOWED
                                      else _FIX)) from None

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
        return _frame(b"!c", self._code(node.__code__).digest)  # type: ignore[attr-defined]

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
        self._reading = reading
        try:
            parts = self._parts(node)
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
            self._reading = None
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
        if self._current:
            self._mark_current(members)

    def _mark_current(self, members: list[object]) -> None:
        reaches, current, refs = self._reaches_current, self._current, self._refs
        for m in members:
            if id(m) in current or any(id(r) in reaches for r in refs.get(id(m), ())):
                reaches.update(id(m) for m in members)
                return

    def _final_parts(self, node: object) -> bytes:
        found = self._final.pop(id(node), None)
        return found if found is not None else self._parts(node)

    def _parts(self, node: object) -> bytes:
        if isinstance(node, type):
            return self._class_parts(node)
        return self._function_parts(node)  # type: ignore[arg-type]

    def _code(self, code: types.CodeType) -> _CodeInfo:
        found = self._codes.get(id(code))
        if found is not None:
            return found[1]
        info = _code_info(code)
        self._codes[id(code)] = (code, info)
        return info

    def _function_parts(self, fn: types.FunctionType,
                        own: dict[str, bytes] | None = None) -> bytes:
        """The encoding of a function of the user. With ``own``, also note there
        the parts "why" names (called again for that, only when asked)."""
        code = fn.__code__
        info = self._code(code)
        label = ""
        if own is not None:  # named as written: 'fetch', 'Reader.read', '<lambda>'
            label = _node_label(fn).rpartition("<locals>.")[2]
            own[f"code:{label}"] = info.digest
        self._saw_current = False
        out = [_frame(b"code", info.digest)]
        namespace = fn.__globals__
        where = ""
        if own is not None:
            modname = namespace.get("__name__")
            where = "" if modname == "__main__" or type(modname) is not str else modname + "."
        for name in info.globals:
            # Names missing from the module are builtins: the code digest holds them.
            if name in namespace:
                chains = {c[1:] for c in info.chains if c[0] == name}
                out.append(_frame(b"global", _text(name)) + self._global(
                    namespace[name], chains, name, "global", set(), own, where + name,
                    namespace))
        if info.reaches:
            self._imports(info, namespace, out, own)
        for var, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:  # a cell not assigned yet
                out.append(_frame(b"closure", _text(var)) + b"-")
                continue
            chunk = self._value(content, "closure variable", var)
            out.append(_frame(b"closure", _text(var)) + chunk)
            if own is not None:
                _own_part(own, f"closure:{label}.{var}", content, chunk)
        defaults = fn.__defaults__ or ()
        params = code.co_varnames[:code.co_argcount][-len(defaults):] if defaults else ()
        for param, default in zip(params, defaults):
            chunk = self._value(default, "default of", param)
            out.append(b"default" + chunk)
            if own is not None:
                _own_part(own, f"default:{label}.{param}", default, chunk)
        kwdefaults = fn.__kwdefaults__ or {}
        for key in sorted(kwdefaults):
            chunk = self._value(kwdefaults[key], "default of", key)
            out.append(_frame(b"kwdefault", _text(key)) + chunk)
            if own is not None:
                _own_part(own, f"default:{label}.{key}", kwdefaults[key], chunk)
        attrs = fn.__dict__
        if attrs:  # function attributes (``f.retries = 3`` at module level)
            label = label or _node_label(fn)
            for key in sorted(k for k in attrs if type(k) is str):
                chunk = self._value(attrs[key], "attribute", f"{label}.{key}", attrs, key)
                out.append(_frame(b"fattr", _text(key)) + chunk)
                if own is not None:
                    _own_part(own, f"attr:{label}.{key}", attrs[key], chunk)
        if info.current or self._saw_current:
            self._current.add(id(fn))
        return b"".join(out)

    def _imports(self, info: _CodeInfo, namespace: dict[str, object], out: list[bytes],
                 own: dict[str, bytes] | None) -> None:
        """What a function reaches beyond its globals: the modules it imports itself,
        and the reads flowing cannot follow (raised as Unstable)."""
        for builtin, what in info.dynamic:
            if builtin not in namespace:  # (a name of the module's own is not the builtin)
                raise _unfollowed(what)
        for modname, level, chains in info.imports:
            module, absname = _import(modname, level, namespace)
            out.append(_frame(b"import", _text(absname)))
            if module is not None:
                out.append(self._global(module, set(chains), absname, "module", set(), own,
                                        absname))
        for chain in info.computed:
            _check_computed(chain, namespace)

    def _note(self, where: str, value: object, namespace: Mapping[str, object] | None,
              key: str) -> None:
        """Pass 1: note a value a node reads, for ``Behaviour.held`` (values
        that can change) and ``Behaviour.bound`` (``namespace`` binds ``key``)."""
        if self._reading is not None and (namespace is not None
                                          or not isinstance(value, _HOOKED)):
            self._reading.append((where, value, namespace, key))

    def _value(self, value: object, kind: str, name: str,
               namespace: Mapping[str, object] | None = None, key: str = "") -> bytes:
        """The encoding of a value read by a node: ``kind`` and ``name`` say
        where it was read ("global", "client"), for the message; ``namespace``
        and ``key``, the name it was read by (see ``Behaviour.bound``)."""
        if value is _CURRENT:  # an alias of flowing.current (``ctx = current``)
            self._saw_current = True
        self._note(f"{kind} '{name}'", value, namespace, key)
        try:
            return self._canon.chunk(value)
        except Unstable as e:
            if e.place is None:
                e.place = f"{kind} '{name}'"
                e.name = name
            raise

    def _global(self, value: object, chains: set[tuple[str, ...]], name: str, kind: str,
                seen: set[int], own: dict[str, bytes] | None, label: str,
                where: Mapping[str, object] | None = None) -> bytes:
        """A global (or an attribute of a user module) read by a function: a user
        module by the attributes read from it (all of them when it is read bare,
        ``()`` in ``chains``), anything else by content. ``own`` gets the parts
        that are data (``label``: how "why" names it, e.g. ``rules.K``);
        ``where``, the namespace ``value`` was read from by its last name."""
        if not issubclass(type(value), types.ModuleType):
            chunk = self._value(value, kind, name, where, name.rpartition(".")[2])
            if own is not None:
                _own_part(own, f"const:{label}", value, chunk)
            return chunk
        if where is not None:
            self._note(f"{kind} '{name}'", value, where, name.rpartition(".")[2])
        name = str(getattr(value, "__name__", "?"))
        if not is_user_module(name):
            return _frame(b"mod", _text(name))
        if id(value) in seen:
            return b"usermod-again"
        # The module's own name is left out: it differs between running a
        # file as a script and importing it.
        seen.add(id(value))
        namespace = vars(value)
        out = [b"usermod"]
        if () in chains:  # used as a whole (aliased, passed on): every name in it
            attrs = sorted(a for a in namespace if type(a) is str
                           and not (a[:2] == "__" == a[-2:]))
            everything = True
        else:
            attrs = sorted({c[0] for c in chains if c})
            everything = False
        for attr in attrs:
            rest: set[tuple[str, ...]] = ({()} if everything
                                          else {c[1:] for c in chains if c and c[0] == attr})
            found = namespace.get(attr, _MISSING)
            read_from: Mapping[str, object] | None = namespace
            if found is _MISSING:
                found = _submodule(name, attr)  # ``from pkg import sub`` imports it
                read_from = None
                if found is None:
                    continue
            out.append(_frame(b"attr", _text(attr)) + self._global(
                found, rest, f"{name}.{attr}", kind, seen, own, f"{name}.{attr}", read_from))
        return _frame(b"U" if not everything else b"W", b"".join(out))

    def _class_parts(self, cls: type) -> bytes:
        # __name__, not __qualname__: the latter names the enclosing function.
        out = [_frame(b"class", _text(str(cls.__name__)))]
        meta = type(cls)
        if meta is not type:
            out.append(_frame(b"meta", self._value(meta, "metaclass of", cls.__name__)))
        for base in cls.__bases__:
            out.append(_frame(b"base", self._value(base, "a base class of", cls.__name__)))
        namespace = cls.__dict__
        skip = _CLASS_SKIP
        doc = namespace.get("__doc__")
        if ("__dataclass_fields__" in namespace and type(doc) is str
                and doc.startswith(f"{cls.__name__}(")):
            # the docstring dataclasses writes from the fields' reprs (a set's repr is in
            # hash-seed order): the fields are in the key already
            skip = _CLASS_SKIP | {"__doc__"}
        for key in sorted(k for k in namespace if type(k) is str and k not in skip):
            attr = namespace[key]
            self._note(f"class attribute '{cls.__name__}.{key}'", attr,
                       None if key[:2] == "__" == key[-2:] else namespace, key)
            try:
                chunk = self._canon.chunk(attr)
            except Unstable as e:
                if e.origin is None and key[:2] == "__" == key[-2:]:
                    out.append(_frame(b"attr?", _text(key)))  # machinery: see the docs
                    continue
                if e.place is None:
                    e.name = f"{cls.__name__}.{key}"
                    e.place = f"class attribute '{e.name}'"
                raise
            out.append(_frame(b"attr", _text(key)) + chunk)
        return b"".join(out)


class Keyer(_Fingerprints):
    """Step keys for one run. Every fingerprint (function, class, value) is
    computed once per Keyer, however many tasks read it; make a new Keyer for
    each run so that changed module values are seen. Thread-safe.

    The walk over the user's code is ``_Fingerprints``'s; "why" parts and
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
        with self._lock:
            try:
                chunk = Canonical(None, self._hook, _HOOKED).chunk(item)
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
                    self._class_parts(node)
            else:
                self._function_parts(node, own)  # type: ignore[arg-type]
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


_Read = tuple[str, object, "Mapping[str, object] | None", str]
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


def _node_label(node: object) -> str:
    name = getattr(node, "__qualname__", None)
    return str(name) if type(name) is str else digest.type_label(type(node))


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
    with _code_lock:
        _code_cache.clear()
    digest.clear_cache()
