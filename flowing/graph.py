"""Building and checking the graph of a flow.

``Graph.build(terminals)`` collects every task reachable from the terminals
through ``depends_on``, adds registered detached tasks whose dependencies are
all in the graph (to a fixed point, so detached chains are found), checks the
whole graph, and numbers the tasks in plan order: the main layers, then the
detached layers. Everything downstream works on those integer indices.

A layer is the set of tasks whose longest dependency path has the same
length (the batches ``graphlib.TopologicalSorter`` would hand out). They are
computed in one pass over the depth-first order, which is topological and
also finds cycles; graphlib's per-node bookkeeping would cost more memory
than the whole run at 100k tasks.
"""

from __future__ import annotations

from array import array

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

    def __init__(self, tasks, deps, layers, main_count):
        self.tasks = tasks
        self.deps = deps
        dependents = [[] for _ in tasks]
        for i, ds in enumerate(deps):
            for d in ds:
                dependents[d].append(i)
        self.dependents = _share_equal_neighbours(tuple(js) for js in dependents)
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
    def build(cls, terminals) -> Graph:
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
        for td in members:
            check_signature(td)
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
        layers = main_layers + detached_layers
        for layer in layers:
            for n, k in enumerate(layer):
                td = members[k]
                layer[n] = len(tasks)  # renumber in place: plan order
                position[td] = len(tasks)
                tasks.append(td)
        del members
        deps = _share_equal_neighbours(tuple(position[d] for d in td.depends_on)
                                       for td in tasks)
        main_count = sum(len(layer) for layer in main_layers)
        return cls(tasks, deps, layers, main_count)

    def __len__(self) -> int:
        return len(self.tasks)

    def index_of(self, task_or_name) -> int:
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

    def _names(self) -> dict:
        if self._by_name is None:
            self._by_name = {td.name: i for i, td in enumerate(self.tasks)}
        return self._by_name

    def find(self, task_or_name) -> int | None:
        """Like ``index_of`` but None when the task is not in the graph."""
        try:
            return self.index_of(task_or_name)
        except (ValueError, TypeError):
            return None

    def suggest(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, list(self._names()), n=3)
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


def _share_equal_neighbours(tuples) -> list[tuple]:
    """List the tuples, reusing the previous one when equal: in a wide graph
    every middle task has the same dependencies, and 100k copies add up."""
    shared: list[tuple] = []
    previous = None
    for t in tuples:
        if t == previous:
            t = previous
        shared.append(t)
        previous = t
    return shared


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
            while position < len(deps):
                dep = deps[position]
                # depends_on is a public list: re-check items added after decoration
                check_dependency(td.name, position, dep)
                position += 1
                seen = state.get(dep)
                if seen is None:
                    break
                if seen == -1:  # on the stack: td depends on one of its dependents
                    _raise_cycle(tasks, dep)
                dep = None
            else:
                dep = None
            if dep is not None:
                positions[-1] = position
                state[dep] = -1
                tasks.append(dep)
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


def _describe(fn) -> str:
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    code = getattr(fn, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code else ""
    return f"{module + '.' if module else ''}{qualname}{where}"


def _raise_cycle(path: list[TaskDef], back_to: TaskDef) -> None:
    """``path`` is the depth-first stack; its last task depends on ``back_to``."""
    cycle = path[path.index(back_to):] + [back_to]
    names = " -> ".join(td.name for td in cycle)
    raise ValueError(f"the tasks form a cycle: {names} (each depends on the next); "
                     f"remove one of these dependencies")


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
