"""What a body's code reaches: the names, attribute chains and modules it reads.

Part of the step keys (the policy is in ``flowing.keys.stepkey``'s docstring).
``_code_info`` reads a code object once per process (cached by content: equal
code has an equal digest): its digest (bytecode, constants, names, argument
counts and flags; never its name, file or line numbers) and what ``_scan``
finds in its instructions: module-level names read, ``name.attr...`` chains read
from them, modules imported inside it (and the chains read through them),
``getattr``/``vars`` with a computed name, and the reads flowing cannot follow
(``globals()``, ``eval``, ``exec``, an import by a computed name).
``_import`` resolves an import of a body the way the body would (the user's
modules imported now, library modules named only); ``_check_computed`` refuses
a computed ``getattr`` on a user module. Those refusals are ``Unstable`` with
the type name ``_UNFOLLOWED``.
"""

from __future__ import annotations

import dis
import hashlib
import sys
import threading
import types
import weakref
from collections.abc import Mapping

from .digest import Canonical, Unstable, is_user_module, type_label
from .encoding import _frame

_MISSING = object()



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
    import importlib  # lazy: keeps import flowing fast
    import importlib.util  # lazy: keeps import flowing fast

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
                              f"{type_label(type(exc))}") from None
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


def clear_code_cache() -> None:
    """Forget every code object read (``stepkey.clear_cache``)."""
    with _code_lock:
        _code_cache.clear()
