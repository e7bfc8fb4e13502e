"""Declaring tasks: the ``@task`` decorator, ``TaskDef`` and the registry.

Every argument is checked when the decorator runs, so a typo fails on the
line that made it, naming the task and the argument and saying what to
write instead. The graph-wide checks (cycles, duplicate names, parameters
nothing supplies) happen when a ``Flow`` is built (see graph.py).

Bodies. A task's body may be any callable: a function, a lambda, an
``async def``, a bound method (``task(client.fetch)``), a classmethod
(``task(Client.create)``), a ``staticmethod`` object (stored as its
function), a ``functools.partial``, an object with a ``__call__`` method
(sync or ``async``), or another TaskDef (its function is reused). A raw
``classmethod`` object has no class to bind to and is refused: declare the
task after the class, ``task(Client.create)``. ``TaskDef.is_async`` sees
through partials, bound methods and callable objects.

Default names. ``name=`` defaults to the body's ``__name__`` (for a bound
method or classmethod, the method's name); for a ``functools.partial``, the
name of the function it wraps; for a callable object without ``__name__``,
its class name in snake_case (``HttpFetcher()`` is named ``http_fetcher``).
A lambda has no usable name: pass ``name=``.

Numbers. ``timeout_s``, ``retry_backoff_base_ms``, ``retry_max_backoff_ms``
and ``cache_ttl_s`` must be finite: NaN or infinity is refused (write None
for "no timeout" or "never expires"). Finite values too large for the
platform's timers are clamped: ``timeout_s`` to ``threading.TIMEOUT_MAX``
seconds (about 292 years on 64-bit platforms), the backoffs to the same
bound in milliseconds. They are stored as floats.

Tolerated item failures. ``allow_failed_items`` (only with ``for_each``) is an
int >= 0 (how many items may fail) or a float in (0, 1) (a share of the
items, rounded down: 0.1 of 45 items allows 4); ``allowed_failures(n)``
gives the count for n items.

Pickling. A TaskDef pickles by reference when the attribute of its
function's module at the function's ``__qualname__`` is this TaskDef (a
``@task`` at module level, ``__main__`` included, or in a class body): the
receiving process imports the module and finds the same task, as pickle does
for functions. Any other TaskDef (built by ``task(fn, name=...)`` in a
loop, or around a lambda, a partial or a bound method) pickles by value:
its function and its options, so the function must be picklable itself. An
unpickled by-value TaskDef is a new object and is not registered.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
import threading
from collections.abc import Callable, Iterable
from types import FunctionType, MethodType
from typing import Any, cast, overload

from .limits import Limit
from .retry import RetryPolicy
from .text import safe_repr

__all__ = ["TaskDef", "task", "clear_registry", "registered_tasks", "check_dependency"]

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect at start-up
_MAX_UNWRAP = 100     # partials of partials...: bounded, so a self-referencing chain ends
_TIMER_MAX_S = threading.TIMEOUT_MAX
_TIMER_MAX_MS = threading.TIMEOUT_MAX * 1000.0
_DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (Exception,)

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

    ``version`` (a non-empty string or None) stands in the step key for the
    fingerprint of the body and its gates; ``cache=False`` marks a task that
    reads the outside world (never replayed from a journal);
    ``cache_ttl_s`` (seconds > 0, or None) is the age beyond which a
    journaled result is not replayed (ignored when ``cache=False``).
    ``local=True``: the body always runs in the flow's own process, whatever
    the Flow's ``executor=`` (writing outputs, reading local files).
    """

    __slots__ = ("name", "fn", "depends_on", "retry", "retry_backoff_base_ms",
                 "retry_max_backoff_ms", "retry_on", "timeout_s", "detached", "when",
                 "validate", "retry_until", "for_each", "limit", "version", "cache",
                 "cache_ttl_s", "local", "allow_failed_items", "is_async", "__weakref__")

    name: str
    fn: Callable[..., Any]
    depends_on: list[TaskDef]
    retry: int
    retry_backoff_base_ms: float
    retry_max_backoff_ms: float
    retry_on: tuple[type[BaseException], ...]
    timeout_s: float | None
    detached: bool
    when: Callable[..., Any] | None
    validate: Callable[..., Any] | None
    retry_until: Callable[[Any], Any] | None
    for_each: str | None
    limit: Limit | None
    version: str | None
    cache: bool
    cache_ttl_s: float | None
    local: bool
    allow_failed_items: int | float | None
    is_async: bool

    def __init__(self, fn: Callable[..., Any], *,
                 depends_on: TaskDef | Iterable[TaskDef] = (),
                 name: str | None = None,
                 retry: int = 0,
                 retry_backoff_base_ms: float = 1000,
                 retry_max_backoff_ms: float = 30_000,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...] = _DEFAULT_RETRY_ON,
                 timeout_s: float | None = None,
                 detached: bool = False,
                 when: Callable[..., Any] | None = None,
                 validate: Callable[..., Any] | None = None,
                 retry_until: Callable[[Any], Any] | None = None,
                 for_each: str | TaskDef | None = None,
                 limit: Limit | None = None,
                 version: str | None = None,
                 cache: bool = True,
                 cache_ttl_s: float | None = None,
                 local: bool = False,
                 allow_failed_items: int | float | None = None) -> None:
        fn = _check_body(fn)
        name = _check_name(fn, name)
        self.name = name
        self.fn = fn
        self.depends_on = _check_depends_on(name, depends_on)
        self.retry = _check_int(name, "retry", retry)
        self.retry_backoff_base_ms = _check_backoff(name, "retry_backoff_base_ms",
                                                    retry_backoff_base_ms)
        self.retry_max_backoff_ms = _check_backoff(name, "retry_max_backoff_ms",
                                                   retry_max_backoff_ms)
        self.retry_on = _check_retry_on(name, retry_on)
        self.timeout_s = _check_timeout(name, timeout_s)
        self.detached = _check_bool(name, "detached", detached)
        self.when = _check_callable(name, "when", when)
        self.validate = _check_callable(name, "validate", validate)
        self.retry_until = _check_callable(name, "retry_until", retry_until)
        self.for_each = _check_for_each(name, for_each, self.depends_on)
        if limit is not None and not isinstance(limit, Limit):
            raise TypeError(f"task '{name}': limit must be a flowing.Limit, got {_short(limit)}; "
                            f"write limit=Limit(max_concurrency=..., rate=...)")
        self.limit = limit
        self.version = _check_version(name, version)
        self.cache = _check_bool(name, "cache", cache)
        self.cache_ttl_s = _check_ttl(name, cache_ttl_s)
        self.local = _check_bool(name, "local", local)
        self.allow_failed_items = _check_allowance(name, allow_failed_items, self.for_each)
        self.is_async = _is_async(fn)

    def allowed_failures(self, items: int) -> int | None:
        """How many of ``items`` items may fail with the task still SUCCEEDED
        (``allow_failed_items``: a count, or a share rounded down), or None."""
        allow = self.allow_failed_items
        if allow is None:
            return None
        if isinstance(allow, int):
            return allow
        return int(math.floor(allow * items + 1e-9))

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry settings as one record (``flowing.retry.RetryPolicy``), made
        from the fields above when asked: they stay the one place that holds them."""
        return RetryPolicy(self.retry, self.retry_backoff_base_ms, self.retry_max_backoff_ms,
                           self.retry_on)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        deps = ", ".join(d.name for d in self.depends_on)
        return f"<task {self.name}" + (f" <- [{deps}]>" if deps else ">")

    def __reduce__(self) -> tuple[Any, ...]:
        where = _module_attribute(self.fn)
        if where is not None and where[2] is self:
            return (_task_by_reference, (where[0], where[1]))
        state = {slot: getattr(self, slot) for slot in _STATE}
        if where is not None and isinstance(where[2], TaskDef) and where[2].fn is self.fn:
            # the function's module name now holds another task made from it (``@task def
            # f`` then ``task(f, name="g")``): pickle would find that task, not the
            # function, so ship the function as "the body of that task" instead
            state["fn"] = where[2]
            return (_task_by_value, (state, True))
        return (_task_by_value, (state, False))


_STATE = tuple(s for s in TaskDef.__slots__ if s != "__weakref__")


def _task_by_reference(module: str, qualname: str) -> TaskDef:
    """Unpickle a module-level task: import its module and take the attribute."""
    import importlib  # lazy: keeps import flowing fast

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, TaskDef):
        import pickle  # lazy: keeps import flowing fast

        raise pickle.UnpicklingError(
            f"{module}.{qualname} was a flowing task when it was pickled but is "
            f"{type(obj).__name__} here; run the same code on both sides")
    return obj


def _task_by_value(state: dict[str, Any], fn_is_task: bool) -> TaskDef:
    """Unpickle a TaskDef from its function and options (not registered)."""
    td = TaskDef.__new__(TaskDef)
    for slot, value in state.items():
        setattr(td, slot, value)
    if fn_is_task:
        td.fn = state["fn"].fn
    return td


def _module_attribute(fn: object) -> tuple[str, str, object] | None:
    """(module, qualname, the object found there) for a function reachable by
    name from an already imported module; None otherwise. Never raises."""
    try:
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None)
        if type(module) is not str or type(qualname) is not str or "<" in qualname:
            return None
        obj: Any = sys.modules.get(module)
        if obj is None:
            return None
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return module, qualname, obj
    except Exception:  # a module __getattr__ or a property that raises: not by reference
        return None


_Body = Callable[..., Any]


@overload
def task(fn: _Body, *,
         depends_on: TaskDef | Iterable[TaskDef] = (),
         name: str | None = None,
         retry: int = 0,
         retry_backoff_base_ms: float = 1000,
         retry_max_backoff_ms: float = 30_000,
         retry_on: type[BaseException] | tuple[type[BaseException], ...] = _DEFAULT_RETRY_ON,
         timeout_s: float | None = None,
         detached: bool = False,
         when: Callable[..., Any] | None = None,
         validate: Callable[..., Any] | None = None,
         retry_until: Callable[[Any], Any] | None = None,
         for_each: str | TaskDef | None = None,
         limit: Limit | None = None,
         version: str | None = None,
         cache: bool = True,
         cache_ttl_s: float | None = None,
         local: bool = False,
         allow_failed_items: int | float | None = None) -> TaskDef: ...


@overload
def task(fn: None = None, *,
         depends_on: TaskDef | Iterable[TaskDef] = (),
         name: str | None = None,
         retry: int = 0,
         retry_backoff_base_ms: float = 1000,
         retry_max_backoff_ms: float = 30_000,
         retry_on: type[BaseException] | tuple[type[BaseException], ...] = _DEFAULT_RETRY_ON,
         timeout_s: float | None = None,
         detached: bool = False,
         when: Callable[..., Any] | None = None,
         validate: Callable[..., Any] | None = None,
         retry_until: Callable[[Any], Any] | None = None,
         for_each: str | TaskDef | None = None,
         limit: Limit | None = None,
         version: str | None = None,
         cache: bool = True,
         cache_ttl_s: float | None = None,
         local: bool = False,
         allow_failed_items: int | float | None = None) -> Callable[[_Body], TaskDef]: ...


def task(fn: _Body | None = None, *,
         depends_on: TaskDef | Iterable[TaskDef] = (),
         name: str | None = None,
         retry: int = 0,
         retry_backoff_base_ms: float = 1000,
         retry_max_backoff_ms: float = 30_000,
         retry_on: type[BaseException] | tuple[type[BaseException], ...] = _DEFAULT_RETRY_ON,
         timeout_s: float | None = None,
         detached: bool = False,
         when: Callable[..., Any] | None = None,
         validate: Callable[..., Any] | None = None,
         retry_until: Callable[[Any], Any] | None = None,
         for_each: str | TaskDef | None = None,
         limit: Limit | None = None,
         version: str | None = None,
         cache: bool = True,
         cache_ttl_s: float | None = None,
         local: bool = False,
         allow_failed_items: int | float | None = None) -> TaskDef | Callable[[_Body], TaskDef]:
    """Declare a step. Use as ``@task``, ``@task(...)`` or ``task(fn, name=...)``.

    Each dependency's value is passed to the body as the keyword argument
    named after that dependency; a body parameter that is no dependency is
    filled from ``Flow(inputs={...})``. See the module docstring for the
    callables accepted as bodies, default names, and the numeric limits.
    """

    def decorate(f: _Body) -> TaskDef:
        td = TaskDef(f, depends_on=depends_on, name=name, retry=retry,
                     retry_backoff_base_ms=retry_backoff_base_ms,
                     retry_max_backoff_ms=retry_max_backoff_ms, retry_on=retry_on,
                     timeout_s=timeout_s, detached=detached, when=when, validate=validate,
                     retry_until=retry_until, for_each=for_each, limit=limit,
                     version=version, cache=cache, cache_ttl_s=cache_ttl_s, local=local,
                     allow_failed_items=allow_failed_items)
        _registry.append(td)
        return td

    if fn is None:
        return decorate
    return decorate(fn)


# --- the body: what it is, what it is called, whether it is a coroutine function ---

def _check_body(fn: object) -> Callable[..., Any]:
    if isinstance(fn, TaskDef):
        return fn.fn  # task(other_task, name="copy"): the same body, its own options
    if isinstance(fn, staticmethod):
        fn = fn.__func__
    if isinstance(fn, classmethod):
        raise TypeError(f"@task got the classmethod object {_short(fn)}, which has no class "
                        f"to bind to yet; declare the task after the class body: "
                        f"task(MyClass.method)")
    if not callable(fn):
        raise TypeError(f"@task needs a function (or another callable), got {_short(fn)}")
    return fn


def _check_name(fn: Callable[..., Any], name: object) -> str:
    if name is None:
        default = _default_name(fn)
        if default is None:
            raise ValueError(f"task {_short(fn)} has no usable name (a lambda, or a callable "
                             f"without __name__); pass one: task(fn, name='...')")
        return default
    if not isinstance(name, str) or not name:
        raise TypeError(f"task name must be a non-empty string, got {_short(name)}")
    return str.__str__(name)  # a plain str even for a str subclass


def _default_name(fn: object) -> str | None:
    """See the module docstring: __name__, through partials, else the class name."""
    try:
        target = fn
        for _ in range(_MAX_UNWRAP):
            if isinstance(target, TaskDef):
                return target.name
            if not isinstance(target, functools.partial):
                break
            target = target.func
        name = getattr(target, "__name__", None)
        if name is None and not isinstance(target, type):
            name = _snake_case(type(target).__name__)
    except Exception:  # a hostile __getattr__: no default name
        return None
    if type(name) is not str or not name or name == "<lambda>":
        return None
    return name


def _snake_case(name: str) -> str:
    import re  # lazy: keeps import flowing fast

    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _is_async(fn: object) -> bool:
    """Is calling ``fn`` going to return a coroutine? Sees through bound methods,
    partials and callable objects; plain functions are read from their code flags."""
    f: Any = fn
    for _ in range(_MAX_UNWRAP):
        if type(f) is FunctionType:
            if f.__code__.co_flags & _CO_COROUTINE:
                return True
            if getattr(f, "_is_coroutine_marker", None) is None:
                return False
            break  # marked with inspect.markcoroutinefunction (3.12+): ask inspect
        if isinstance(f, TaskDef):
            f = f.fn
        elif isinstance(f, (MethodType, staticmethod, classmethod)):
            f = f.__func__
        elif isinstance(f, functools.partial):
            f = f.func
        elif isinstance(f, type):
            return False  # calling a class makes an instance
        else:
            call = type(f).__call__ if callable(f) else None
            if type(call) is not FunctionType:
                break
            f = call  # a callable object: its class's __call__
    import inspect  # lazy: keeps import flowing fast

    try:
        return inspect.iscoroutinefunction(f)
    except Exception:
        return False


def _short(value: object) -> str:
    return safe_repr(value, 80)


# --- argument checks: each names the task and says what to write instead ---

def _check_depends_on(name: str, depends_on: object) -> list[TaskDef]:
    if isinstance(depends_on, TaskDef):
        return [depends_on]
    if isinstance(depends_on, (str, bytes)) or not _is_iterable(depends_on):
        raise TypeError(f"task '{name}': depends_on must be a list of tasks, got "
                        f"{_short(depends_on)}; write depends_on=[other_task]")
    deps: list[TaskDef] = []
    seen: set[TaskDef] = set()  # a list membership test would make wide fan-ins quadratic
    for position, dep in enumerate(cast(Iterable[object], depends_on)):
        dep = check_dependency(name, position, dep)
        if dep not in seen:
            seen.add(dep)
            deps.append(dep)
    return deps


def check_dependency(name: str, position: int, dep: object) -> TaskDef:
    """``dep`` itself if it is a TaskDef, else TypeError (also used when a Flow is built)."""
    if isinstance(dep, TaskDef):
        return dep
    where = f"task '{name}': depends_on[{position}]"
    if isinstance(dep, str):
        raise TypeError(f"{where} is the string {dep!r}; pass the task itself "
                        f"(the @task-decorated function), not its name")
    if callable(dep):
        dep_name = getattr(dep, "__name__", None)
        dep_name = dep_name if isinstance(dep_name, str) else _short(dep)
        raise TypeError(f"{where} is the plain function '{dep_name}', not a task; "
                        f"decorate it with @task (or wrap it: task({dep_name}))")
    raise TypeError(f"{where} is {_short(dep)}, not a task; depends_on takes "
                    f"@task-decorated functions")


def _is_iterable(obj: object) -> bool:
    try:
        iter(cast(Any, obj))  # probing is the point
    except Exception:
        return False
    return True


def _check_int(name: str, arg: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"task '{name}': {arg} must be an int >= 0, got {_short(value)}")
    if value < 0:
        raise ValueError(f"task '{name}': {arg} must be >= 0, got {value}")
    return value


def _check_bool(name: str, arg: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"task '{name}': {arg} must be True or False, got {_short(value)}")
    return value


def _as_float(name: str, arg: str, value: object, expected: str) -> float:
    """A real number as a float; a finite number too large for a float becomes the
    largest float (clamped by the caller), NaN and infinities pass through."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"task '{name}': {arg} must be {expected}, got {_short(value)}")
    try:
        return float(value)
    except OverflowError:  # e.g. 10**400: finite, just huge
        try:
            positive = bool(cast(Any, value) > 0)
        except Exception:
            positive = True
        return sys.float_info.max if positive else -sys.float_info.max
    except Exception as e:  # a Real whose __float__ raises
        raise TypeError(f"task '{name}': {arg} must be {expected}, got {_short(value)} "
                        f"({type(e).__name__} converting it to a float)") from None


def _check_backoff(name: str, arg: str, value: object) -> float:
    if (type(value) is int or type(value) is float) and 0 <= value <= _TIMER_MAX_MS:
        return float(value)  # the common case, cheaply (NaN fails the comparison)
    f = _as_float(name, arg, value, "a number of milliseconds >= 0")
    if math.isnan(f):
        raise ValueError(f"task '{name}': {arg} is NaN; write a number of milliseconds "
                         f">= 0, e.g. {arg}=1000 for one second")
    if math.isinf(f):
        raise ValueError(f"task '{name}': {arg}={f} is not a finite number of milliseconds; "
                         f"write a finite number >= 0 (values beyond the platform's longest "
                         f"timer, {_TIMER_MAX_MS:.0f} ms, are clamped to it)")
    if f < 0:
        raise ValueError(f"task '{name}': {arg} must be >= 0 milliseconds, got {value}")
    return min(f, _TIMER_MAX_MS)


def _check_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    f = _as_float(name, "timeout_s", value, "a number of seconds > 0 (or None)")
    if math.isnan(f):
        raise ValueError(f"task '{name}': timeout_s is NaN; write a number of seconds > 0, "
                         f"or timeout_s=None for no timeout")
    if math.isinf(f) and f > 0:
        raise ValueError(f"task '{name}': timeout_s={f} is not a finite number of seconds; "
                         f"write timeout_s=None for no timeout (finite values beyond the "
                         f"platform's longest timer, {_TIMER_MAX_S:.0f} s, are clamped to it)")
    if not f > 0:
        raise ValueError(f"task '{name}': timeout_s must be > 0 seconds, got {value}; "
                         f"use None for no timeout")
    return min(f, _TIMER_MAX_S)


def _check_ttl(name: str, value: object) -> float | None:
    if value is None:
        return None
    f = _as_float(name, "cache_ttl_s", value, "a number of seconds > 0 (or None)")
    if math.isnan(f):
        raise ValueError(f"task '{name}': cache_ttl_s is NaN; write a number of seconds > 0, "
                         f"or cache_ttl_s=None for results that never expire")
    if math.isinf(f) and f > 0:
        raise ValueError(f"task '{name}': cache_ttl_s={f} is not a finite number of seconds; "
                         f"write cache_ttl_s=None for results that never expire")
    if not f > 0:
        raise ValueError(f"task '{name}': cache_ttl_s must be > 0 seconds, got {value}; "
                         f"use None for results that never expire, or cache=False for a "
                         f"task that must run every time")
    return f


def _check_version(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"task '{name}': version must be a string such as '2' or "
                        f"'2024-05-01', got {_short(value)}; write version='...' "
                        f"(or leave it out to key the task by its code)")
    if not value.strip():
        raise ValueError(f"task '{name}': version must be a non-blank string, got "
                         f"{value!r}; write version='1' (bump it when results go stale), "
                         f"or leave it out to key the task by its code")
    return str.__str__(value)  # a plain str even for a str subclass


def _check_retry_on(name: str, retry_on: object) -> tuple[type[BaseException], ...]:
    if retry_on is _DEFAULT_RETRY_ON:
        return _DEFAULT_RETRY_ON
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not isinstance(retry_on, tuple) or not all(
            isinstance(e, type) and issubclass(e, BaseException) for e in retry_on):
        raise TypeError(f"task '{name}': retry_on must be an exception class or a tuple of "
                        f"them, got {_short(retry_on)}")
    return retry_on


def _check_callable(name: str, arg: str, value: object) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise TypeError(f"task '{name}': {arg} must be a callable taking the dependencies "
                        f"as keyword arguments, got {_short(value)}")
    return value


def _check_for_each(name: str, for_each: object, deps: list[TaskDef]) -> str | None:
    if for_each is None:
        return None
    if isinstance(for_each, TaskDef):
        for_each = for_each.name
    if not isinstance(for_each, str):
        raise TypeError(f"task '{name}': for_each must name a dependency, got "
                        f"{_short(for_each)}")
    for_each = str.__str__(for_each)  # a plain str even for a str subclass
    dep_names = [d.name for d in deps]
    if for_each not in dep_names:
        have = ", ".join(repr(n) for n in dep_names) or "none"
        raise ValueError(f"task '{name}': for_each={for_each!r} is not one of its "
                         f"dependencies (depends_on has: {have}); add that task to "
                         f"depends_on or fix the name")
    return for_each


def _check_allowance(name: str, allow: object, for_each: str | None) -> int | float | None:
    """``allow_failed_items``: None, an int >= 0 (a count) or a float in (0, 1) (a share),
    and only on a ``for_each`` task."""
    if allow is None:
        return None
    if isinstance(allow, bool) or not isinstance(allow, numbers.Real):
        raise TypeError(f"task '{name}': allow_failed_items must be an int >= 0 (how many items "
                        f"may fail) or a float in (0, 1) (what share may fail), got "
                        f"{_short(allow)}")
    if for_each is None:
        raise ValueError(f"task '{name}': allow_failed_items is for for_each tasks (it says how "
                         f"many items may fail); add for_each='<dependency>' or remove it")
    if isinstance(allow, numbers.Integral):  # an int, numpy's ints too
        if allow < 0:
            raise ValueError(f"task '{name}': allow_failed_items={allow} must be >= 0")
        return int(allow)
    allow = _as_float(name, "allow_failed_items", allow, "an int >= 0 or a float in (0, 1)")
    if not 0.0 < allow < 1.0:  # NaN fails too
        raise ValueError(f"task '{name}': allow_failed_items={allow!r} as a float is a share of "
                         f"the items and must be in (0, 1); write an int for a count")
    return float(allow)
