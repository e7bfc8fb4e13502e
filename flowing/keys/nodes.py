"""What one function or class of the user is made of, as a step key encodes it.

Part of the step keys (the policy is in ``flowing.keys.stepkey``'s docstring).
``_NodeReader`` encodes a node (a function: its code, the globals, user
modules, closure variables, defaults and attributes it reads; a class: its
name, metaclass, bases and namespace) through the run's ``Canonical``, whose
hook (``fingerprints._Fingerprints``) encodes the functions and classes met
inside by their fingerprints. While the walk finds a node's references it also
notes what the node reads (``reading``: for ``Behaviour.held`` and
``Behaviour.bound``) and whether it may read ``flowing.current()``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from ..context import current
from ..tasks import TaskDef
from .digest import Canonical, Unstable, is_user_module, type_label
from .encoding import _frame, _text
from .reach import _MISSING, _check_computed, _code_info, _CodeInfo, _import, _submodule, _unfollowed

_HOOKED = (types.FunctionType, type, types.ModuleType, TaskDef)
_CURRENT = current
# A value a node read: (where, the value, the namespace it was read from or None,
# the name read there)
_Read = tuple[str, object, "Mapping[str, object] | None", str]
# --- nodes ------------------------------------------------------------------------------

# Class attributes that are bookkeeping, not behaviour: descriptors for the
# instance dict, caches that pickling or abc add on their own, line numbers.
_CLASS_SKIP = frozenset({"__module__", "__qualname__", "__dict__", "__weakref__",
                         "__firstlineno__", "__static_attributes__", "__slotnames__",
                         "_abc_impl"})


def _node_label(node: object) -> str:
    name = getattr(node, "__qualname__", None)
    return str(name) if type(name) is str else type_label(type(node))


def _own_part(own: dict[str, bytes], name: str, value: object, chunk: bytes) -> None:
    """Note a value a node reads as one of its parts (hashed only if "why" asks);
    the user's functions and classes are parts of their own (``code:``, ``class:``)."""
    if not isinstance(value, (types.FunctionType, type, TaskDef)):
        own[name] = chunk


class _NodeReader:
    """Reads the user's functions and classes for one run's ``_Fingerprints``.

    ``current``      ids of the functions whose own code may read ``current()``;
    ``reading``      while the walk finds a node's references: where the values
                     that node reads are noted (else None);
    ``saw_current``  the function being read reads ``flowing.current`` by value.
    """

    def __init__(self, canon: Canonical) -> None:
        self._canon = canon
        self._codes: dict[int, tuple[types.CodeType, _CodeInfo]] = {}
        self.current: set[int] = set()
        self.reading: list[_Read] | None = None
        self.saw_current = False

    def parts(self, node: object) -> bytes:
        if isinstance(node, type):
            return self.class_parts(node)
        return self.function_parts(node)  # type: ignore[arg-type]

    def code(self, code: types.CodeType) -> _CodeInfo:
        found = self._codes.get(id(code))
        if found is not None:
            return found[1]
        info = _code_info(code)
        self._codes[id(code)] = (code, info)
        return info

    def function_parts(self, fn: types.FunctionType,
                        own: dict[str, bytes] | None = None) -> bytes:
        """The encoding of a function of the user. With ``own``, also note there
        the parts "why" names (called again for that, only when asked)."""
        code = fn.__code__
        info = self.code(code)
        label = ""
        if own is not None:  # named as written: 'fetch', 'Reader.read', '<lambda>'
            label = _node_label(fn).rpartition("<locals>.")[2]
            own[f"code:{label}"] = info.digest
        self.saw_current = False
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
        if info.current or self.saw_current:
            self.current.add(id(fn))
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
        if self.reading is not None and (namespace is not None
                                          or not isinstance(value, _HOOKED)):
            self.reading.append((where, value, namespace, key))

    def _value(self, value: object, kind: str, name: str,
               namespace: Mapping[str, object] | None = None, key: str = "") -> bytes:
        """The encoding of a value read by a node: ``kind`` and ``name`` say
        where it was read ("global", "client"), for the message; ``namespace``
        and ``key``, the name it was read by (see ``Behaviour.bound``)."""
        if value is _CURRENT:  # an alias of flowing.current (``ctx = current``)
            self.saw_current = True
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

    def class_parts(self, cls: type) -> bytes:
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

