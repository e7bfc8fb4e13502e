"""Nothing to install on a Dask cluster's workers: flowing ships itself and the
script's own modules there when the workers cannot import them.

Policy
------
What ships: the ``flowing`` package, and the user's modules that live in the
script's folder (the folder of ``__main__.__file__``, else the current
directory): every imported module whose file is there and that is not a
library (``digest.is_user_module``), each whole top-level module or package.
Bodies defined in ``__main__`` ship by value (cloudpickle) as before. A
module found elsewhere (a package only on the script's ``PYTHONPATH``) does
not ship: the worker's import fails and the task fails with ``CannotShip``
naming the module and the fix (install it on the workers, or
``@task(local=True)``).

When: once per client and set of modules (their names and file contents).
The workers are asked first (``client.run`` of a probe) which of those
names they can import without flowing's help; when every one can, nothing
is uploaded. Otherwise the missing ones are zipped into
``flowing-ship-<digest>.zip`` (the digest of the files' contents, so a changed
module is a new bundle) and sent with ``client.upload_file(load=False)``,
which registers it as a worker plugin: workers that join later receive it too.

How a worker uses it: the task Dask runs is ``ENTRY``, a small function
shipped by value that refers to the standard library alone, so neither the
scheduler (which unpickles every task) nor a worker needs flowing to load
it. On the worker it puts the bundle (in the worker's local directory) first
on ``sys.path`` (once per bundle; a new bundle first drops the previous
bundle's user modules from ``sys.modules``, so edited code is used), imports
``flowing.runners.worker`` and runs the function it was asked for
(``run_shipped``, or ``store_form`` for the journal). Without a bundle those
functions are submitted as they are (by reference).

Format of the zip: ``flowing/...`` and the user's modules at the root, ``.py``
files only, fixed timestamps (the same sources make the same bytes).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

# per client: bundle signature -> (bundle file name, the user modules in it), or None
# when the workers import everything themselves
Shipped = tuple[str, tuple[str, ...]]
_shipped: weakref.WeakKeyDictionary[Any, dict[str, Shipped | None]] = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()
_PREFIX = "flowing-ship-"


def _entry(bundle: str, names: tuple[str, ...], target: str, *args: Any) -> Any:
    """Runs on a Dask worker (shipped by value: standard library only): the function
    ``target`` of ``flowing.runners.worker`` (``run_shipped``, ``store_form``) on
    ``args``. Both return ``(code, data)``; a ``run_shipped`` call that keeps its
    value raises instead (see ``worker.run_shipped``)."""
    import sys  # on the worker, by value: standard library only

    keep = target == "run_shipped" and len(args) > 3 and bool(args[3])

    state: Any = sys.modules.get("_flowing_bundle")
    if state is None:
        import threading  # on the worker, by value: standard library only
        import types  # on the worker, by value: standard library only

        fresh: Any = types.ModuleType("_flowing_bundle")
        fresh.lock = threading.Lock()
        fresh.name = None
        fresh.path = None
        state = sys.modules.setdefault("_flowing_bundle", fresh)
    if state.name != bundle:
        with state.lock:
            if state.name != bundle:
                import importlib  # on the worker, by value: standard library only
                import os  # on the worker, by value: standard library only

                try:
                    from distributed import get_worker  # on the worker, by value: standard library only

                    path = os.path.join(get_worker().local_directory, bundle)
                except Exception:
                    path = bundle
                if not os.path.exists(path):
                    why = (f"the bundle of flowing and the script's modules ({bundle}) "
                           f"did not reach this worker; run again")
                    if keep:
                        raise RuntimeError("flowing: not kept", 2, why)
                    return 2, why
                if state.path in sys.path:
                    sys.path.remove(state.path)
                for name in list(sys.modules):
                    if name.partition(".")[0] in names:
                        del sys.modules[name]
                sys.path.insert(0, path)
                importlib.invalidate_caches()
                worker = sys.modules.get("flowing.runners.worker")
                if worker is not None:  # bodies unpickled from the previous bundle
                    worker._bodies.clear()
                state.path = path
                state.name = bundle
    try:
        from flowing.runners import worker  # on the worker, after the bundle is on sys.path
    except BaseException as exc:
        if keep:
            raise RuntimeError("flowing: not kept", 2, f"flowing cannot be imported on the "
                               f"worker ({type(exc).__name__}: {exc})") from None
        return 2, (f"flowing cannot be imported on the worker ({type(exc).__name__}: {exc}); "
                   f"run again, or install flowing on the workers")
    return getattr(worker, target)(*args)


def _probe(names: tuple[str, ...]) -> list[str]:
    """Runs on each worker (by value): the names it cannot import on its own
    (a bundle flowing put on sys.path does not count)."""
    import importlib.machinery  # on the worker, by value: standard library only
    import sys  # on the worker, by value: standard library only

    state = sys.modules.get("_flowing_bundle")
    own = getattr(state, "path", None)
    path = [p for p in sys.path if p != own]
    missing = []
    for name in names:
        try:
            if importlib.machinery.PathFinder.find_spec(name, path) is None:
                missing.append(name)
        except Exception:
            missing.append(name)
    return missing


def by_value(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` from a module no other process has: cloudpickle ships it by
    value (its code), so loading it needs only the standard library."""
    g = {"__builtins__": __builtins__, "__name__": "_flowing_by_value"}
    copy = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__)
    copy.__module__ = "_flowing_by_value"
    copy.__qualname__ = fn.__name__
    return copy


ENTRY = by_value(_entry)
PROBE = by_value(_probe)


def script_folder() -> str:
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    if isinstance(file, str) and file:
        return os.path.dirname(os.path.abspath(file))
    return os.getcwd()


def _sources(name: str) -> list[tuple[str, str]]:
    """(archive name, file path) of every ``.py`` file of top-level module ``name``."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return []
    if os.path.basename(file) != "__init__.py":
        return [(os.path.basename(file), file)] if file.endswith(".py") else []
    root = os.path.dirname(file)
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(root))
                out.append((rel.replace(os.sep, "/"), path))
    return out


def user_modules(folder: str) -> list[str]:
    """Top-level names of the imported user modules whose files are in ``folder``."""
    from ..keys.digest import is_user_module  # lazy: keeps import flowing fast

    prefix = os.path.join(os.path.abspath(folder), "")
    names = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in names or top == "__main__" or name == "__mp_main__":
            continue
        file = getattr(module, "__file__", None)
        if (isinstance(file, str) and os.path.abspath(file).startswith(prefix)
                and top in sys.modules and is_user_module(name)):
            names.add(top)
    return sorted(names)


def prepare(client: Any) -> Shipped | None:
    """Make flowing and the script's modules importable on ``client``'s workers.

    -> (bundle file name, user module names) for ``ENTRY``, or None when the
    workers import everything themselves (submit ``run_shipped`` as it is).
    Raises what the client raises (a closed client).
    """
    names = user_modules(script_folder())
    files: list[tuple[str, str]] = []
    for name in ["flowing", *names]:
        files.extend(_sources(name))
    contents = []
    h = hashlib.sha256()
    for arc, path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        contents.append((arc, data))
        h.update(arc.encode() + b"\0" + hashlib.sha256(data).digest())
    signature = h.hexdigest()[:20]
    with _lock:
        known = _shipped.setdefault(client, {})
        if signature in known:
            return known[signature]
        wanted = ("flowing", *names)
        answers = client.run(PROBE, wanted)
        missing: set[str] = set()
        for value in answers.values():
            missing.update(value)
        shipped: Shipped | None = None
        if missing or not answers:  # no worker yet: ship all, for those to come
            if not answers:
                missing = set(wanted)
            bundle = _upload(client, signature, [
                (arc, data) for arc, data in contents
                if arc.partition("/")[0].removesuffix(".py") in missing])
            shipped = bundle, tuple(n for n in names if n in missing)
        known[signature] = shipped
        return shipped


def _upload(client: Any, signature: str, contents: list[tuple[str, bytes]]) -> str:
    import tempfile  # lazy: only when a bundle is made
    import zipfile  # lazy: only when a bundle is made

    bundle = f"{_PREFIX}{signature}.zip"
    folder = tempfile.mkdtemp(prefix="flowing-ship-")
    path = os.path.join(folder, bundle)
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for arc, data in contents:
                z.writestr(zipfile.ZipInfo(arc, (1980, 1, 1, 0, 0, 0)), data,
                           zipfile.ZIP_DEFLATED)
        client.upload_file(path, load=False)
    finally:
        try:
            os.remove(path)
            os.rmdir(folder)
        except OSError:
            pass
    return bundle
