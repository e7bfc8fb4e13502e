"""``Flow``: the public face of a run — build the graph, run it, continue it, read it."""

from __future__ import annotations

import time

from .events import LOGGER_NAME, Reporter, error_line, format_duration, resolve_logger
from .graph import Graph
from .results import StepResult, StepState
from .scheduler import Scheduler
from .tasks import TaskDef

SCHEDULES = ("eager", "layers")


class Flow:
    """A graph of tasks, ready to run.

    ``Flow(*terminals)`` takes every task reachable from the terminals through
    ``depends_on``, plus registered detached tasks whose dependencies are all
    in the graph, and checks the whole graph before anything runs.
    """

    def __init__(self, *terminals, max_workers: int = 5, fail_fast: bool = True,
                 journal_path=None, executor=None, schedule: str = "eager", log=True,
                 on_event=None):
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"Flow(max_workers=...) must be an int >= 1, got {max_workers!r}")
        if max_workers < 1:
            raise ValueError(f"Flow(max_workers={max_workers}) must be >= 1")
        if schedule not in SCHEDULES:
            raise ValueError(f"Flow(schedule={schedule!r}) is not a schedule: use 'eager' "
                             f"(start each task as soon as its dependencies succeed) or "
                             f"'layers' (run layer by layer)")
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise TypeError(f"Flow(executor=...) must be a concurrent.futures.Executor, "
                            f"got {executor!r}")
        self.graph = Graph.build(terminals)
        self.max_workers = max_workers
        self.fail_fast = bool(fail_fast)
        self.schedule = schedule
        self.executor = executor
        self.logger = resolve_logger(log)
        self._reporter = Reporter(self.logger, on_event)
        self.journal_path = None if journal_path is None else str(journal_path)
        self._journal = None
        if journal_path is not None:
            import logging

            from .journal import Journal  # only runs with a journal pay for it
            self._journal = Journal.open(self.journal_path,
                                         self.logger or logging.getLogger(LOGGER_NAME))
        self.results: dict[str, StepResult] = {}
        self._overrides: dict[int, StepResult] = {}
        # items that finished in for_each tasks a Ctrl-C cut short, for resume()
        self._interrupted_items: dict[int, list] = {}
        self.retries: list = []  # failed attempts of the last run, for reports
        self.last_attempt_started: dict[str, float] = {}  # retried tasks: final attempt start
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # ----- running -------------------------------------------------------------

    def run(self) -> dict[str, StepResult]:
        """A fresh run: results are cleared (overrides and journaled tasks are kept)."""
        self.results = {}
        return self._execute(dict(self._overrides), set(), {})

    def resume(self, from_tasks=None) -> dict[str, StepResult]:
        """Keep SUCCEEDED results, re-run the rest.

        ``from_tasks``: tasks (or names) to re-run anyway, with everything
        downstream of them.
        """
        g = self.graph
        force: set[int] = set()
        if from_tasks is not None:
            if isinstance(from_tasks, (str, TaskDef)):
                from_tasks = [from_tasks]
            roots = [g.index_of(t) for t in from_tasks]
            force = g.downstream(roots)
            for i in force:
                self._overrides.pop(i, None)
        kept: dict[int, StepResult] = {}
        partial: dict[int, list] = {i: items for i, items in self._interrupted_items.items()
                                     if i not in force}
        for name, r in self.results.items():
            i = g.index_of(name)
            if i in force:
                continue
            if r.state is StepState.SUCCEEDED:
                kept[i] = r
            elif r.items is not None:
                partial[i] = r.items
        return self._execute(kept, force, partial)

    def _execute(self, kept, force, partial) -> dict[str, StepResult]:
        keys = self._step_keys() if self._journal is not None else None
        item_key = None
        if keys is not None:
            from .stepkey import item_step_key
            item_key = item_step_key
        scheduler = Scheduler(self.graph, max_workers=self.max_workers,
                              fail_fast=self.fail_fast, schedule=self.schedule,
                              executor=self.executor, reporter=self._reporter,
                              journal=self._journal, keys=keys, item_key=item_key)
        self.started_at = time.time()
        try:
            scheduler.run(kept, force, partial)
        finally:
            self.finished_at = time.time()
            tasks = self.graph.tasks
            self.results = {tasks[i].name: r for i, r in enumerate(scheduler.results)
                            if r is not None}
            self.retries = scheduler.retries
            self.last_attempt_started = scheduler.last_attempt_started
            self._interrupted_items = scheduler.unfinished_items()
        return self.results

    def _step_keys(self) -> list[str]:
        from .stepkey import clear_cache, compute_step_key

        # Fingerprints read module constants; a fix made at run time (a flag flipped
        # before resume()) must give a new key, not be journaled under the old one.
        clear_cache()
        keys: list[str] = []
        for td, deps in zip(self.graph.tasks, self.graph.deps):
            keys.append(compute_step_key(td, [keys[d] for d in deps]))
        return keys

    def override(self, task, value) -> None:
        """Record ``value`` as the task's SUCCEEDED result without running it."""
        g = self.graph
        i = g.index_of(task)
        td = g.tasks[i]
        key = None
        if self._journal is not None:
            keys = self._step_keys()
            key = keys[i]
            self._journal.record(key, td.name, [keys[d] for d in g.deps[i]], value, "override")
        now = time.time()
        result = StepResult(td.name, StepState.SUCCEEDED, value, step_key=key,
                            reason="override", started_at=now, finished_at=now)
        self._overrides[i] = result
        self.results[td.name] = result
        order = {t.name: k for k, t in enumerate(g.tasks)}
        self.results = dict(sorted(self.results.items(), key=lambda kv: order[kv[0]]))

    # ----- reading -------------------------------------------------------------

    def value(self, task_or_name):
        """The value of a SUCCEEDED task; KeyError without a result, RuntimeError otherwise."""
        name = task_or_name.name if isinstance(task_or_name, TaskDef) else task_or_name
        r = self.results.get(name)
        if r is None:
            if self.graph.find(task_or_name) is None:
                raise KeyError(f"task '{name}' is not in this flow{self.graph.suggest(name)}")
            raise KeyError(f"task '{name}' has no result yet: run() the flow first")
        if r.state is not StepState.SUCCEEDED:
            why = error_line(r.error) or r.reason or ""
            raise RuntimeError(f"task '{name}' {r.state.value}" + (f": {why}" if why else "")
                               + "; fix it and call resume(), or read flow.results")
        return r.value

    def plan(self) -> list[list[str]]:
        """Main layers, then detached layers, by task name. Runs nothing."""
        return self.graph.plan()

    @property
    def ok(self) -> bool:
        """Every main task SUCCEEDED."""
        tasks = self.graph.tasks
        for i in range(self.graph.main_count):
            r = self.results.get(tasks[i].name)
            if r is None or r.state is not StepState.SUCCEEDED:
                return False
        return True

    @property
    def detached_failures(self) -> list[StepResult]:
        tasks = self.graph.tasks
        return [r for i in range(self.graph.main_count, len(tasks))
                if (r := self.results.get(tasks[i].name)) is not None
                and r.state is StepState.FAILED]

    def summary(self) -> str:
        """One line per task and a totals line."""
        g = self.graph
        width = max((len(td.name) for td in g.tasks), default=4)
        lines = []
        counts = {s: 0 for s in StepState}
        cached = 0
        for i, td in enumerate(g.tasks):
            r = self.results.get(td.name)
            if r is None:
                lines.append(f"{'not run':<9} {td.name:<{width}}")
                continue
            counts[r.state] += 1
            cached += r.cached
            parts = [f"{r.state.value:<9}", f"{td.name:<{width}}",
                     f"{format_duration(r.duration_ms):>6}"]
            if r.attempts > 1:
                parts.append(f"attempts={r.attempts}")
            if g.detached[i]:
                parts.append("[detached]")
            if r.cached:
                parts.append("[cached]")
            if r.state is StepState.FAILED:
                parts.append(error_line(r.error) or r.reason or "")
            elif r.reason:
                parts.append(r.reason)
            lines.append("  ".join(p for p in parts if p))
        total = (f"{len(g)} tasks: {counts[StepState.SUCCEEDED]} succeeded, "
                 f"{counts[StepState.FAILED]} failed, {counts[StepState.SKIPPED]} skipped")
        if cached:
            total += f" ({cached} cached)"
        not_run = len(g) - sum(counts.values())
        if not_run:
            total += f", {not_run} not run"
        if self.started_at and self.finished_at:
            total += f" in {format_duration((self.finished_at - self.started_at) * 1000)}"
        lines.append(total)
        return "\n".join(lines)

    def report(self) -> dict:
        """A JSON-serialisable dict of the last run (``json.dumps`` always works)."""
        from .report import build_report
        return build_report(self)

    def to_mermaid(self, direction: str = "TD") -> str:
        """A Mermaid flowchart of the graph; after a run, nodes show their state."""
        from .report import to_mermaid
        return to_mermaid(self, direction)

    def timeline_svg(self, path) -> str:
        """Write an SVG Gantt chart of the last run to ``path``; returns the path."""
        from .report import timeline_svg
        return timeline_svg(self, path)

    def __repr__(self) -> str:
        return f"<Flow of {len(self.graph)} tasks>"
