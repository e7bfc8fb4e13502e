"""Declaring tasks: the ``@task`` decorator, ``TaskDef`` and the registry.

Every argument is checked when the decorator runs, so a typo fails on the
line that made it, naming the task and the argument. The graph-wide checks
(cycles, duplicate names, missing parameters) happen when a ``Flow`` is built.
"""

from __future__ import annotations

import numbers

from .limits import Limit

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect at start-up

# Every TaskDef made by ``task``, in creation order. Only used to discover
# detached tasks whose dependencies are all in a flow's graph (see graph.py).
_registry: list[TaskDef] = []


def clear_registry() -> None:
    """Forget every task declared so far (detached auto-discovery starts empty)."""
    _registry.clear()


def registered_tasks() -> list[TaskDef]:
    """A snapshot of the registry, oldest first."""
    return list(_registry)


class TaskDef:
    """A declared step: its function, its dependencies and its policies.

    Calling a TaskDef calls its function directly, so a step can be unit
    tested without a Flow. TaskDefs compare and hash by identity.
    """

    __slots__ = ("name", "fn", "depends_on", "retry", "retry_backoff_base_ms",
                 "retry_max_backoff_ms", "retry_on", "timeout_s", "detached", "when",
                 "validate", "retry_until", "for_each", "limit", "is_async", "__weakref__")

    def __init__(self, fn, *, depends_on=(), name=None, retry=0, retry_backoff_base_ms=1000,
                 retry_max_backoff_ms=30_000, retry_on=(Exception,), timeout_s=None,
                 detached=False, when=None, validate=None, retry_until=None, for_each=None,
                 limit=None):
        if not callable(fn):
            raise TypeError(f"@task needs a function, got {fn!r}")
        if name is None:
            name = getattr(fn, "__name__", None)
            if not isinstance(name, str) or not name or name == "<lambda>":
                raise ValueError(f"task {fn!r} has no usable __name__: pass name='...'")
        elif not isinstance(name, str) or not name:
            raise TypeError(f"task name must be a non-empty string, got {name!r}")
        self.name = name
        self.fn = fn
        self.depends_on = _check_depends_on(name, depends_on)
        self.retry = _check_int(name, "retry", retry)
        self.retry_backoff_base_ms = _check_non_negative(name, "retry_backoff_base_ms",
                                                         retry_backoff_base_ms)
        self.retry_max_backoff_ms = _check_non_negative(name, "retry_max_backoff_ms",
                                                        retry_max_backoff_ms)
        self.retry_on = _check_retry_on(name, retry_on)
        self.timeout_s = _check_timeout(name, timeout_s)
        if not isinstance(detached, bool):
            raise TypeError(f"task '{name}': detached must be True or False, got {detached!r}")
        self.detached = detached
        self.when = _check_callable(name, "when", when)
        self.validate = _check_callable(name, "validate", validate)
        self.retry_until = _check_callable(name, "retry_until", retry_until)
        self.for_each = _check_for_each(name, for_each, self.depends_on)
        if limit is not None and not isinstance(limit, Limit):
            raise TypeError(f"task '{name}': limit must be a flowing.Limit, got {limit!r}; "
                            f"write limit=Limit(max_concurrency=..., rate=...)")
        self.limit = limit
        self.is_async = _is_coroutine_function(fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        deps = ", ".join(d.name for d in self.depends_on)
        return f"<task {self.name}" + (f" <- [{deps}]>" if deps else ">")


def task(fn=None, *, depends_on=(), name: str | None = None, retry: int = 0,
         retry_backoff_base_ms: float = 1000, retry_max_backoff_ms: float = 30_000,
         retry_on=(Exception,), timeout_s: float | None = None, detached: bool = False,
         when=None, validate=None, retry_until=None, for_each: str | None = None,
         limit: Limit | None = None):
    """Declare a step. Use as ``@task``, ``@task(...)`` or ``task(fn, name=...)``.

    Each dependency's value is passed to the function as the keyword argument
    named after that dependency.
    """
    options = dict(depends_on=depends_on, name=name, retry=retry,
                   retry_backoff_base_ms=retry_backoff_base_ms,
                   retry_max_backoff_ms=retry_max_backoff_ms, retry_on=retry_on,
                   timeout_s=timeout_s, detached=detached, when=when, validate=validate,
                   retry_until=retry_until, for_each=for_each, limit=limit)

    def decorate(f):
        td = TaskDef(f, **options)
        _registry.append(td)
        return td

    if fn is None:
        return decorate
    return decorate(fn)


def _is_coroutine_function(fn) -> bool:
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__wrapped__"):
        return bool(code.co_flags & _CO_COROUTINE)
    import inspect  # partials, wrapped and callable objects: let inspect unwrap them

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))


# --- argument checks: each names the task and says what to write instead ---

def _check_depends_on(name, depends_on) -> list[TaskDef]:
    if isinstance(depends_on, TaskDef):
        depends_on = [depends_on]
    elif isinstance(depends_on, (str, bytes)) or not _is_iterable(depends_on):
        raise TypeError(f"task '{name}': depends_on must be a list of tasks, got "
                        f"{depends_on!r}; write depends_on=[other_task]")
    deps: list[TaskDef] = []
    seen: set[TaskDef] = set()  # a list membership test would make wide fan-ins quadratic
    for position, dep in enumerate(depends_on):
        check_dependency(name, position, dep)
        if dep not in seen:
            seen.add(dep)
            deps.append(dep)
    return deps


def check_dependency(name: str, position: int, dep) -> None:
    """Raise TypeError unless ``dep`` is a TaskDef (also used when a Flow is built)."""
    if isinstance(dep, TaskDef):
        return
    where = f"task '{name}': depends_on[{position}]"
    if isinstance(dep, str):
        raise TypeError(f"{where} is the string {dep!r}; pass the task itself "
                        f"(the @task-decorated function), not its name")
    if callable(dep):
        dep_name = getattr(dep, "__name__", repr(dep))
        raise TypeError(f"{where} is the plain function '{dep_name}', not a task; "
                        f"decorate it with @task (or wrap it: task({dep_name}))")
    raise TypeError(f"{where} is {dep!r}, not a task; depends_on takes "
                    f"@task-decorated functions")


def _is_iterable(obj) -> bool:
    try:
        iter(obj)
    except TypeError:
        return False
    return True


def _check_int(name, arg, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"task '{name}': {arg} must be an int >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"task '{name}': {arg} must be >= 0, got {value}")
    return value


def _check_non_negative(name, arg, value) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"task '{name}': {arg} must be a number of milliseconds >= 0, "
                        f"got {value!r}")
    if value < 0 or value != value:
        raise ValueError(f"task '{name}': {arg} must be >= 0, got {value}")
    return value


def _check_timeout(name, value):
    if value is None:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"task '{name}': timeout_s must be a number of seconds > 0 "
                        f"(or None), got {value!r}")
    if not value > 0:
        raise ValueError(f"task '{name}': timeout_s must be > 0 seconds, got {value}; "
                         f"use None for no timeout")
    return float(value)


def _check_retry_on(name, retry_on) -> tuple:
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not isinstance(retry_on, tuple) or not all(
            isinstance(e, type) and issubclass(e, BaseException) for e in retry_on):
        raise TypeError(f"task '{name}': retry_on must be an exception class or a tuple of "
                        f"them, got {retry_on!r}")
    return retry_on


def _check_callable(name, arg, value):
    if value is not None and not callable(value):
        raise TypeError(f"task '{name}': {arg} must be a callable taking the dependencies "
                        f"as keyword arguments, got {value!r}")
    return value


def _check_for_each(name, for_each, deps) -> str | None:
    if for_each is None:
        return None
    if isinstance(for_each, TaskDef):
        for_each = for_each.name
    if not isinstance(for_each, str):
        raise TypeError(f"task '{name}': for_each must name a dependency, got {for_each!r}")
    dep_names = [d.name for d in deps]
    if for_each not in dep_names:
        have = ", ".join(repr(n) for n in dep_names) or "none"
        raise ValueError(f"task '{name}': for_each={for_each!r} is not one of its "
                         f"dependencies (depends_on has: {have}); add that task to "
                         f"depends_on or fix the name")
    return for_each
