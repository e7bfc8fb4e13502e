"""Step keys: how the journal recognises a task it has already run.

A step key is a hex SHA-256 digest (64 characters). A task's key chains the
keys of its dependencies with a fingerprint of the task's behaviour, so editing
a task re-runs it and, through the chain, everything downstream of it. For
unchanged source the key is the same in every process: it never contains a
memory address, an ``id()``, a hash-seed dependent order, a file path, a module
name or a line number.

What is in a task's key
-----------------------
* ``STEP_KEY_VERSION`` and the Python implementation and minor version (e.g.
  ``cpython-311``): bytecode differs between Python versions, so upgrading
  Python, or this fingerprint scheme, re-runs every task.
* The keys of its dependencies, sorted (their order in ``depends_on`` does not
  matter).
* The code of its function: bytecode, constants, the names it references
  (globals, attributes, locals, free and cell variables), argument counts and
  code flags (so ``async def`` differs from ``def``). Nested functions, lambdas,
  comprehensions and generator expressions are part of that code.
* The same for its ``when``, ``validate`` and ``retry_until`` callables (an
  absent one counts as a fixed marker), and the name given to ``for_each``.
* Every module-level name the code references, looked up in the function's
  module:

  - user-defined functions (defined outside the standard library and outside
    site-packages/dist-packages): their fingerprint, recursively, by these
    same rules. Mutual recursion is fine.
  - user-defined classes: their name, their bases, their methods (by these same
    rules) and their plain class attributes (see constants).
  - constants: numbers, strings, bytes, None, and tuples, lists, dicts, sets and
    frozensets of them, by value (sets and dicts in sorted order, so hash
    seeds and insertion order do not matter). Enum members count as
    constants (their class name, member name and value).
  - modules: their name only. For a user module (``helpers.compute()``), the
    module's attributes whose names the code also references are included by
    these same rules (best effort: ``helpers.compute`` is found because
    ``compute`` appears in the code's names).
  - library functions and classes (``json.dumps``, ``os.path.join``): their
    module and qualified name only, never their code.
  - ``functools.partial`` objects: the wrapped function and the arguments;
    bound methods: the function and the class; objects with ``__wrapped__``
    (``functools.wraps``, ``lru_cache``): the wrapped function.
  - any other object (a compiled regex, a logger, an instance of your class):
    its type only (for your own classes, that type's fingerprint).

  Builtins (``len``, ``print``) are not included.
* Its closure variables and argument defaults, by the same rules.
* A task function that is not a plain function: a ``functools.partial``, a
  bound method or a builtin is described as above; a callable object by its
  class and by those of its attributes that are constants.

What is not in it
-----------------
* The task's name (``name=``) and the function's own name: renaming a task or
  its function keeps its key. (Renaming a task still changes the key of the
  tasks that depend on it, because their parameter is named after it.)
* ``retry``, ``retry_backoff_base_ms``, ``retry_max_backoff_ms``, ``retry_on``,
  ``timeout_s``, ``limit`` and ``detached``.
* Comments, blank lines, line numbers, file paths, and the module a function
  lives in (running a file as a script or importing it gives the same key).
* The code of the standard library and of installed packages: upgrading a
  library does not re-run tasks. A project installed non-editably into
  site-packages counts as a library too.
* The state of objects other than the constants listed above (what a logger,
  a connection or an instance of your class holds).
* Module-level names the code does not reference, and builtins.

Good to know
------------
* A docstring is a constant of its function's code: editing the docstring of a
  task or of a helper it calls changes the key.
* A module-level value is read when the key is first computed in a process. A
  value computed at import time (a timestamp, a random id) that a task reads
  therefore gives that task a new key in every process.
* Fingerprints are cached per function and class object for the life of the
  process; call ``clear_cache()`` after rebinding module globals at run time.
* Something that cannot be fingerprinted falls back to a coarser but stable
  description (its type): computing a key never raises.

A ``for_each`` item's key (``item_step_key``) chains the task's key, the item's
index and, when the item is a constant as defined above (JSON-like data), its
value; otherwise the index only.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import site
import sys
import sysconfig
import types
import weakref

from .tasks import TaskDef

__all__ = ["STEP_KEY_VERSION", "compute_step_key", "item_step_key", "fingerprint",
           "clear_cache"]

STEP_KEY_VERSION = 1

# Bytecode is only comparable within one implementation and minor version.
_PYTHON_TAG = f"{sys.implementation.name}-{sys.version_info[0]}{sys.version_info[1]}"
_STEP_PREFIX = f"flowing-step/{STEP_KEY_VERSION}/{_PYTHON_TAG}".encode()
_ITEM_PREFIX = f"flowing-item/{STEP_KEY_VERSION}/{_PYTHON_TAG}".encode()
_OWN_PACKAGE = __name__.partition(".")[0]

# Containers nested deeper than this are not "plain": it keeps the encoders
# far from the recursion limit on pathological data.
_MAX_DEPTH = 64


def compute_step_key(td, dep_keys) -> str:
    """The step key of task ``td`` given its dependencies' step keys (any order)."""
    chunks = [_STEP_PREFIX]
    if dep_keys:
        for key in sorted(k if type(k) is str else str(k) for k in dep_keys):
            chunks.append(_frame(b"dep", key.encode("utf-8", "surrogatepass")))
    chunks.append(_frame(b"behaviour", _behaviour(td)))
    return hashlib.sha256(b"".join(chunks)).hexdigest()


def item_step_key(task_key: str, index: int, item) -> str:
    """The step key of item number ``index`` of a ``for_each`` task."""
    h = hashlib.sha256(_ITEM_PREFIX)
    h.update(_frame(b"task", str(task_key).encode("utf-8", "surrogatepass")))
    h.update(_frame(b"index", str(index).encode()))
    value = _plain(item)
    # An item without a stable value is identified by its position alone.
    h.update(b"-" if value is None else _frame(b"item", value))
    return h.hexdigest()


def fingerprint(obj) -> str:
    """A hex digest of what ``obj`` (usually a callable) does; see the module docs."""
    if type(obj) is types.FunctionType:
        cached = _cache_get(obj)
        if cached is not None:  # the common case: one lookup
            return cached
    try:
        return _Graph().fingerprint(obj)
    except Exception:  # includes RecursionError on absurdly deep call chains
        return _coarse(obj)


def clear_cache() -> None:
    """Forget every cached fingerprint (after rebinding module globals at run time)."""
    _node_cache.clear()
    _code_cache.clear()
    _module_kind_cache.clear()


def _behaviour(td) -> bytes:
    # Four fixed-format fields (hex digest or "-") then the for_each name, so
    # joining with "|" is unambiguous. Kept cheap: it runs once per task.
    fields = [fingerprint(getattr(td, "fn", None))]
    for attr in ("when", "validate", "retry_until"):
        hook = getattr(td, attr, None)
        fields.append("-" if hook is None else fingerprint(hook))
    for_each = getattr(td, "for_each", None)
    fields.append("-" if for_each is None else "each:" + str(for_each))
    return "|".join(fields).encode("utf-8", "surrogatepass")


def _coarse(obj) -> str:
    """Last resort: the object's type and qualified name, which never change by accident."""
    try:
        text = f"{_type_name(type(obj))}/{getattr(obj, '__qualname__', '')}"
    except Exception:
        text = type(obj).__name__
    return hashlib.sha256(b"coarse/" + text.encode("utf-8", "surrogatepass")).hexdigest()


# --- canonical encoding of plain values ----------------------------------------------
#
# Every encoding is self-delimiting (tag, payload length, payload), so distinct
# values never concatenate into the same bytes.

def _frame(tag: bytes, payload: bytes) -> bytes:
    return tag + str(len(payload)).encode() + b":" + payload


def _text(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


class _NotPlain(Exception):
    """Raised inside the encoder when a value has no stable representation."""


def _plain(obj) -> bytes | None:
    """Canonical bytes of a plain value, or None if it (or anything inside) is not plain."""
    try:
        return _encode(obj, set(), 0)
    except (_NotPlain, RecursionError):
        return None
    except Exception:  # a hostile __eq__ or __iter__: treat as not plain
        return None


_SCALARS = {
    type(None): lambda x: b"N",
    type(...): lambda x: b"E",
    bool: lambda x: b"T" if x else b"F",
    int: lambda x: _frame(b"i", hex(x).encode()),  # hex: no digit limit on huge ints
    float: lambda x: _frame(b"f", float.__repr__(x).encode()),
    complex: lambda x: _frame(b"c", complex.__repr__(x).encode()),
    str: lambda x: _frame(b"s", _text(x)),
    bytes: lambda x: _frame(b"b", x),
    bytearray: lambda x: _frame(b"y", bytes(x)),
}

_SEQUENCES = {tuple: b"t", list: b"l"}
_SETS = {frozenset: b"z", set: b"S"}


def _encode(obj, active: set, depth: int) -> bytes:
    t = type(obj)
    scalar = _SCALARS.get(t)
    if scalar is not None:
        return scalar(obj)
    if depth > _MAX_DEPTH:
        raise _NotPlain
    if isinstance(obj, enum.Enum):
        return _frame(b"e", _text(t.__name__) + _frame(b"n", _text(obj.name))
                      + _encode(obj.value, active, depth + 1))
    # id() only guards against self-containing containers; it never reaches the output.
    if id(obj) in active:
        raise _NotPlain
    active.add(id(obj))
    try:
        body = _encode_container(obj, t, active, depth)
    finally:
        active.discard(id(obj))
    return body


def _encode_container(obj, t, active: set, depth: int) -> bytes:
    if t in _SEQUENCES:
        return _frame(_SEQUENCES[t], b"".join(_encode(x, active, depth + 1) for x in obj))
    if t in _SETS:
        items = sorted(_encode(x, active, depth + 1) for x in obj)
        return _frame(_SETS[t], b"".join(items))
    if t is dict:
        pairs = sorted(_encode(k, active, depth + 1) + _encode(v, active, depth + 1)
                       for k, v in obj.items())
        return _frame(b"d", b"".join(pairs))
    if t is slice:
        return _frame(b"sl", b"".join(_encode(x, active, depth + 1)
                                      for x in (obj.start, obj.stop, obj.step)))
    return _encode_subclass(obj, active, depth)


def _encode_subclass(obj, active: set, depth: int) -> bytes:
    """A subclass of a plain type (namedtuple, OrderedDict, numpy.float64): its
    type's name plus the value as its plain base type."""
    for base in (int, float, complex, str, bytes, tuple, list, dict, frozenset, set):
        if isinstance(obj, base):
            value = base(obj) if base is not dict else dict(obj.items())
            return _frame(b"u", _text(type(obj).__name__) + _encode(value, active, depth + 1))
    raise _NotPlain


# --- which code belongs to the user -------------------------------------------------

_module_kind_cache: dict[str, bool] = {}


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


def _is_user_module_name(modname, filename=None) -> bool:
    """True for modules written by the user, whose code goes into fingerprints."""
    if not isinstance(modname, str):
        return filename is None or not _in_library_dir(filename)
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


def _is_user_function(fn) -> bool:
    code = getattr(fn, "__code__", None)
    filename = getattr(code, "co_filename", None)
    return _is_user_module_name(getattr(fn, "__module__", None), filename)


def _is_user_class(cls) -> bool:
    return _is_user_module_name(getattr(cls, "__module__", None))


def _is_node(obj) -> bool:
    """User functions and classes are the nodes of the fingerprint graph."""
    if type(obj) is types.FunctionType:
        return _is_user_function(obj)
    return isinstance(obj, type) and _is_user_class(obj)


def _type_name(cls) -> str:
    """``module.qualname`` for library types; the bare name for the user's own,
    whose module name depends on how the program was started."""
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = str(getattr(cls, "__name__", "?"))
    if not isinstance(module, str) or _is_user_module_name(module):
        return qualname
    return f"{module}.{qualname}"


# --- code objects -------------------------------------------------------------------

# code object -> (digest, every name referenced by it or its nested code).
# Code objects compare by content, so equal code shares one entry, which is
# correct: equal code has an equal digest.
_code_cache: weakref.WeakKeyDictionary[types.CodeType, tuple[bytes, tuple[str, ...]]] = \
    weakref.WeakKeyDictionary()


def _code_info(code: types.CodeType) -> tuple[bytes, tuple[str, ...]]:
    cached = _code_cache.get(code)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    names = set(code.co_names)
    # Not hashed on purpose: co_name/co_qualname (renaming keeps the key),
    # co_filename, co_firstlineno and the line tables (moving code keeps it).
    h.update(_frame(b"sig", f"{code.co_argcount},{code.co_posonlyargcount},"
                           f"{code.co_kwonlyargcount},{code.co_flags}".encode()))
    h.update(_frame(b"op", code.co_code))
    h.update(_frame(b"exc", getattr(code, "co_exceptiontable", b"")))
    for label, group in ((b"names", code.co_names), (b"vars", code.co_varnames),
                         (b"free", code.co_freevars), (b"cell", code.co_cellvars)):
        h.update(_frame(label, _plain(group) or b"?"))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            # By content, never by repr: the repr of a code object holds an address.
            digest, nested_names = _code_info(const)
            h.update(_frame(b"code", digest))
            names.update(nested_names)
        else:
            value = _plain(const)
            h.update(_frame(b"k", value) if value is not None else
                     _frame(b"k?", _text(_type_name(type(const)))))
    info = (h.digest(), tuple(sorted(names)))
    try:
        _code_cache[code] = info
    except TypeError:
        pass
    return info


# --- describing values --------------------------------------------------------------
#
# A description is a list of parts: bytes, or a node (user function or class)
# standing for that node's fingerprint, filled in once the graph is solved.

_CLASS_SKIP = frozenset({"__module__", "__qualname__", "__dict__", "__weakref__",
                         "__firstlineno__", "__static_attributes__"})
_CALLABLE_TYPES = (types.BuiltinFunctionType, types.BuiltinMethodType,
                   types.WrapperDescriptorType, types.MethodWrapperType,
                   types.MethodDescriptorType, types.ClassMethodDescriptorType)


def _describe(value, out: list, names=(), depth: int = 0, modules=None) -> None:
    """Append a stable description of ``value`` to ``out``.

    ``names`` are the names the referencing code uses; they pick the
    attributes of a user module that matter.
    """
    try:
        _describe_kind(value, out, names, depth, modules if modules is not None else set())
    except Exception:  # an object that resists inspection: fall back to its type
        out.append(_frame(b"obj?", _text(_type_name(type(value)))))


def _describe_kind(value, out: list, names, depth: int, modules: set) -> None:
    if depth > _MAX_DEPTH:
        out.append(_frame(b"deep", _text(_type_name(type(value)))))
        return
    plain = _plain(value)
    if plain is not None:
        out.append(_frame(b"v", plain))
    elif type(value) is types.FunctionType:
        out.append(value if _is_user_function(value) else
                   _frame(b"libfn", _text(_callable_name(value))))
    elif isinstance(value, type):
        out.append(value if _is_user_class(value) else _frame(b"libcls", _text(_type_name(value))))
    elif isinstance(value, TaskDef):
        out.append(b"task")
        _describe(value.fn, out, names, depth + 1, modules)
    elif isinstance(value, types.ModuleType):
        _describe_module(value, out, names, depth, modules)
    elif isinstance(value, (functools.partial, functools.partialmethod)):
        _describe_partial(value, out, depth, modules)
    elif isinstance(value, types.MethodType):
        out.append(b"method")
        _describe(value.__func__, out, names, depth + 1, modules)
        owner = value.__self__
        _describe(owner if isinstance(owner, type) else type(owner), out, (), depth + 1, modules)
    elif isinstance(value, (staticmethod, classmethod)):
        out.append(b"static" if isinstance(value, staticmethod) else b"classmethod")
        _describe(value.__func__, out, names, depth + 1, modules)
    elif isinstance(value, property):
        out.append(b"property")
        for accessor in (value.fget, value.fset, value.fdel):
            _describe(accessor, out, names, depth + 1, modules)
    elif isinstance(value, _CALLABLE_TYPES):
        out.append(_frame(b"builtin", _text(_callable_name(value))))
    else:
        _describe_object(value, out, depth, modules)


def _callable_name(fn) -> str:
    module = getattr(fn, "__module__", None)
    if not isinstance(module, str):
        module = getattr(getattr(fn, "__objclass__", None), "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "?")
    return f"{module}.{qualname}"


def _describe_module(module, out: list, names, depth: int, modules: set) -> None:
    name = getattr(module, "__name__", "?")
    if not _is_user_module_name(name) or id(module) in modules:
        out.append(_frame(b"mod", _text(str(name))))
        return
    # The module's own name is left out: it differs between running a file as
    # a script and importing it.
    modules.add(id(module))
    out.append(b"usermod")
    namespace = vars(module)
    for attr in names:
        if attr in namespace:
            out.append(_frame(b"attr", _text(attr)))
            _describe(namespace[attr], out, names, depth + 1, modules)


def _describe_partial(value, out: list, depth: int, modules: set) -> None:
    out.append(b"partial")
    _describe(value.func, out, (), depth + 1, modules)
    for arg in value.args:
        out.append(b"arg")
        _describe(arg, out, (), depth + 1, modules)
    for key in sorted(value.keywords or {}):
        out.append(_frame(b"kw", _text(key)))
        _describe(value.keywords[key], out, (), depth + 1, modules)


def _describe_object(value, out: list, depth: int, modules: set, state: bool = False) -> None:
    """Any other object: its type, what it wraps, and (if ``state``) its plain attributes."""
    out.append(b"obj")
    _describe(type(value), out, (), depth + 1, modules)
    wrapped = getattr(value, "__wrapped__", None) if callable(value) else None
    if wrapped is not None and wrapped is not value:
        out.append(b"wraps")
        _describe(wrapped, out, (), depth + 1, modules)
    if not state:
        return
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        for key in sorted(k for k in attrs if isinstance(k, str) and not k.startswith("__")):
            plain = _plain(attrs[key])
            out.append(_frame(b"state", _text(key) + (plain if plain is not None else b"?")))


# --- graph nodes: user functions and classes --------------------------------------

def _function_parts(fn) -> list:
    digest, names = _code_info(fn.__code__)
    out: list = [_frame(b"code", digest)]
    namespace = fn.__globals__
    modules: set = set()
    for name in names:
        # Names missing from the module are builtins or attribute names: the
        # code digest already holds them.
        if name in namespace:
            out.append(_frame(b"global", _text(name)))
            _describe(namespace[name], out, names, 0, modules)
    for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        out.append(_frame(b"closure", _text(var)))
        try:
            content = cell.cell_contents
        except ValueError:  # a cell not assigned yet
            out.append(b"empty")
            continue
        _describe(content, out, names, 0, modules)
    for default in fn.__defaults__ or ():
        out.append(b"default")
        _describe(default, out, names, 0, modules)
    kwdefaults = fn.__kwdefaults__ or {}
    for key in sorted(kwdefaults):
        out.append(_frame(b"kwdefault", _text(key)))
        _describe(kwdefaults[key], out, names, 0, modules)
    return out


def _class_parts(cls) -> list:
    # __name__, not __qualname__: the latter names the enclosing function.
    out: list = [_frame(b"class", _text(str(cls.__name__)))]
    for base in cls.__bases__:
        out.append(b"base")
        _describe(base, out)
    namespace = vars(cls)
    for key in sorted((k for k in namespace if k not in _CLASS_SKIP), key=str):
        out.append(_frame(b"attr", _text(str(key))))
        _describe(namespace[key], out)
    return out


def _node_parts(node) -> list:
    try:
        return _class_parts(node) if isinstance(node, type) else _function_parts(node)
    except Exception:
        return [_frame(b"unreadable", _text(_type_name(type(node))))]


# Finished fingerprints (hex) of user functions and classes.
_node_cache: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def _cache_get(node) -> str | None:
    try:
        return _node_cache.get(node)
    except TypeError:  # unhashable or not weak-referenceable
        return None


class _Graph:
    """One fingerprinting pass over the user functions and classes reachable
    from an object.

    Nodes reference each other (helpers, methods, recursion), possibly in
    cycles. Each strongly connected component (Tarjan) is hashed as a whole
    from its members' content, so a fingerprint does not depend on which
    member was reached first, and only complete components are cached.
    """

    def __init__(self):
        self.index: dict[int, int] = {}
        self.low: dict[int, int] = {}
        self.parts: dict[int, list] = {}
        self.stack: list = []
        self.on_stack: set[int] = set()
        self.done: dict[int, str] = {}  # for nodes the shared cache cannot hold
        self.keep: list = []  # keeps visited objects alive, so their id()s stay unique

    def fingerprint(self, obj) -> str:
        if _is_node(obj):
            return self.node_fingerprint(obj)
        parts: list = []
        if _is_plain_callable_object(obj):
            _describe_object(obj, parts, 0, set(), state=True)
        else:
            _describe(obj, parts)
        return hashlib.sha256(b"root" + self.serialize(parts)).hexdigest()

    def node_fingerprint(self, node) -> str:
        known = self.known(node)
        if known is None:
            self.visit(node)
            known = self.known(node)
        return known

    def known(self, node) -> str | None:
        found = self.done.get(id(node))
        return found if found is not None else _cache_get(node)

    def serialize(self, parts: list, inside: dict | None = None) -> bytes:
        """Parts as bytes; a node becomes its fingerprint, or, within the
        component being solved (``inside``), its content digest."""
        chunks = []
        for part in parts:
            if isinstance(part, bytes):
                chunks.append(part)
            elif inside is not None and id(part) in inside:
                chunks.append(_frame(b"in", inside[id(part)]))
            else:
                chunks.append(_frame(b"node", self.node_fingerprint(part).encode()))
        return b"".join(chunks)

    def visit(self, node) -> None:
        k = id(node)
        self.index[k] = self.low[k] = len(self.index)
        self.stack.append(node)
        self.on_stack.add(k)
        self.keep.append(node)
        self.parts[k] = parts = _node_parts(node)
        for child in parts:
            if isinstance(child, bytes) or self.known(child) is not None:
                continue
            c = id(child)
            if c not in self.index:
                self.visit(child)
                self.low[k] = min(self.low[k], self.low[c])
            elif c in self.on_stack:
                self.low[k] = min(self.low[k], self.index[c])
        if self.low[k] == self.index[k]:
            self.close_component(node)

    def close_component(self, root) -> None:
        members = []
        while True:
            member = self.stack.pop()
            self.on_stack.discard(id(member))
            members.append(member)
            if member is root:
                break
        # A member's content digest stands in for references inside the
        # component; it depends only on source, not on the visiting order.
        ids = {id(m) for m in members}
        content = {id(m): hashlib.sha256(self.serialize(
            [p if isinstance(p, bytes) or id(p) not in ids else b"member" for p in self.parts[id(m)]]
        )).digest() for m in members}
        full = {id(m): hashlib.sha256(self.serialize(self.parts[id(m)], content)).digest()
                for m in members}
        component = hashlib.sha256(b"".join(sorted(full.values()))).digest()
        for m in members:
            fp = hashlib.sha256(component + full[id(m)]).hexdigest()
            self.done[id(m)] = fp
            try:
                _node_cache[m] = fp
            except TypeError:
                pass


def _is_plain_callable_object(obj) -> bool:
    """A callable instance of some class (not a function, method, partial...)."""
    return (callable(obj) and not isinstance(obj, type) and _plain(obj) is None
            and not isinstance(obj, (types.FunctionType, types.MethodType, TaskDef,
                                     functools.partial, *_CALLABLE_TYPES)))
