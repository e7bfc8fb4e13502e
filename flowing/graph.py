"""Building and checking the graph of a flow.

``Graph.build(terminals)`` collects every task reachable from the terminals
through ``depends_on``, adds registered detached tasks whose dependencies are
all in the graph (to a fixed point, so detached chains are found), checks the
whole graph, and numbers the tasks in plan order: the main layers, then the
detached layers. Everything downstream works on those integer indices.

A layer is the set of tasks whose longest dependency path has the same
length, as ``graphlib.TopologicalSorter`` hands them out batch by batch.
"""

from __future__ import annotations

import graphlib

from .tasks import TaskDef, check_dependency, registered_tasks

_CO_VARKEYWORDS = 0x08  # inspect.CO_VARKEYWORDS, without importing inspect at start-up


class Graph:
    """The checked, indexed graph of a flow. Immutable once built.

    ``tasks[i]``       the TaskDef with index i (plan order)
    ``deps[i]``        indices of its dependencies
    ``dependents[i]``  indices of the tasks that depend on it
    ``layer[i]``       its layer number (main layers first, then detached)
    ``layers``         the indices in each layer
    ``detached[i]``    whether it is a detached side-effect
    ``main_count``     number of main tasks (they have indices < main_count)
    """

    __slots__ = ("tasks", "deps", "dependents", "layer", "layers", "detached",
                 "main_count", "_index", "_by_name")

    def __init__(self, ordered: list[TaskDef], layers: list[list[TaskDef]], main_count: int):
        self.tasks = ordered
        self._index = {td: i for i, td in enumerate(ordered)}
        self._by_name = {td.name: i for i, td in enumerate(ordered)}
        index = self._index
        self.deps = [tuple(index[d] for d in td.depends_on) for td in ordered]
        self.dependents = [[] for _ in ordered]
        for i, ds in enumerate(self.deps):
            for d in ds:
                self.dependents[d].append(i)
        self.layers = [[index[td] for td in layer] for layer in layers]
        self.layer = [0] * len(ordered)
        for k, layer in enumerate(self.layers):
            for i in layer:
                self.layer[i] = k
        self.main_count = main_count
        self.detached = [i >= main_count for i in range(len(ordered))]

    @classmethod
    def build(cls, terminals) -> "Graph":
        members = _reachable(terminals)
        _add_detached(members)
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
        main = [td for td in members if not td.detached]
        detached = [td for td in members if td.detached]
        main_layers = _layers(main)
        detached_layers = _layers(detached)
        for td in members:
            check_signature(td)
        ordered = [td for layer in main_layers for td in layer]
        ordered += [td for layer in detached_layers for td in layer]
        return cls(ordered, main_layers + detached_layers, len(main))

    def __len__(self) -> int:
        return len(self.tasks)

    def index_of(self, task_or_name) -> int:
        """The index of a task given as TaskDef or name; ValueError with a suggestion."""
        if isinstance(task_or_name, TaskDef):
            i = self._index.get(task_or_name)
            if i is not None:
                return i
            name = task_or_name.name
        elif isinstance(task_or_name, str):
            name = task_or_name
            i = self._by_name.get(name)
            if i is not None:
                return i
        else:
            raise TypeError(f"expected a task or a task name, got {task_or_name!r}")
        raise ValueError(f"task '{name}' is not in this flow's graph{self.suggest(name)}")

    def find(self, task_or_name) -> int | None:
        """Like ``index_of`` but None when the task is not in the graph."""
        try:
            return self.index_of(task_or_name)
        except (ValueError, TypeError):
            return None

    def suggest(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, list(self._by_name), n=3)
        if close:
            return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        return ""

    def downstream(self, roots) -> set[int]:
        """The roots and every task that depends on them, transitively."""
        seen = set(roots)
        stack = list(roots)
        while stack:
            for j in self.dependents[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    def plan(self) -> list[list[str]]:
        return [[self.tasks[i].name for i in layer] for layer in self.layers]


def _reachable(terminals) -> list[TaskDef]:
    """Every task reachable from the terminals, each once, dependencies first
    and otherwise in declaration order (an iterative depth-first post-order)."""
    if not terminals:
        raise ValueError("Flow() needs at least one terminal task: Flow(last_task) runs "
                         "last_task and everything it depends on")
    for position, t in enumerate(terminals):
        if not isinstance(t, TaskDef):
            what = (f"the plain function '{t.__name__}'; decorate it with @task"
                    if callable(t) and hasattr(t, "__name__") else repr(t))
            raise TypeError(f"Flow() terminal #{position + 1} is {what}; terminals must be "
                            f"@task-decorated functions")
    order: dict[TaskDef, None] = {}
    entered: set[TaskDef] = set()
    for terminal in terminals:
        stack = [(terminal, enumerate(terminal.depends_on))]
        entered.add(terminal)
        while stack:
            td, deps = stack[-1]
            for position, dep in deps:
                # depends_on is a public list: re-check items added after decoration
                check_dependency(td.name, position, dep)
                if dep not in entered:
                    entered.add(dep)
                    stack.append((dep, enumerate(dep.depends_on)))
                    break
            else:
                stack.pop()
                order[td] = None
    return list(order)


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


def _describe(fn) -> str:
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    code = getattr(fn, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code else ""
    return f"{module + '.' if module else ''}{qualname}{where}"


def _layers(members: list[TaskDef]) -> list[list[TaskDef]]:
    """Longest-path layers of ``members`` (deps outside ``members`` count as done)."""
    inside = set(members)
    sorter = graphlib.TopologicalSorter()
    for td in members:
        sorter.add(td, *[d for d in td.depends_on if d in inside])
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        # graphlib lists the cycle against the edge direction; show it as "a depends on b".
        names = " -> ".join(td.name for td in reversed(cycle))
        raise ValueError(f"the tasks form a cycle: {names} (each depends on the next); "
                         f"remove one of these dependencies") from None
    order = {td: k for k, td in enumerate(members)}
    layers = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order.__getitem__)
        layers.append(ready)
        sorter.done(*ready)
    return layers


_signature_cache: dict = {}


def check_signature(td: TaskDef) -> None:
    """The body must accept every dependency and need nothing else."""
    params = _parameters(td.fn)
    if params is None:
        return  # signature not introspectable (some builtins): trust the caller
    accepted, required, var_keyword = params
    dep_names = [d.name for d in td.depends_on]
    if not var_keyword:
        for dep in td.depends_on:
            if dep.name not in accepted:
                raise ValueError(
                    f"task '{td.name}' depends on '{dep.name}' but its function has no "
                    f"parameter '{dep.name}'; add a parameter named '{dep.name}' (dependency "
                    f"values arrive as keyword arguments) or accept **kwargs")
    missing = [p for p in required if p not in dep_names]
    if missing:
        listed = ", ".join(repr(m) for m in missing)
        raise ValueError(
            f"task '{td.name}' has required parameter(s) {listed} that no dependency "
            f"provides (it depends on: {', '.join(dep_names) or 'nothing'}); give them "
            f"defaults or add the tasks of those names to depends_on")


def _parameters(fn):
    """(names accepted by keyword, names required, accepts **kwargs), cached per code object.

    Reading the code object directly is ~50x cheaper than inspect.signature,
    which matters for flows of 100k tasks built from one closure.
    """
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__wrapped__") and not hasattr(fn, "__signature__"):
        defaults = fn.__defaults__ or ()
        kwdefaults = fn.__kwdefaults__ or {}
        key = (code, len(defaults), tuple(kwdefaults))
        cached = _signature_cache.get(key)
        if cached is None:
            positional = code.co_varnames[:code.co_argcount]
            kwonly = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
            accepted = set(positional[code.co_posonlyargcount:]) | set(kwonly)
            # a positional-only parameter can't receive a keyword, so it is not
            # "accepted"; if it has no default it is required and can never be met
            required = list(positional[:len(positional) - len(defaults)])
            required += [p for p in kwonly if p not in kwdefaults]
            cached = (accepted, required, bool(code.co_flags & _CO_VARKEYWORDS))
            _signature_cache[key] = cached
        return cached
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    accepted, required, var_keyword = set(), [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            accepted.add(p.name)
            if p.default is p.empty:
                required.append(p.name)
        elif p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            required.append(p.name)
    return accepted, required, var_keyword
