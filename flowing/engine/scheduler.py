"""The scheduler: runs a checked ``Graph`` through one ``Runner``.

The scheduler thread (the one that called ``run()``) owns the run: it takes
every outcome off one inbox, decides, and hands jobs to the runner. The
policy is split by concern:

* ``ready``      which tasks may start, in which order: the schedule modes
                 (eager, layers), detached tasks, dependents of a failure.
* ``admission``  capacity, ``Limit`` parking, retry backoff and rate timers,
                 overdue timed jobs; time comes from an injectable clock.
* ``fanout``     ``for_each``: one job per item, the task's result at the end.
* ``replay.Replayer`` (journaled runs) replay or run, and every journal write.
* here           the inbox loop, fail_fast, finishing results, Ctrl-C.

Scheduling policy
-----------------
* A task whose dependency FAILED or was SKIPPED is SKIPPED at once, with a
  reason naming that dependency (``SkipCause`` says which, as data).
* fail_fast: once a main task has FAILED for good, no new main task starts.
  Started tasks (retries and for_each items included) run to the end; tasks
  that never started are SKIPPED with a reason naming the failure. "Started"
  means handed to the runner: the scheduler thread decides it, from the
  failures it has taken off the inbox, when it hands a task over; workers
  never skip a job they were handed. So tasks ready together are handed over
  together (as far as ``max_workers`` allows, see ``admission``) and all run,
  whichever of them fails first.
* Replay (with a journal): when a task is released, its step key is
  completed from its behaviour (fingerprinted when the run started) and the
  content digests of its dependencies' values (``JournalPlan.settle``); it
  is replayed instead of run if the journal holds that key, not older than
  ``cache_ttl_s``, and the task is cacheable (``cache=True``, every value in
  its key has stable content). A dependency that re-ran to an identical
  value therefore does not force its dependents (early cutoff). ``for_each``
  items are replayed the same way, each keyed by its content. Why a task
  runs again is a ``why.Why`` (``JournalPlan.verdict``), worded at the edge.
  All of it is ``replay.Replayer``'s: the scheduler only asks it when a task
  is released, a job succeeds, a fan-out starts or completes, and at the end.
* Chain fusion (own threads, no journal, no timeouts): when a task's only
  dependent has no other dependency, the worker that finishes the task runs
  the dependent next, without a round trip through the scheduler.
* Every job produces exactly one verdict: attempts never raise (attempt.py),
  and a timed job whose verdict has not arrived well after its deadline is
  failed by ``admission`` and its late verdict ignored. So ``run()`` always
  returns.

The runner is the caller's (a factory given the run's ``Shared``), so tests
drive the scheduler with an in-process runner and a clock they advance.

State
-----
Everything below is owned by the scheduler thread; workers never touch it.

``results[i]``        the StepResult of task i, once it has one
``ready_set``         readiness (``ready.ReadySet``): ``status[i]`` (aliased here),
                      ``waiting[i]``, counts of unfinished, main and per-layer
                      tasks, tasks held by the schedule
``admission``         jobs waiting for a slot or a Limit, in flight, timers and
                      overdue deadlines (``admission.Admission``)
``replayer``          journaled runs: replay decisions, value digests and journal
                      writes (``replay.Replayer``); None without a journal
``fan_outs``          running ``for_each`` tasks, item by item, and the items of
                      their earlier unfinished runs (``fanout.FanOuts``)
``running_since[i]``  start of task i, kept only when reporting
``next_tick``         when progress is reported next (monotonic)
``retries``           ``results.FailedAttempt`` records of attempts that failed and were retried
``last_attempt_started``  name -> start of the last attempt, for retried tasks
``_finishing``        results to record and propagate (``_finish``: no recursion)
``_in_finish``        whether ``_finish`` is propagating already
``_warned``           warnings given (each text once)
``stop_seen``         fail_fast as this thread saw it: set when it takes a main
                      task's failure, read only when it hands a task over
``interrupted``       Ctrl-C ended the run
``catcher``           the run's Ctrl-C handler

Shared with workers (``runners.base.Shared``): the ``inbox`` queue through which
every outcome comes back, the ``stopping`` event, and the journal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..interrupts import Catcher
from ..observe.events import (
    FlowFinished,
    FlowStarted,
    TaskCached,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from ..results import (
    Deferred,
    FailedAttempt,
    ItemResult,
    SkipCause,
    StepResult,
    StepState,
    skip_reason,
)
from ..runners import attempt as A
from ..runners.attempt import Job, Outcome
from ..runners.base import WAKE, Runner, Shared
from ..text import safe_repr
from . import admission as admission_
from .admission import SYSTEM_CLOCK, Admission, Clock
from .fanout import STATE_OF as _STATE_OF
from .fanout import FanOuts
from .ready import DONE, QUEUED, RUNNING, ReadySet

if TYPE_CHECKING:
    from ..graph import Graph
    from ..observe.reporter import Reporter
    from ..replay.policy import JournalPlan
    from ..replay.replayer import Replayer

SUCCEEDED, FAILED, SKIPPED = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED

# Put in the inbox by our SIGINT handler to wake the loop.
_INTERRUPT = object()

# A runner for one run, made from what its workers may see of it.
RunnerFactory = Callable[[Shared], Runner]


class Scheduler:
    """Runs one pass over a graph. Create one per run()/resume().

    ``runner`` makes the run's runner from its ``Shared`` (``open_runner`` for
    ``Flow``; an in-process runner in tests). ``clock``: where time is read
    and the inbox waited on (the system's by default).
    """

    def __init__(self, graph: Graph, runner: RunnerFactory, *, max_workers: int,
                 fail_fast: bool, schedule: str, reporter: Reporter,
                 plan: JournalPlan | None = None, inputs: dict[str, Any] | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.graph = graph
        self.max_workers = max_workers
        self.fail_fast = fail_fast
        self.layered = schedule == "layers"
        self.reporter = reporter
        self.emit = reporter.emit if reporter.active else None
        self.journal = plan.journal if plan is not None else None
        self.keys = plan.keys if plan is not None else None
        self.inputs = inputs or {}
        self.clock = clock
        self.shared = Shared(graph.tasks, graph.deps, fail_fast, self.journal, self.keys)
        n = len(graph)
        self.results: list[StepResult | None] = [None] * n
        # everything between a step and the journal: replay or run, and what is journaled
        self.replayer: Replayer | None = None
        if plan is not None:
            from ..replay.replayer import Replayer  # lazy: journaled runs only

            self.replayer = Replayer(plan, graph, self.results, inputs=self.inputs,
                                     parts=self.shared.parts, record=self.shared.record,
                                     warn=self._warn)
            self.shared.digest = self.replayer.digest
        self.runner: Runner = runner(self.shared)
        self.ready_set = ReadySet(graph, self.layered)
        self.status = self.ready_set.status
        # Own daemon threads bound the bodies in flight by their number, so a few
        # jobs may wait queued at the runner and a worker never idles waiting for the
        # scheduler. Coroutines and rate-limited jobs need a free slot right away.
        capacity = max_workers
        if self.runner.queues_ahead and not any(td.is_async for td in graph.tasks):
            capacity = 2 * max_workers
        inbox = self.shared.inbox
        # a batching runner may take up to this many jobs of quick tasks (see admission)
        quick_capacity = capacity * admission_.QUICK_AHEAD
        self.admission = Admission(max_workers, capacity, clock, lambda: inbox.put(WAKE),
                                   self._warn, self.runner.quick, quick_capacity)
        self.fan_outs = FanOuts(graph, self.shared, self.replayer, self.keys,
                                self.admission.queue, self._task_inputs)
        self.running_since: dict[int, float] = {}
        self.next_tick = 0.0
        self.retries: list[FailedAttempt] = []
        self.last_attempt_started: dict[str, float] = {}
        self._finishing: list[tuple[int, StepResult]] = []
        self._in_finish = False
        self._warned: set[str] = set()
        self.stop_seen: str | None = None
        self.interrupted = False
        self.catcher = Catcher()  # the run's Ctrl-C handler (set by run())

    # ----- set-up -------------------------------------------------------------

    def run(self, kept: dict[int, StepResult],
            partial_items: dict[int, list[ItemResult | None]],
            catcher: Catcher | None = None) -> list[StepResult | None]:
        """Run everything not in ``kept`` (index -> SUCCEEDED result).

        ``partial_items``: index -> ItemResults of an earlier failed for_each
        run of that task. ``catcher``: the run's Ctrl-C handler, installed by
        the caller (``Flow`` installs it before computing keys); without one,
        the scheduler installs its own for the run.
        """
        if catcher is None:
            with Catcher() as own:
                return self.run(kept, partial_items, own)
        g = self.graph
        started = time.time()
        self.fan_outs.partial = partial_items
        self.catcher = catcher
        # Ctrl-C from now on only sets catcher.seen and wakes the loop, which raises
        # KeyboardInterrupt itself between two outcomes: one raised at an arbitrary
        # bytecode could drop an outcome the loop had just taken off the inbox.
        inbox = self.shared.inbox
        catcher.wake = lambda: inbox.put(_INTERRUPT)  # SimpleQueue.put: signal-safe
        emit = self.emit
        if emit:
            emit(FlowStarted(started, len(g), len(g.layers), self.max_workers,
                             "layers" if self.layered else "eager"))
        try:
            if catcher.seen:
                raise KeyboardInterrupt
            self._prepare(kept)
            self._loop()
        except KeyboardInterrupt:
            self.interrupted = True
            self.shared.interrupted = True
            self.shared.stop("interrupted")
            self._keep_finished()
            raise
        finally:
            catcher.wake = None
            self._close()
            if emit:
                emit(flow_finished(g, self.results, started, self.interrupted))
        return self.results

    def _prepare(self, kept: dict[int, StepResult]) -> None:
        for i, r in kept.items():
            self.results[i] = r
        pending = self.ready_set.prepare(kept)
        if not self.layered and self.runner.fuses and self.journal is None:
            plan_fusion(self.graph, pending, self.status, self.shared.fused_next,
                        self._task_inputs)
        for i in self.ready_set.first(pending):
            self._enqueue_task(i)

    # ----- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        inbox, admission, clock, rs = self.shared.inbox, self.admission, self.clock, self.ready_set
        runner = self.runner
        while rs.unfinished:
            if self.catcher.seen:
                raise KeyboardInterrupt
            admission.dispatch(self)
            runner.flush()
            if not rs.unfinished:
                break
            if admission.idle():
                self._stalled()
            outcome = clock.wait(inbox, admission.wait_time())
            while outcome is not None:
                if outcome is _INTERRUPT:
                    raise KeyboardInterrupt
                if outcome is not WAKE:
                    self._on_outcome(outcome)
                outcome = None if inbox.empty() else inbox.get_nowait()
            if admission.timers:
                admission.fire_timers()
            if admission.overdue:
                admission.fail_overdue(self._on_outcome)
            if self.emit and clock.monotonic() >= self.next_tick:
                self._tick()

    def _tick(self) -> None:
        self.next_tick = self.clock.monotonic() + admission_.MAX_WAIT_S
        g = self.graph
        done = len(g) - self.ready_set.unfinished
        running = {g.tasks[i].name: t for i, t in self.running_since.items()}
        self.reporter.tick(done, len(g), running,
                           self.fan_outs.progress(self.max_workers, time.time()))

    def _stalled(self) -> None:
        names = [self.graph.tasks[i].name for i in self.ready_set.unfinished_tasks()]
        raise RuntimeError(f"flowing: internal error, the run stalled with nothing running; "
                           f"unfinished tasks: {', '.join(names[:10])}. Please report this.")

    # ----- releasing and starting ---------------------------------------------

    def _task_inputs(self, i: int) -> dict[str, Any] | None:
        names = getattr(self.graph, "inputs", None)
        if not names or not names[i]:
            return None
        return {n: self.inputs[n] for n in names[i]}

    def _enqueue_task(self, i: int) -> None:
        """Task i was released: replay it, or queue it for a slot."""
        td = self.graph.tasks[i]
        if self.interrupted:
            return
        if self.replayer is not None:
            done = self.replayer.released(i)  # replayed, or a replayed input is unreadable
            if done is not None:
                if done.cached and self.emit:
                    self.emit(TaskCached(done.finished_at or time.time(), td.name,
                                         done.step_key))
                self.status[i] = QUEUED
                self._finish(i, done)
                return
        if self.not_started(i):
            return
        self.status[i] = QUEUED
        if td.limit is None or td.for_each is not None:
            # Only the index waits: its Job (and the kwargs dict) is made when it
            # starts, so a wide graph never holds one per released task.
            self.admission.ready.append(i)
        else:
            self.admission.queue(self.make_job(i))  # waits for its Limit

    def _dep_values(self, i: int) -> dict[str, Any]:
        kwargs = {}
        results = self.results
        for d in self.graph.deps[i]:
            r = results[d]
            assert r is not None
            # a value kept on the cluster goes to the dependent as it is (runners.calls.RemoteValue)
            value = r._value
            kwargs[r.name] = value if isinstance(value, Deferred) and value.passed_as_is else r.value
        return kwargs

    def make_job(self, i: int) -> Job:
        """The first attempt of task i (its gate job, for a for_each task)."""
        td = self.graph.tasks[i]
        in_digest, store = (None, False) if self.replayer is None else self.replayer.job_inputs(i)
        job = Job(i, td, self._dep_values(i), mode=A.GATE if td.for_each is not None else A.TASK,
                  key=None if self.keys is None else self.keys[i], signals=self.shared,
                  inputs=self._task_inputs(i), in_digest=in_digest, store=store)
        gate_names = self.graph.gate_inputs.get(i)
        if gate_names:
            job.gate_inputs = ({n: self.inputs[n] for n in gate_names[0]},
                               {n: self.inputs[n] for n in gate_names[1]})
        return job

    def not_started(self, i: int) -> bool:
        """The one fail_fast boundary: main task i, about to be handed to a runner, is
        skipped if this thread has seen a main task fail (``stop_seen``). It is asked
        only here, never by a worker, so tasks handed over together before the
        failure was seen all run, whichever thread gets to them first."""
        if self.stop_seen is None or self.graph.detached[i]:
            return False
        self._finish(i, self._skipped(i, SkipCause.NOT_STARTED, self.stop_seen))
        return True

    def start(self, job: Job) -> None:
        """Hand ``job`` to the runner (``admission`` counted it in flight)."""
        if job.mode == A.ITEM:
            fan = self.fan_outs.running.get(job.task)
            if fan is not None:
                fan.running += 1
        else:
            self.status[job.task] = RUNNING
            if self.admission.in_flight <= self.max_workers:
                self._start_event(job.task, job.attempt)
            elif self.emit:
                # queued behind busy workers: it may yet be skipped, so the worker
                # says when it really starts
                job.announce = True
        self.runner.submit(job)

    def _start_event(self, i: int, attempt: int, now: float | None = None) -> None:
        if self.emit:
            now = now or time.time()
            self.running_since.setdefault(i, now)
            why = self.replayer.why.get(i) if attempt == 1 and self.replayer else None
            self.emit(TaskStarted(now, self.graph.tasks[i].name, attempt,
                                  bool(self.graph.detached[i]),
                                  None if why is None else str(why)))

    # ----- outcomes -----------------------------------------------------------

    def _on_outcome(self, o: Outcome) -> None:
        job = o.job
        if job.settled:
            return  # failed by Admission.fail_overdue already: a late verdict is ignored
        if o.kind is A.STARTED:
            self._start_event(job.task, job.attempt, o.started_at)
            return
        job.settled = True
        if o.warning:
            self._warn(o.warning)
        self.admission.settled(o)
        if job.mode == A.ITEM:
            fan = self.fan_outs.running.get(job.task)
            if fan is not None:
                fan.running -= 1
        if o.kind is A.RETRY:
            self._retry(o)
            return
        if job.mode == A.ITEM:
            done = self.fan_outs.on_item(o)
            if done is not None:
                self._finish(job.task, done)
            return
        if o.kind is A.PASSED:  # the gate job listed the items
            self.status[job.task] = RUNNING
            done = self.fan_outs.start(job.task, job.kwargs, job.first_started, o.value,
                                       self.catcher)
            if done is not None:
                self._finish(job.task, done)
            return
        i = job.task
        if o.kind is A.SUCCEEDED and self.replayer is not None:
            self.replayer.succeeded(o)
        successor = o.next_job
        if successor is not None:
            self.status[successor.task] = RUNNING  # so finishing i does not queue it again
        self._finish(i, self._result_of(o))
        if o.attempts > 1 and o.started_at is not None:
            self.last_attempt_started[job.td.name] = o.started_at
        if successor is not None:
            self._start_event(successor.task, 1)

    def _result_of(self, o: Outcome) -> StepResult:
        """The final result of a task from the verdict of its last attempt."""
        job = o.job
        started = job.first_started or o.started_at
        return StepResult(job.td.name, _STATE_OF[o.kind], o.value, o.error, None,
                          o.attempts, job.key, False, o.reason, o.traceback, started,
                          o.finished_at, None, bool(self.graph.detached[job.task]),
                          SkipCause.GATE if o.kind is A.SKIPPED else None)

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.reporter.warning(message)

    def _retry(self, o: Outcome) -> None:
        job = o.job
        self.retries.append(FailedAttempt(job.task, job.item, job.attempt, o.started_at,
                                          o.finished_at,
                                          o.error if o.error is not None else o.reason))
        if self.emit:
            duration = None
            if o.finished_at is not None and o.started_at is not None:
                duration = (o.finished_at - o.started_at) * 1000
            self.emit(TaskRetrying(time.time(), job.td.name, job.attempt, 1 + job.td.retry,
                                   o.retry_in or 0.0, o.error, o.reason, job.item,
                                   duration_ms=duration,
                                   item_repr=safe_repr(job.item_value, 40)
                                   if job.mode == A.ITEM else None))
        self.admission.retry_later(job.retry_job(), o.retry_in or 0.0)

    # ----- finishing ----------------------------------------------------------

    def _skipped(self, i: int, cause: SkipCause, about: str) -> StepResult:
        now = time.time()
        return StepResult(self.graph.tasks[i].name, SKIPPED, reason=skip_reason(cause, about),
                          step_key=None if self.keys is None else self.keys[i],
                          started_at=now, finished_at=now,
                          detached=bool(self.graph.detached[i]), skip_cause=cause)

    def _finish(self, i: int, result: StepResult) -> None:
        """Record a final result and propagate it. Re-entrant calls are queued,
        so long chains of skips or instant tasks never deepen the stack."""
        self._finishing.append((i, result))
        if self._in_finish:
            return
        self._in_finish = True
        try:
            while self._finishing:
                self._finish_one(*self._finishing.pop())
        finally:
            self._in_finish = False

    def _finish_one(self, i: int, result: StepResult) -> None:
        self.results[i] = result
        g = self.graph
        detached = g.detached[i]
        state = result.state
        released, blocked = self.ready_set.done(i, state is SUCCEEDED)
        if self.emit:
            self.running_since.pop(i, None)
            self.emit(result_event(result, bool(detached),
                                   None if result.items is None
                                   else g.tasks[i].allowed_failures(len(result.items))))
        if state is not SUCCEEDED:
            if state is FAILED and not detached and self.fail_fast:
                self.shared.stop(f"fail_fast: '{result.name}' failed")
                if self.stop_seen is None:
                    self.stop_seen = self.shared.stop_reason
            cause = (SkipCause.DEPENDENCY_FAILED if state is FAILED
                     else SkipCause.DEPENDENCY_SKIPPED)
            for j in blocked:
                self._finishing.append((j, self._skipped(j, cause, result.name)))
        for j in released:
            self._enqueue_task(j)

    # ----- shutting down ------------------------------------------------------

    def _keep_finished(self) -> None:
        """After Ctrl-C: keep the results that already came back, start nothing.

        Items that finished in an unfinished for_each task are kept too
        (``unfinished_items``), so resume() does not run them again.
        """
        inbox = self.shared.inbox
        while not inbox.empty():
            o = inbox.get_nowait()
            if o is _INTERRUPT or o is WAKE or o.kind not in _STATE_OF or o.job.settled:
                continue
            job = o.job
            job.settled = True
            if o.kind is A.SUCCEEDED and self.replayer is not None:
                self.replayer.record(o)
            if job.mode == A.ITEM:
                self.fan_outs.keep(o)
                continue
            if self.results[job.task] is None:
                self.results[job.task] = self._result_of(o)

    def unfinished_items(self) -> dict[int, list[ItemResult | None]]:
        """index -> ItemResults so far (None: not finished) of for_each tasks cut short."""
        return self.fan_outs.unfinished_items()

    def _close(self) -> None:
        self.shared.closed = True  # a worker finishing late must not write to the journal
        self.admission.close()
        self.runner.close()
        if self.replayer is not None:
            self.replayer.close()  # item lines still held (group commit); the index


def run_ok(graph: Graph, results: Sequence[StepResult | None]) -> bool:
    """``Flow.ok``: no main task FAILED, and every main task SUCCEEDED or was
    SKIPPED by a gate — its own ``when`` returned falsy, or it was skipped only
    because dependencies were skipped that way."""
    gated = bytearray(graph.main_count)
    for i in range(graph.main_count):  # plan order: dependencies come first
        r = results[i]
        if r is None or r.state is StepState.FAILED:
            return False
        if r.state is StepState.SUCCEEDED:
            continue
        if r.skip_cause is SkipCause.GATE:
            gated[i] = 1
            continue
        deps = graph.deps[i]
        if r.skip_cause is SkipCause.DEPENDENCY_SKIPPED and any(gated[d] for d in deps) and all(
                gated[d] or (results[d] is not None
                             and results[d].state is StepState.SUCCEEDED)  # type: ignore[union-attr]
                for d in deps):
            gated[i] = 1
            continue
        return False
    return True


def plan_fusion(graph: Graph, pending: list[int], status: bytearray, fused: Any,
                task_inputs: Callable[[int], dict[str, Any] | None]) -> None:
    """Chain fusion: ``fused[i] = s`` when pending task i's only dependent s has no
    other dependency and nothing the scheduler must see between the two (no
    timeout, Limit, for_each, coroutine, detached task, flow input or gate input)."""
    g = graph
    for i in pending:
        a = g.tasks[i]
        if len(g.dependents[i]) != 1 or a.detached or a.timeout_s is not None:
            continue
        s = g.dependents[i][0]
        td = g.tasks[s]
        if (len(g.deps[s]) == 1 and status[s] != DONE and not td.detached
                and not td.is_async and td.for_each is None and td.limit is None
                and td.timeout_s is None and not task_inputs(s)
                and s not in g.gate_inputs):
            fused[i] = s


def result_event(r: StepResult, detached: bool, allowed: int | None) -> Any:
    """The event that tells a task's final result."""
    now = time.time()
    if r.state is SUCCEEDED:
        # (a replayed for_each task's items are not read just to be reported)
        return TaskSucceeded(now, r.name, r.attempts, r.duration_ms, detached,
                             r.items if r.value_loaded else None, allowed)
    if r.state is FAILED:
        return TaskFailed(now, r.name, r.attempts, r.duration_ms, r.error, r.reason,
                          detached, r.items, allowed)
    return TaskSkipped(now, r.name, r.reason or "", detached)


def flow_finished(graph: Graph, results: Sequence[StepResult | None], started: float,
                  interrupted: bool) -> FlowFinished:
    """The event that ends a run: counts by state, and whether it is ``ok``."""
    counts = {s.value: 0 for s in StepState}
    for r in results:
        if r is not None:
            counts[r.state.value] += 1
    ok = not interrupted and run_ok(graph, results)
    return FlowFinished(time.time(), ok, (time.time() - started) * 1000, counts, interrupted)
