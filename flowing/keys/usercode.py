"""Whose code is it: the user's, or a library's (step keys follow only the user's).

Part of the content digests (see ``flowing.keys.digest``). A module is the
user's unless it is flowing itself, in the standard library, or installed
in site-packages/dist-packages (a project installed non-editably counts as a
library); ``module_name`` gives a module's importable name (``__main__``
named after its file); ``type_name``/``type_label`` name types in encodings
and in messages.
"""

from __future__ import annotations

import contextvars
import functools
import os
import site
import sys
import sysconfig
import types

_OWN_PACKAGE = __name__.partition(".")[0]


_module_kind_cache: dict[str, bool] = {}


def clear_cache() -> None:
    """Forget which modules were classified as the user's (after sys.modules changed)."""
    _module_kind_cache.clear()


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


def is_user_module(modname: object, filename: object = None) -> bool:
    """True for a module written by the user (outside the standard library,
    site-packages and this package), whose code goes into step keys."""
    if not isinstance(modname, str):
        return not isinstance(filename, str) or not _in_library_dir(filename)
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


def is_user_function(fn: types.FunctionType) -> bool:
    code = getattr(fn, "__code__", None)
    return is_user_module(getattr(fn, "__module__", None), getattr(code, "co_filename", None))


def is_user_class(cls: type) -> bool:
    return is_user_module(getattr(cls, "__module__", None))


def _qualified(module: object, qualname: str) -> str:
    """``module.qualname``, with a script's ``__main__`` named as if imported
    (see ``module_name``)."""
    if not isinstance(module, str):
        return qualname
    return f"{module_name(module)}.{qualname}"


_main_names: dict[str, tuple[object, str]] = {}  # __main__ -> (the module seen, its name)
# The name the flow's script has, for a digest made in its stead in another process
# (a Dask worker: runners.worker), where functions and classes shipped by value from
# the script still say ``__main__``; None: this process's own script.
main_name: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flowing_main_name", default=None)


def module_name(module: str) -> str:
    """The name a module has when imported: itself, except for ``__main__``.

    A script's ``__main__`` is named as ``import`` would name its file, so
    that running a file as a script and importing it as a module agree:
    ``__spec__.name`` when it was started with ``python -m``; otherwise the
    file's path relative to the ``sys.path`` entry nearest to it (the longest
    one holding it), with ``/`` as ``.`` and without ``.py`` (``__init__``
    names its package). ``__main__`` with no file (``python -c``, an
    interactive session) keeps its name. ``__mp_main__`` (the script, in a
    process started by ``multiprocessing``) is named the same way. Within
    ``main_name`` set, both are that name.
    """
    if module != "__main__" and module != "__mp_main__":
        return module
    named = main_name.get()
    if named is not None:
        return named
    main = sys.modules.get(module)
    cached = _main_names.get(module)
    if cached is not None and cached[0] is main:
        return cached[1]
    name = _main_module_name(main)
    if name == "__mp_main__":
        name = "__main__"
    _main_names[module] = (main, name)
    return name


def _main_module_name(main: object) -> str:
    spec = getattr(main, "__spec__", None)
    spec_name = getattr(spec, "name", None)
    if isinstance(spec_name, str) and spec_name and spec_name != "__main__":
        return spec_name  # python -m pkg.mod (python -m pkg: pkg.__main__)
    file = getattr(main, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return "__main__"
    path = os.path.realpath(file)
    best: str | None = None
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        root = os.path.realpath(entry or os.getcwd())
        rel = os.path.relpath(path, root)
        if rel.startswith(os.pardir) or os.path.isabs(rel):
            continue
        parts = rel[:-3].split(os.sep)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and all(p.isidentifier() for p in parts):
            dotted = ".".join(parts)
            if best is None or len(dotted) < len(best):
                best = dotted
    return best if best is not None else os.path.basename(path)[:-3]


def type_name(cls: type) -> str:
    """``module.qualname`` of a class (``module_name`` for a script's own)."""
    qualname = getattr(cls, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = str(type.__dict__["__name__"].__get__(cls, type))
    return _qualified(getattr(cls, "__module__", None), qualname)


def type_label(cls: type) -> str:
    """A type's name for messages (``socket.socket``, ``list``; the user's own
    classes by their qualified name): never raises."""
    try:
        qualname = getattr(cls, "__qualname__", None)
        module = getattr(cls, "__module__", None)
        if isinstance(qualname, str) and (not isinstance(module, str) or is_user_module(module)):
            return qualname
        name = type_name(cls)
    except Exception:
        return "object"
    return name[len("builtins."):] if name.startswith("builtins.") else name


def _instance_dict(x: object) -> object:
    try:
        return object.__getattribute__(x, "__dict__")
    except AttributeError:
        return None


def _reaches(module: object, qualname: str, obj: object) -> bool:
    """Does ``module.qualname`` name ``obj`` (so the name identifies it, as for pickle)?"""
    found = sys.modules.get(module) if isinstance(module, str) else None
    if found is None:
        return False
    current: object = found
    for part in qualname.split("."):
        d = _instance_dict(current)
        if not isinstance(d, (dict, types.MappingProxyType)) or part not in d:
            return False
        current = d[part]
        if isinstance(current, (staticmethod, classmethod)):
            current = current.__func__
    return current is obj
