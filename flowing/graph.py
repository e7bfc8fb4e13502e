"""Building and checking the graph of a flow.

``Graph.build(terminals, inputs)`` collects every task reachable from the
terminals through ``depends_on``, adds registered detached tasks whose
dependencies are all in the graph (to a fixed point, so detached chains are
found), checks the whole graph, and numbers the tasks in plan order: the
main layers, then the detached layers. Everything downstream works on those
integer indices.

A layer is the set of tasks whose longest dependency path has the same
length (the batches ``graphlib.TopologicalSorter`` would hand out). They are
computed in one pass over the depth-first order, which is topological and
also finds cycles; graphlib's per-node bookkeeping would cost more memory
than the whole run at 100k tasks.

What a body receives. Every dependency arrives as the keyword argument named
after it, so the body must have a parameter of that name (or ``**kwargs``).
A parameter that is no dependency is filled from the flow's inputs by name
(``Flow(inputs={...})``); ``graph.inputs[i]`` lists, in signature order, the
input names task i's body receives. A ``**kwargs`` body receives only the
inputs it names. A parameter that is both a dependency and an input is an
error (one name, two values), and so is a parameter without a default that
neither supplies. Signatures are read through bound methods, classmethods,
partials and callable objects (``inspect.signature``); plain functions are
read from their code object, which is ~50x cheaper, and every signature is
read once per distinct function, so a 100k-task graph built from one
function costs one read.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from types import FunctionType, MethodType
from typing import Any, NamedTuple, cast

from .errors import CycleError
from .tasks import TaskDef, check_dependency, registered_tasks
from .text import safe_repr

__all__ = ["Graph", "Params", "check_signature"]

_CO_VARKEYWORDS = 0x08  # inspect.CO_VARKEYWORDS, without importing inspect at start-up
_NO_INPUTS: frozenset[str] = frozenset()


class Graph:
    """The checked, indexed graph of a flow. Immutable once built.

    ``tasks[i]``       the TaskDef with index i (plan order)
    ``deps[i]``        indices of its dependencies
    ``dependents[i]``  indices of the tasks that depend on it
    ``inputs[i]``      names of the flow inputs its body receives (often ``()``)
    ``gate_inputs``    task -> (names of the flow inputs its when, its validate name);
                       only tasks whose gates name any
    ``layer[i]``       its layer number (main layers first, then detached)
    ``layers``         the indices in each layer
    ``detached[i]``    whether it is a detached side-effect
    ``main_count``     number of main tasks (they have indices < main_count)
    """

    __slots__ = ("tasks", "deps", "dependents", "inputs", "gate_inputs", "layer", "layers",
                 "detached", "main_count", "_index", "_by_name")

    tasks: list[TaskDef]
    deps: list[tuple[int, ...]]
    dependents: list[tuple[int, ...]]
    inputs: list[tuple[str, ...]]
    gate_inputs: dict[int, GateInputs]
    layer: array[int]
    layers: list[list[int]]
    detached: bytes
    main_count: int
    _index: dict[TaskDef, int] | None
    _by_name: dict[str, int] | None

    def __init__(self, tasks: list[TaskDef], deps: list[tuple[int, ...]],
                 layers: list[list[int]], main_count: int,
                 inputs: list[tuple[str, ...]] | None = None,
                 gate_inputs: dict[int, GateInputs] | None = None) -> None:
        self.tasks = tasks
        self.deps = deps
        dependents: list[list[int]] = [[] for _ in tasks]
        for i, ds in enumerate(deps):
            for d in ds:
                dependents[d].append(i)
        self.dependents = _share_equal_neighbours(tuple(js) for js in dependents)
        # one shared () per task that receives no input: a list slot, nothing more
        self.inputs = inputs if inputs is not None else [()] * len(tasks)
        self.gate_inputs = gate_inputs or {}  # only tasks whose when/validate name inputs
        self.layers = layers
        # compact arrays: at 100k tasks a list of small ints or flags costs 8 bytes a slot
        self.layer = array("I", bytes(4 * len(tasks)))
        for k, layer in enumerate(layers):
            for i in layer:
                self.layer[i] = k
        self.main_count = main_count
        self.detached = bytes(main_count) + b"\x01" * (len(tasks) - main_count)
        # name/TaskDef -> index maps, built on first lookup: a run by itself never
        # needs them, and at 100k tasks they are two of the larger structures
        self._index = None
        self._by_name = None

    @classmethod
    def build(cls, terminals: Sequence[TaskDef], inputs: Collection[str] = ()) -> Graph:
        """Collect, check and index the graph of ``terminals``.

        ``inputs``: the names of the flow's inputs (the keys of
        ``Flow(inputs={...})``); see the module docstring for who receives what.
        Raises ValueError/TypeError naming the task(s) for every bad graph.
        """
        input_names = _input_names(inputs)
        members = _reachable(terminals)  # dependencies before dependents
        _add_detached(members)           # still topological: each joins after its deps
        _check_names(members)
        for td in members:
            if not td.detached:
                for dep in td.depends_on:
                    if dep.detached:
                        raise ValueError(
                            f"task '{td.name}' depends on detached task '{dep.name}': detached "
                            f"tasks run after the main graph, so nothing can wait for them; "
                            f"make '{dep.name}' a regular task (detached=False) or make "
                            f"'{td.name}' detached too")
        received: list[tuple[str, ...]] = []
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        gated: dict[TaskDef, GateInputs] = {}
        for td in members:
            if td.when is not None or td.validate is not None:
                gate_names = check_gates(td, input_names)
                if gate_names:
                    gated[td] = gate_names
            names = check_signature(td, input_names)
            if names:
                names = shared.setdefault(names, names)  # 100k tasks, a few distinct tuples
            received.append(names)
        position = {td: k for k, td in enumerate(members)}
        # Longest-path layers over a topological order: one pass, integers only.
        # Detached tasks are layered among themselves (their main deps are done).
        depth = [0] * len(members)
        for k, td in enumerate(members):
            deepest = -1
            for dep in td.depends_on:
                if dep.detached or not td.detached:
                    d = depth[position[dep]]
                    if d > deepest:
                        deepest = d
            depth[k] = deepest + 1
        main_layers: list[list[int]] = []
        detached_layers: list[list[int]] = []
        for k, td in enumerate(members):
            layers = detached_layers if td.detached else main_layers
            while len(layers) <= depth[k]:
                layers.append([])
            layers[depth[k]].append(k)
        del depth
        tasks: list[TaskDef] = []
        plan_inputs: list[tuple[str, ...]] = []
        layers = main_layers + detached_layers
        for layer in layers:
            for n, k in enumerate(layer):
                td = members[k]
                layer[n] = len(tasks)  # renumber in place: plan order
                position[td] = len(tasks)
                tasks.append(td)
                plan_inputs.append(received[k])
        del members, received
        deps = _share_equal_neighbours(tuple(position[d] for d in td.depends_on)
                                       for td in tasks)
        main_count = sum(len(layer) for layer in main_layers)
        gate_inputs = {position[td]: names for td, names in gated.items()}
        return cls(tasks, deps, layers, main_count, plan_inputs, gate_inputs)

    def __len__(self) -> int:
        return len(self.tasks)

    def index_of(self, task_or_name: TaskDef | str) -> int:
        """The index of a task given as TaskDef or name; ValueError with a suggestion."""
        if isinstance(task_or_name, TaskDef):
            if self._index is None:
                self._index = {td: i for i, td in enumerate(self.tasks)}
            i = self._index.get(task_or_name)
            if i is not None:
                return i
            name = task_or_name.name
        elif isinstance(task_or_name, str):
            name = task_or_name
            i = self._names().get(name)
            if i is not None:
                return i
        else:
            raise TypeError(f"expected a task or a task name, got {task_or_name!r}")
        raise ValueError(f"task '{name}' is not in this flow's graph{self.suggest(name)}")

    def _names(self) -> dict[str, int]:
        if self._by_name is None:
            self._by_name = {td.name: i for i, td in enumerate(self.tasks)}
        return self._by_name

    def find(self, task_or_name: TaskDef | str) -> int | None:
        """Like ``index_of`` but None when the task is not in the graph."""
        try:
            return self.index_of(task_or_name)
        except (ValueError, TypeError):
            return None

    def suggest(self, name: str) -> str:
        import difflib  # lazy: keeps import flowing fast

        close = difflib.get_close_matches(name, list(self._names()), n=3)
        if close:
            return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        return ""

    def downstream(self, roots: Iterable[int]) -> set[int]:
        """The roots and every task that depends on them, transitively."""
        seen = set(roots)
        stack = list(seen)
        while stack:
            for j in self.dependents[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    def received_inputs(self) -> set[str]:
        """Every input name at least one task's body or gate receives (an input that is not
        in here reaches no task: most likely a typo)."""
        found: set[str] = set()
        previous: tuple[str, ...] = ()
        for names in self.inputs:
            if names is not previous:  # equal tuples are shared: skip the repeats
                found.update(names)
                previous = names
        for when_names, validate_names in self.gate_inputs.values():
            found.update(when_names, validate_names)
        return found

    def plan(self) -> list[list[str]]:
        return [[self.tasks[i].name for i in layer] for layer in self.layers]


def _share_equal_neighbours(tuples: Iterable[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """List the tuples, reusing the previous one when equal: in a wide graph
    every middle task has the same dependencies, and 100k copies add up."""
    shared: list[tuple[int, ...]] = []
    previous: tuple[int, ...] | None = None
    for t in tuples:
        if t == previous:
            t = previous
        shared.append(t)
        previous = t
    return shared


def _input_names(inputs: Collection[str]) -> frozenset[str]:
    if not inputs:
        return _NO_INPUTS
    if isinstance(inputs, (str, bytes)):
        raise TypeError(f"Flow(inputs=...) must map parameter names to values, e.g. "
                        f"inputs={{'case_dir': path}}, got the string {inputs!r}")
    names = []
    for name in inputs:
        if not isinstance(name, str):
            raise TypeError(f"Flow(inputs=...): every key must be a parameter name (a str), "
                            f"got {_short(name)}")
        names.append(str.__str__(name))
    return frozenset(names)


def _reachable(terminals: Sequence[TaskDef]) -> list[TaskDef]:
    """Every task reachable from the terminals, each once, dependencies first
    and otherwise in declaration order (an iterative depth-first post-order)."""
    if not terminals:
        raise ValueError("Flow() needs at least one terminal task: Flow(last_task) runs "
                         "last_task and everything it depends on")
    for position, t in enumerate(terminals):
        if not isinstance(t, TaskDef):
            what = (f"the plain function '{t.__name__}'; decorate it with @task"
                    if callable(t) and isinstance(getattr(t, "__name__", None), str)
                    else _short(t))
            raise TypeError(f"Flow() terminal #{position + 1} is {what}; terminals must be "
                            f"@task-decorated functions")
    # state[td]: -1 while td is on the stack, then its position in the result.
    # Two flat stacks (task, next dependency to look at) keep a 100k-long chain cheap.
    state: dict[TaskDef, int] = {}
    result: list[TaskDef] = []
    for terminal in terminals:
        if terminal in state:
            continue
        state[terminal] = -1
        tasks, positions = [terminal], [0]
        while tasks:
            td = tasks[-1]
            deps = td.depends_on
            position = positions[-1]
            found: TaskDef | None = None
            while position < len(deps):
                # depends_on is a public list: re-check items added after decoration
                dep = check_dependency(td.name, position, deps[position])
                position += 1
                seen = state.get(dep)
                if seen is None:
                    found = dep
                    break
                if seen == -1:  # on the stack: td depends on one of its dependents
                    _raise_cycle(tasks, dep)
            if found is not None:
                positions[-1] = position
                state[found] = -1
                tasks.append(found)
                positions.append(0)
            else:
                tasks.pop()
                positions.pop()
                state[td] = len(result)
                result.append(td)
    return result


def _add_detached(members: list[TaskDef]) -> None:
    """Add registered detached tasks whose dependencies are all members (fixed point)."""
    inside = set(members)
    candidates = [td for td in registered_tasks() if td.detached and td not in inside]
    grew = True
    while grew and candidates:
        grew = False
        left = []
        for td in candidates:
            if td.depends_on and all(d in inside for d in td.depends_on):
                members.append(td)
                inside.add(td)
                grew = True
            else:
                left.append(td)
        candidates = left


def _check_names(members: list[TaskDef]) -> None:
    by_name: dict[str, TaskDef] = {}
    for td in members:
        other = by_name.setdefault(td.name, td)
        if other is not td:
            raise ValueError(
                f"two different tasks are named '{td.name}' in one graph: "
                f"{_describe(other.fn)} and {_describe(td.fn)}; give one of them another "
                f"name with @task(name='...')")


def _describe(fn: object) -> str:
    """Where a body comes from, for messages: module.qualname (file:line)."""
    try:
        target: Any = fn
        prefix = ""
        for _ in range(100):
            if not isinstance(target, functools.partial):
                break
            prefix = "partial of "
            target = target.func
        if isinstance(target, MethodType):
            target = target.__func__
        qualname = getattr(target, "__qualname__", None)
        if not isinstance(qualname, str):  # a callable object
            target = type(target)
            qualname = f"{target.__qualname__} object"
        module = getattr(target, "__module__", None)
        code = getattr(target, "__code__", None)
        where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
        return f"{prefix}{module + '.' if isinstance(module, str) else ''}{qualname}{where}"
    except Exception:
        return _short(fn)


def _short(value: object) -> str:
    return safe_repr(value, 80)



def _raise_cycle(path: list[TaskDef], back_to: TaskDef) -> None:
    """``path`` is the depth-first stack; its last task depends on ``back_to``."""
    cycle = [td.name for td in path[path.index(back_to):] + [back_to]]
    names = " -> ".join(cycle)
    raise CycleError(f"the tasks form a cycle: {names} (each depends on the next); "
                     f"remove one of these dependencies", cycle)


# --- signatures ---------------------------------------------------------------

class Params(NamedTuple):
    """What a body's signature accepts, as far as keyword calls are concerned."""

    names: tuple[str, ...]            # parameters that can be passed by keyword, in order
    accepted: frozenset[str]          # the same, for membership tests
    required: tuple[str, ...]         # of those, the ones without a default
    positional_only: tuple[str, ...]  # positional-only parameters without a default
    var_keyword: bool                 # has **kwargs


GateInputs = tuple[tuple[str, ...], tuple[str, ...]]


def check_gates(td: TaskDef, inputs: Collection[str] = _NO_INPUTS) -> GateInputs | None:
    """``when``/``validate`` are called with the dependencies by name, plus the flow
    inputs each names: return (when's, validate's) input names, or None if neither
    names any. A required gate parameter that is neither is a ValueError naming the
    task, the gate and the parameter."""
    dep_names = {d.name for d in td.depends_on}
    got: list[tuple[str, ...]] = []
    for label, gate in (("when", td.when), ("validate", td.validate)):
        params = None if gate is None else _parameters(gate)
        if params is None:
            got.append(())
            continue
        if not params.var_keyword:
            extra = [d for d in td.depends_on if d.name not in params.accepted]
            if extra:
                d = extra[0].name
                raise ValueError(
                    f"task '{td.name}': its {label}= gate is called with every dependency as a "
                    f"keyword argument, but has no parameter '{d}'; add one, or accept the rest "
                    f"with **_ (e.g. {label}=lambda {', '.join(sorted(dep_names))}: ...)")
        got.append(tuple(p for p in params.names if p in inputs and p not in dep_names))
        missing = [p for p in params.required if p not in dep_names and p not in inputs]
        if missing:
            p = missing[0]
            raise ValueError(
                f"task '{td.name}': its {label}= gate has a parameter '{p}' that is neither a "
                f"dependency nor a flow input; add a task named '{p}' to depends_on=[...], pass "
                f"Flow(..., inputs={{'{p}': ...}}), or give it a default")
    return (got[0], got[1]) if got[0] or got[1] else None


def check_signature(td: TaskDef, inputs: Collection[str] = _NO_INPUTS) -> tuple[str, ...]:
    """Check that ``td``'s body accepts every dependency and that each of its
    parameters is supplied; return the input names (of ``inputs``) it receives.

    A body whose signature cannot be read (some builtins) is trusted: ``()``.
    """
    params = _parameters(td.fn)
    if params is None:
        return ()
    deps = td.depends_on
    if not params.var_keyword:
        accepted = params.accepted
        for dep in deps:
            if dep.name not in accepted:
                if dep.name in params.positional_only:
                    raise ValueError(
                        f"task '{td.name}' depends on '{dep.name}' but its parameter "
                        f"'{dep.name}' is positional-only (before '/'), and dependency values "
                        f"arrive as keyword arguments; remove the '/'")
                raise ValueError(
                    f"task '{td.name}' depends on '{dep.name}' but its function has no "
                    f"parameter '{dep.name}'; add a parameter named '{dep.name}' (dependency "
                    f"values arrive as keyword arguments) or accept **kwargs")
    if params.positional_only:
        listed = ", ".join(repr(p) for p in params.positional_only)
        raise ValueError(
            f"task '{td.name}': parameter(s) {listed} are positional-only (before '/') and "
            f"have no default, but dependencies and inputs are passed by keyword; remove "
            f"the '/' or give them defaults")
    if not params.required and not inputs:
        return ()  # the common fast path: nothing to supply
    dep_names = {d.name for d in deps}
    received: tuple[str, ...] = ()
    if inputs:
        clash = [p for p in params.names if p in inputs and p in dep_names]
        if clash:
            p = clash[0]
            raise ValueError(
                f"task '{td.name}': parameter '{p}' is both a dependency (depends_on has a "
                f"task named '{p}') and a flow input (inputs={{'{p}': ...}}), so it would get "
                f"two values; rename the input, or rename that task with @task(name=...) "
                f"and its parameter")
        received = tuple(p for p in params.names if p in inputs and p not in dep_names)
    missing = [p for p in params.required if p not in dep_names and p not in received]
    if missing:
        raise ValueError(_missing_message(td, params, missing, dep_names, inputs))
    return received


def _missing_message(td: TaskDef, params: Params, missing: list[str],
                     dep_names: set[str], inputs: Collection[str]) -> str:
    p = missing[0]
    what = (f"parameter '{p}'" if len(missing) == 1
            else "parameters " + ", ".join(repr(m) for m in missing))
    deps = ", ".join(sorted(dep_names)) or "nothing"
    given = ", ".join(repr(n) for n in sorted(inputs)) or "none"
    ways = (f"add a task named '{p}' to depends_on=[...], pass "
            f"Flow(..., inputs={{'{p}': ...}}), or give it a default")
    if p == params.names[0] and p in ("self", "cls"):
        method = getattr(td.fn, "__name__", "method")
        return (f"task '{td.name}': its first parameter '{p}' is supplied by nothing: this "
                f"looks like a method decorated with @task in its class body; declare the "
                f"task on the bound method instead, e.g. task(obj.{method}) or "
                f"task(MyClass.{method}) for a classmethod (if '{p}' really is a parameter: "
                f"{ways})")
    return (f"task '{td.name}': {what} without a default is supplied by neither a "
            f"dependency (it depends on: {deps}) nor a flow input (inputs given: "
            f"{given}); {ways}")


_MISSING = object()
_signature_cache: dict[Hashable, Params | None] = {}


def _parameters(fn: Callable[..., Any]) -> Params | None:
    """The body's Params (None if it cannot be read), cached per distinct signature.

    Plain functions are keyed by code object and defaults, bound methods by
    their function, partials by their function and the names they bind, so a
    100k-task graph built from one function reads one signature.
    """
    key = _cache_key(fn)
    if key is None:
        return _from_inspect(fn)
    cached = _signature_cache.get(key, _MISSING)
    if cached is _MISSING:
        cached = _from_code(fn) if type(fn) is FunctionType else _from_inspect(fn)
        _signature_cache[key] = cached
    return cast("Params | None", cached)


def _function_key(fn: Any) -> Hashable | None:
    """(code, number of defaults, keyword-only defaults) for a plain function
    whose signature is its code's; None for wrappers that declare another."""
    if hasattr(fn, "__wrapped__") or hasattr(fn, "__signature__"):
        return None
    return (fn.__code__, len(fn.__defaults__ or ()), tuple(fn.__kwdefaults__ or ()))


def _cache_key(fn: Any) -> Hashable | None:
    kind = type(fn)
    if kind is FunctionType:
        return _function_key(fn)
    if kind is MethodType:
        inner = fn.__func__
        if type(inner) is FunctionType:
            key = _function_key(inner)
            return None if key is None else ("bound", key)
        return None
    if kind is functools.partial and not fn.__dict__:  # partials flatten: no deep nesting
        key = _cache_key(fn.func)
        return None if key is None else ("partial", key, len(fn.args), tuple(fn.keywords))
    return None


def _from_code(fn: Any) -> Params:
    """Params of a plain function, read from its code object."""
    code = fn.__code__
    defaults = fn.__defaults__ or ()
    kwdefaults = fn.__kwdefaults__ or {}
    positional = code.co_varnames[:code.co_argcount]
    kwonly = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    first_default = len(positional) - len(defaults)
    posonly = code.co_posonlyargcount
    # a positional-only parameter can't receive a keyword, so it is not "accepted"
    names = tuple(positional[posonly:]) + tuple(kwonly)
    required = tuple(positional[posonly:first_default]) + tuple(
        p for p in kwonly if p not in kwdefaults)
    positional_only = tuple(positional[:min(posonly, first_default)])
    return Params(names, frozenset(names), required, positional_only,
                  bool(code.co_flags & _CO_VARKEYWORDS))


def _from_inspect(fn: Callable[..., Any]) -> Params | None:
    """Params of any other callable (bound methods drop self, partials their
    bound arguments, callable objects give their __call__'s); None if unreadable."""
    import inspect  # lazy: keeps import flowing fast

    try:
        sig = inspect.signature(fn)
    except Exception:  # not introspectable (some builtins), or a hostile __signature__
        return None
    names: list[str] = []
    required: list[str] = []
    positional_only: list[str] = []
    var_keyword = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
        elif p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            positional_only.append(p.name)
    return Params(tuple(names), frozenset(names), tuple(required), tuple(positional_only),
                  var_keyword)

