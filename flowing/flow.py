"""``Flow``: the public face of a run — build the graph, run it, continue it, read it."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .engine.scheduler import Scheduler, run_ok
from .graph import Graph
from .interrupts import Catcher
from .observe.reporter import Reporter, resolve_logger
from .replay.policy import JournalPlan
from .results import FailedAttempt, ItemResult, SkipCause, StepResult, StepState
from .runners.local import open_runner
from .tasks import TaskDef
from .text import LOGGER_NAME, error_line, format_duration, items_line, printable, safe_str

if TYPE_CHECKING:
    import logging
    from concurrent.futures import Executor

    from .journal.store import Journal

SCHEDULES = ("eager", "layers")


class _DefaultWorkers(int):
    """The default of ``Flow(max_workers=...)``: 5, and told apart from a 5 the caller
    wrote (by identity), so that a Limit's concurrency can raise it (see
    ``Flow.__init__``). It prints, compares and computes as the int 5."""

    __slots__ = ()


DEFAULT_MAX_WORKERS: int = _DefaultWorkers(5)


class Flow:
    """A graph of tasks, ready to run.

    ``Flow(*terminals)`` takes every task reachable from the terminals through
    ``depends_on``, plus registered detached tasks whose dependencies are all
    in the graph, and checks the whole graph before anything runs.
    """

    def __init__(self, *terminals: TaskDef, max_workers: int = DEFAULT_MAX_WORKERS,
                 fail_fast: bool = True,
                 journal_path: str | Any | None = None, executor: Executor | Any | None = None,
                 schedule: str = "eager", log: bool | logging.Logger = True,
                 on_event: Any = None, inputs: Mapping[str, Any] | None = None) -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"Flow(max_workers=...) must be an int >= 1, got {max_workers!r}")
        if max_workers < 1:
            raise ValueError(f"Flow(max_workers={max_workers}) must be >= 1")
        if schedule not in SCHEDULES:
            raise ValueError(f"Flow(schedule={schedule!r}) is not a schedule: use 'eager' "
                             f"(start each task as soon as its dependencies succeed) or "
                             f"'layers' (run layer by layer)")
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise TypeError(f"Flow(executor=...) must be a concurrent.futures.Executor or a "
                            f"Dask distributed.Client, got {executor!r}")
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping) or not all(isinstance(k, str) for k in inputs):
            raise TypeError(f"Flow(inputs=...) must be a dict of parameter name -> value, "
                            f"got {inputs!r}")
        self.inputs: dict[str, Any] = dict(inputs)
        self.graph = Graph.build(terminals, inputs=tuple(self.inputs))
        self.fail_fast = bool(fail_fast)
        self.schedule = schedule
        self.executor = executor
        self.logger = resolve_logger(log)
        self._reporter = Reporter(self.logger, on_event)
        self.max_workers = self._workers_for_limits(max_workers)
        unused = sorted(set(self.inputs) - self.graph.received_inputs())
        if unused:
            self._reporter.warning(
                f"Flow(inputs=...): no task has a parameter named {', '.join(map(repr, unused))}; "
                f"check the spelling (inputs fill body parameters that are not dependencies)")
        self.journal_path = None if journal_path is None else str(journal_path)
        self._journal: Journal | None = None
        if journal_path is not None:
            import logging  # lazy: only runs with a journal pay for it

            from .journal.store import Journal  # only runs with a journal pay for it
            self._journal = Journal.open(str(journal_path),
                                         self.logger or logging.getLogger(LOGGER_NAME))
        self.results: dict[str, StepResult] = {}
        self._overrides: dict[int, StepResult] = {}
        # items that finished in for_each tasks a Ctrl-C cut short, for resume()
        self._interrupted_items: dict[int, list[ItemResult | None]] = {}
        self.retries: list[FailedAttempt] = []  # failed attempts of the last run, for reports
        self.last_attempt_started: dict[str, float] = {}  # retried tasks: final attempt start
        self.why: dict[str, str] = {}  # journaled tasks that ran again anyway, and why
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._running = threading.Lock()  # held for the whole of run()/resume()

    def _workers_for_limits(self, max_workers: int) -> int:
        """No silent cap: ``max_workers`` left at its default grows to the largest
        ``max_concurrency`` of a Limit in the graph, so that Limit is the bound; an
        explicit ``max_workers`` below it stays, with one warning saying so."""
        top: tuple[int, str] | None = None
        for td in self.graph.tasks:
            n = td.limit.max_concurrency if td.limit is not None else None
            if n is not None and (top is None or n > top[0]):
                top = (n, td.name)
        if top is None or top[0] <= max_workers:
            return int(max_workers)
        if max_workers is DEFAULT_MAX_WORKERS:
            return top[0]
        self._reporter.warning(
            f"Flow(max_workers={int(max_workers)}) is below the Limit(max_concurrency={top[0]}) "
            f"of task '{top[1]}': max_workers bounds it, at most {int(max_workers)} bodies run "
            f"at once; raise max_workers, or leave it out to let the Limit bound them")
        return int(max_workers)

    # ----- running -------------------------------------------------------------

    def run(self) -> dict[str, StepResult]:
        """A fresh run: results are cleared (overrides and journaled tasks are kept)."""
        with self._exclusive():
            self._dry_run_exit(dict(self._overrides), set())
            self.results = {}
            return self._execute(dict(self._overrides), set(), {})

    def resume(self, from_tasks: Iterable[TaskDef | str] | TaskDef | str | None = None
               ) -> dict[str, StepResult]:
        """Keep SUCCEEDED results, re-run the rest.

        ``from_tasks``: tasks (or names) to re-run anyway, with everything
        downstream of them.
        """
        with self._exclusive():
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
            partial = {i: items for i, items in self._interrupted_items.items()
                       if i not in force}
            for name, r in self.results.items():
                i = g.index_of(name)
                if i in force:
                    continue
                if r.state is StepState.SUCCEEDED:
                    kept[i] = r
                elif r.items is not None:
                    partial[i] = list(r.items)
            self._dry_run_exit(kept, force)
            return self._execute(kept, force, partial)

    def _exclusive(self) -> _RunGuard:
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this Flow is already running (run() or resume() in another "
                               "thread); wait for it to return, or build a second Flow")
        return _RunGuard(self._running)

    def _execute(self, kept: dict[int, StepResult], force: set[int],
                 partial: dict[int, list[ItemResult | None]]) -> dict[str, StepResult]:

        # Ctrl-C is flowing's for the whole run, keys included (see interrupts.py)
        with Catcher() as catcher:
            plan = self._journal_plan(force) if self._journal is not None else None
            has_async = any(td.is_async for td in self.graph.tasks)
            runner = functools.partial(open_runner, self.executor, self.max_workers,
                                       has_async=has_async)
            scheduler = Scheduler(self.graph, runner, max_workers=self.max_workers,
                                  fail_fast=self.fail_fast, schedule=self.schedule,
                                  reporter=self._reporter, plan=plan, inputs=self.inputs)
            self._run_scheduler(scheduler, catcher, kept, partial)
        return self.results

    def _run_scheduler(self, scheduler: Scheduler, catcher: Any, kept: dict[int, StepResult],
                       partial: dict[int, list[ItemResult | None]]) -> None:
        self.started_at = time.time()
        try:
            scheduler.run(kept, partial, catcher)
        finally:
            self.finished_at = time.time()
            tasks = self.graph.tasks
            self.results = {tasks[i].name: r for i, r in enumerate(scheduler.results)
                            if r is not None}
            self.retries = scheduler.retries
            self.last_attempt_started = scheduler.last_attempt_started
            why = {} if scheduler.replayer is None else scheduler.replayer.why
            self.why = {tasks[i].name: str(reason) for i, reason in why.items()
                        if (r := scheduler.results[i]) is not None and not r.cached}
            self._interrupted_items = scheduler.unfinished_items()

    def _journal_plan(self, force: set[int]) -> JournalPlan:
        assert self._journal is not None
        return self._plan(self._journal, force, warn=True)

    def _plan(self, journal: Journal, force: set[int], warn: bool) -> JournalPlan:
        return JournalPlan.build(journal, self.graph, self.inputs, force,
                                 self._reporter.warning if warn else None)

    def dry_run(self) -> dict[str, str]:
        """What ``run()`` would do now, per task name, calling no body, gate or
        ``for_each`` source: ``"replay"``, ``"run: <why>"`` or ``"maybe: <why>"``."""
        with self._exclusive():
            return self._dry_run(dict(self._overrides), set())

    def _dry_run(self, kept: dict[int, StepResult], force: set[int]) -> dict[str, str]:
        from .replay.dryrun import dry_run  # lazy: dry runs only

        plan = None if self._journal is None else self._plan(self._journal, force, warn=False)
        return dry_run(self.graph, plan, kept)

    def _dry_run_exit(self, kept: dict[int, StepResult], force: set[int]) -> None:
        """``FLOWING_DRY_RUN=1``: print what a run would do and exit before anything runs."""
        if os.environ.get("FLOWING_DRY_RUN", "").strip() not in ("1", "true", "yes"):
            return
        table = self._dry_run(kept, force)
        width = max((len(n) for n in table), default=4)
        lines = [f"flowing dry run (FLOWING_DRY_RUN=1): {len(table)} "
                 f"task{'' if len(table) == 1 else 's'}, nothing was run"]
        lines += [f"  {safe_str(name):<{width}}  {what}" for name, what in table.items()]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        raise SystemExit(0)

    def override(self, task: TaskDef | str, value: Any) -> None:
        """Record ``value`` as the task's SUCCEEDED result without running it."""
        with self._exclusive():
            g = self.graph
            i = g.index_of(task)
            td = g.tasks[i]
            key = None
            if self._journal is not None:
                # under a key of its own (behaviour and name): see JournalPlan.override_entry
                key = self._plan(self._journal, set(), warn=False).record_override(i, td, value)
            now = time.time()
            result = StepResult(td.name, StepState.SUCCEEDED, value, step_key=key,
                                reason="override", started_at=now, finished_at=now,
                                detached=bool(g.detached[i]))
            self._overrides[i] = result
            self.results[td.name] = result
            # results computed from the old value are stale now: resume() re-runs them
            for j in g.downstream([i]) - {i}:
                self.results.pop(g.tasks[j].name, None)
                self._interrupted_items.pop(j, None)
            order = {t.name: k for k, t in enumerate(g.tasks)}
            self.results = dict(sorted(self.results.items(), key=lambda kv: order[kv[0]]))

    # ----- reading -------------------------------------------------------------

    def value(self, task_or_name: TaskDef | str) -> Any:
        """The value of a SUCCEEDED task; KeyError without a result, RuntimeError otherwise."""
        name = task_or_name.name if isinstance(task_or_name, TaskDef) else task_or_name
        r = self.results.get(name)
        if r is None:
            if self.graph.find(task_or_name) is None:
                raise KeyError(f"task '{name}' is not in this flow{self.graph.suggest(name)}")
            raise KeyError(f"task '{name}' has no result yet: run() the flow first")
        if r.state is not StepState.SUCCEEDED:
            why = error_line(r.error) or safe_str(r.reason or "")
            if r.skip_cause is SkipCause.GATE:
                raise RuntimeError(f"task '{name}' has no value: it was skipped by its when= gate "
                                   f"({why}), as intended; check flow.results['{name}'].state "
                                   f"before asking for its value")
            raise RuntimeError(f"task '{name}' {r.state.value}" + (f": {why}" if why else "")
                               + "; fix it and call resume(), or read flow.results")
        return r.value

    def plan(self) -> list[list[str]]:
        """Main layers, then detached layers, by task name. Runs nothing."""
        return self.graph.plan()

    @property
    def ok(self) -> bool:
        """No main task FAILED, and every main task SUCCEEDED or was skipped by a gate
        (its own ``when``, or only downstream of such a skip). False before a run."""
        tasks = self.graph.tasks
        return run_ok(self.graph, [self.results.get(tasks[i].name)
                                   for i in range(self.graph.main_count)])

    @property
    def failures(self) -> list[StepResult]:
        """The main tasks that FAILED, in plan order."""
        tasks = self.graph.tasks
        return [r for i in range(self.graph.main_count)
                if (r := self.results.get(tasks[i].name)) is not None
                and r.state is StepState.FAILED]

    @property
    def detached_failures(self) -> list[StepResult]:
        tasks = self.graph.tasks
        return [r for i in range(self.graph.main_count, len(tasks))
                if (r := self.results.get(tasks[i].name)) is not None
                and r.state is StepState.FAILED]

    def summary(self) -> str:
        """One line per task and a totals line."""
        g = self.graph
        names = [printable(td.name) for td in g.tasks]  # one line per task, whatever the name
        width = max((len(name) for name in names), default=4)
        lines = []
        counts = {s: 0 for s in StepState}
        cached = 0
        for i, td in enumerate(g.tasks):
            r = self.results.get(td.name)
            if r is None:
                lines.append(f"{'not run':<9} {names[i]:<{width}}")
                continue
            counts[r.state] += 1
            cached += r.cached
            parts = [f"{r.state.value:<9}", f"{names[i]:<{width}}",
                     f"{format_duration(r.duration_ms):>6}"]
            if r.attempts > 1:
                parts.append(f"attempts={r.attempts}")
            if g.detached[i]:
                parts.append("[detached]")
            if r.cached:
                parts.append("[cached]")
            if r.items is not None:
                parts.append(items_line(r.items, allowed=td.allowed_failures(len(r.items))))
            if r.state is StepState.FAILED and r.items is None:
                parts.append(error_line(r.error) or safe_str(r.reason or ""))
            elif r.state is not StepState.FAILED and r.reason:
                parts.append(safe_str(r.reason))
            why = self.why.get(td.name)
            if why and not r.cached:
                parts.append(f"(ran: {why})")
            lines.append(printable("  ".join(p for p in parts if p)))
        total = (f"{len(g)} task{'' if len(g) == 1 else 's'}: {counts[StepState.SUCCEEDED]} succeeded, "
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

    def report(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the last run (``json.dumps`` always works)."""
        from .observe.report import build_report  # lazy: reports are drawn on demand
        return build_report(self)

    def to_mermaid(self, direction: str = "TD") -> str:
        """A Mermaid flowchart of the graph; after a run, nodes show their state."""
        from .observe.mermaid import to_mermaid  # lazy: reports are drawn on demand
        return to_mermaid(self, direction)

    def timeline_svg(self, path: str | os.PathLike[str]) -> str:
        """Write an SVG Gantt chart of the last run to ``path``; returns the path."""
        from .observe.timeline import timeline_svg  # lazy: reports are drawn on demand
        return timeline_svg(self, path)

    def __repr__(self) -> str:
        return f"<Flow of {len(self.graph)} tasks>"


class _RunGuard:
    """Releases the Flow's run lock at the end of a ``with`` block."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
