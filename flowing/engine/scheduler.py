"""The scheduler: runs a checked ``Graph`` through one ``Runner``.

Scheduling policy
-----------------
* eager (default): a task is released the moment all of its own dependencies
  have SUCCEEDED; it never waits for unrelated tasks. Released tasks start in
  release order (FIFO) as slots free up.
* layers: a task is also held until every task of the earlier layers has
  finished, as the original flowing did.
* Detached tasks are held until every main task has finished, then run in
  dependency order among themselves. They never trigger fail_fast.
* A task whose dependency FAILED or was SKIPPED is SKIPPED at once, with a
  reason naming that dependency.
* fail_fast: once a main task has FAILED for good, no new main task starts.
  Started tasks (retries and for_each items included) run to the end; tasks
  that never started are SKIPPED with a reason naming the failure. "Started"
  means handed to the runner: the scheduler thread decides it, from the
  failures it has taken off the inbox, when it hands a task over; workers
  never skip a job they were handed. So tasks ready together are handed over
  together (as far as ``max_workers`` allows, see ``capacity``) and all run,
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
* At most ``max_workers`` jobs are in flight. A task's ``Limit`` further
  bounds its bodies in flight and their start rate across every flow of the
  process (jobs wait for it in FIFO order). A sync body that timed out keeps
  its Limit slot until it really ends, or ``linger_grace`` seconds past its
  deadline (then with one warning naming the task); its worker slot is free
  at the deadline.
* A failed attempt that may be retried frees its slot and comes back after
  its backoff through a timer; waiting never holds a worker.
* Chain fusion (own threads, no journal, no timeouts): when a task's only
  dependent has no other dependency, the worker that finishes the task runs
  the dependent next, without a round trip through the scheduler.
* Every job produces exactly one verdict: attempts never raise (attempt.py),
  and a timed job whose verdict has not arrived well after its deadline is
  failed here (``overdue``) and its late verdict ignored. So ``run()``
  always returns.

State
-----
Everything below is owned by the scheduler thread (the one that called
``run()``); workers never touch it.

``results[i]``      the StepResult of task i, once it has one
``status[i]``       PENDING -> (HELD) -> QUEUED -> RUNNING -> DONE
``waiting[i]``      dependencies of i that have not succeeded yet
``replayer``        journaled runs: replay decisions, value digests and journal
                    writes (``replay.Replayer``); None without a journal
``ready``           tasks released (by index) and jobs (retries, items) waiting
                    for a slot (FIFO); a task's Job is made when it starts
``timers``          heap of (due, seq, job): retries after their backoff, and
                    wake-ups for rate limits (job None)
``overdue``         heap of (due, seq, job): timed jobs to fail if their verdict
                    never comes
``parked``          per Limit, the jobs waiting for it (FIFO)
``fanouts[i]``      per-item progress of a running ``for_each`` task
``held``            tasks released but held back by the schedule (detached
                    tasks before the main graph ends, or later layers)
``in_flight``       jobs handed to the runner and not yet settled

Shared with workers (``runners.base.Shared``): the ``inbox`` queue through which
every outcome comes back, the ``stopping`` event, and the journal.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import queue
import time
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ItemsFailed
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
from ..results import Failed, ItemResult, StepResult, StepState
from ..runners import attempt as A
from ..runners.attempt import Job, Outcome
from ..runners.base import WAKE, Runner, Shared
from ..runners.calls import RemoteValue
from ..runners.local import open_runner
from ..text import item_failure, safe_repr

if TYPE_CHECKING:
    from ..graph import Graph
    from ..limits import Limit
    from ..observe.reporter import Reporter
    from ..replay.policy import JournalPlan
    from ..replay.replayer import Replayer

PENDING, HELD, QUEUED, RUNNING, DONE = range(5)

SUCCEEDED, FAILED, SKIPPED = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED
_STATE_OF = {A.SUCCEEDED: SUCCEEDED, A.FAILED: FAILED, A.SKIPPED: SKIPPED}

# The longest the scheduler sleeps without looking around (timers, progress).
MAX_WAIT_S = 1.0

# A sync body that timed out keeps its Limit slot while it still runs, for at most
# this long after its deadline, or timeout_s if that is longer (see _give_back).
LINGER_GRACE_S = 5.0


def linger_grace(timeout_s: float | None) -> float:
    """Seconds past its deadline a timed-out body may keep its Limit slot."""
    return max(LINGER_GRACE_S, timeout_s or 0.0)


# Put in the inbox by our SIGINT handler to wake the loop.
_INTERRUPT = object()

class _FanOut:
    """Progress of one running for_each task."""

    __slots__ = ("items", "remaining", "started_at", "stopped", "running")

    def __init__(self, n: int) -> None:
        self.items: list[ItemResult | None] = [None] * n  # per item, as they finish
        self.remaining = n
        self.started_at: float | None = None
        self.stopped = False  # an item ended while told to stop: the list is not journaled
        self.running = 0  # item jobs handed to the runner, verdict not yet taken


class Scheduler:
    """Runs one pass over a graph. Create one per run()/resume()."""

    def __init__(self, graph: Graph, *, max_workers: int, fail_fast: bool, schedule: str,
                 executor: Any, reporter: Reporter, plan: JournalPlan | None = None,
                 inputs: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self.max_workers = max_workers
        self.fail_fast = fail_fast
        self.layered = schedule == "layers"
        self.reporter = reporter
        self.emit = reporter.emit if reporter.active else None
        self.journal = plan.journal if plan is not None else None
        self.keys = plan.keys if plan is not None else None
        self.inputs = inputs or {}
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
        has_async = any(td.is_async for td in graph.tasks)
        self.runner: Runner = open_runner(executor, max_workers, self.shared, has_async)
        self.status = bytearray(n)
        self.waiting = array("i", bytes(4 * n))  # set for pending tasks in _prepare
        # released tasks (by index) and retries/items (as Jobs) waiting for a slot, FIFO
        self.ready: collections.deque[Job | int] = collections.deque()
        self.timers: list[tuple[float, int, Job | None]] = []
        self.overdue: list[tuple[float, int, Job]] = []
        self.seq = itertools.count()
        self.parked: dict[Limit, collections.deque[Job]] = {}
        self.busy_limits: set[Limit] = set()
        self.admitted: set[Job] = set()  # jobs holding a Limit slot, until settled
        self.fanouts: dict[int, _FanOut] = {}
        self.partial_items: dict[int, list[ItemResult | None]] = {}
        self.held: dict[int, list[int]] = {}  # layer -> tasks waiting for it to open
        self.held_detached: list[int] = []
        self.layer_left = [0] * len(graph.layers)
        self.open_layer = 0
        self.in_flight = 0
        # Own daemon threads bound the bodies in flight by their number, so a few
        # jobs may wait queued at the runner and a worker never idles waiting for the
        # scheduler. Coroutines and rate-limited jobs need a free slot right away.
        self.capacity = max_workers
        if self.runner.queues_ahead and not has_async:
            self.capacity = 2 * max_workers
        self.unfinished = 0
        self.main_left = 0
        self.interrupted = False
        self.running_since: dict[int, float] = {}  # task -> start, kept only when reporting
        self.next_tick = 0.0
        # (task, item, attempt, started, finished, error) of failed attempts
        self.retries: list[tuple[int, int | None, int, float | None, float | None, Any]] = []
        self.last_attempt_started: dict[str, float] = {}  # name -> start, for retried tasks
        self._finishing: list[tuple[int, StepResult]] = []
        self._in_finish = False
        self._warned: set[str] = set()
        self.catcher = Catcher()  # the run's Ctrl-C handler (set by run())
        # fail_fast as this thread saw it: set when it takes a main task's failure, and
        # read only when it hands a task to the runner (see _not_started)
        self.stop_seen: str | None = None
        self._lingered: set[str] = set()  # tasks warned about a body outlasting its grace
        inbox = self.shared.inbox
        self._wake = lambda: inbox.put(WAKE)  # a Limit slot freed (maybe by another flow)

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
        self.partial_items = partial_items
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
                counts = {s.value: 0 for s in StepState}
                for r in self.results:
                    if r is not None:
                        counts[r.state.value] += 1

                ok = not self.interrupted and run_ok(g, self.results)
                emit(FlowFinished(time.time(), ok, (time.time() - started) * 1000, counts,
                                  self.interrupted))
        return self.results

    def _prepare(self, kept: dict[int, StepResult]) -> None:
        g, results, status = self.graph, self.results, self.status
        for i, r in kept.items():
            results[i] = r
            status[i] = DONE
        pending = [i for i in range(len(g)) if status[i] != DONE]
        self.unfinished = len(pending)
        waiting = self.waiting
        for i in pending:
            left = 0
            for d in g.deps[i]:
                if status[d] != DONE:
                    left += 1
            waiting[i] = left
            if not g.detached[i]:
                self.main_left += 1
            self.layer_left[g.layer[i]] += 1
        if not self.layered and self.runner.fuses and self.journal is None:
            self._plan_fusion(pending)
        self._advance_layers()
        for i in pending:
            if self.waiting[i] == 0:
                self._release(i)

    def _plan_fusion(self, pending: list[int]) -> None:
        g, status, fused = self.graph, self.status, self.shared.fused_next
        for i in pending:
            a = g.tasks[i]
            if len(g.dependents[i]) != 1 or a.detached or a.timeout_s is not None:
                continue
            s = g.dependents[i][0]
            td = g.tasks[s]
            if (len(g.deps[s]) == 1 and status[s] != DONE and not td.detached
                    and not td.is_async and td.for_each is None and td.limit is None
                    and td.timeout_s is None and not self._task_inputs(s)
                    and s not in g.gate_inputs):
                fused[i] = s

    # ----- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        inbox = self.shared.inbox
        while self.unfinished:
            if self.catcher.seen:
                raise KeyboardInterrupt
            self._dispatch()
            if not self.unfinished:
                break
            if not self.in_flight and not self.timers and not self.parked_any():
                self._stalled()
            try:
                outcome = inbox.get(timeout=self._wait_time())
            except queue.Empty:
                outcome = None
            while outcome is not None:
                if outcome is _INTERRUPT:
                    raise KeyboardInterrupt
                if outcome is not WAKE:
                    self._on_outcome(outcome)
                outcome = None if inbox.empty() else inbox.get_nowait()
            if self.timers:
                self._fire_timers()
            if self.overdue:
                self._fail_overdue()
            if self.emit and time.monotonic() >= self.next_tick:
                self._tick()

    def parked_any(self) -> bool:
        return any(self.parked.values())

    def _tick(self) -> None:
        self.next_tick = time.monotonic() + MAX_WAIT_S
        g = self.graph
        done = len(g) - self.unfinished
        running = {g.tasks[i].name: t for i, t in self.running_since.items()}
        now = time.time()
        # jobs queued ahead at the runner are not running yet: at most max_workers are
        items = {g.tasks[i].name: (len(fan.items) - fan.remaining, len(fan.items),
                                   min(fan.running, self.max_workers), fan.started_at or now)
                 for i, fan in self.fanouts.items()}
        self.reporter.tick(done, len(g), running, items)

    def _wait_time(self) -> float:
        due = MAX_WAIT_S
        now = time.monotonic()
        if self.timers:
            due = min(due, max(0.0, self.timers[0][0] - now))
        if self.overdue:
            due = min(due, max(0.0, self.overdue[0][0] - now))
        return due

    def _fire_timers(self) -> None:
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            job = heapq.heappop(timers)[2]
            if job is not None:
                self._queue(job)

    def _fail_overdue(self) -> None:
        """A timed job whose verdict never came (a blocked event loop, a hung engine):
        fail it here, at its deadline plus a grace period."""
        now = time.monotonic()
        while self.overdue and self.overdue[0][0] <= now:
            _, _, job = heapq.heappop(self.overdue)
            if job.settled:
                continue
            deadline = job.deadline
            timeout = job.td.timeout_s or 0.0
            grace = max(1.0, 0.1 * timeout)
            if deadline is None or time.time() < deadline + grace:
                # not started yet (queued at the runner), or not overdue yet: look again later
                wait = grace if deadline is None else deadline + grace - time.time()
                heapq.heappush(self.overdue, (now + max(0.05, wait), next(self.seq), job))
                continue
            job.cancelled = True
            started = job.first_started or time.time()
            if job.mode == A.GATE:  # stuck listing its items (a source blocked in next())
                outcome = Outcome(job, A.FAILED, error=A.timeout_error(job),
                                  reason="listing the for_each items timed out",
                                  started_at=started, finished_at=time.time())
            else:
                outcome = A.verdict(job, None, A.timeout_error(job), started)
            outcome.warning = (f"{job.label()}: no verdict {grace:g}s after its deadline; "
                               f"failed by the scheduler and abandoned")
            self._on_outcome(outcome)

    def _stalled(self) -> None:
        names = [self.graph.tasks[i].name for i in range(len(self.graph))
                 if self.status[i] != DONE]
        raise RuntimeError(f"flowing: internal error, the run stalled with nothing running; "
                           f"unfinished tasks: {', '.join(names[:10])}. Please report this.")

    # ----- releasing and starting ---------------------------------------------

    def _release(self, i: int) -> None:
        """All dependencies of i succeeded: queue it unless the schedule holds it."""
        if self.status[i] != PENDING:
            return
        g = self.graph
        if self.layered:
            if g.layer[i] > self.open_layer:
                self.status[i] = HELD
                self.held.setdefault(g.layer[i], []).append(i)
                return
        elif g.detached[i] and self.main_left:
            self.status[i] = HELD
            self.held_detached.append(i)
            return
        self._enqueue_task(i)

    def _task_inputs(self, i: int) -> dict[str, Any] | None:
        names = getattr(self.graph, "inputs", None)
        if not names or not names[i]:
            return None
        return {n: self.inputs[n] for n in names[i]}

    def _enqueue_task(self, i: int) -> None:
        g = self.graph
        td = g.tasks[i]
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
        if self._not_started(i):
            return
        self.status[i] = QUEUED
        if td.limit is None or td.for_each is not None:
            # Only the index waits in ``ready``: its Job (and the kwargs dict) is made
            # when it starts, so a wide graph never holds one per released task.
            self.ready.append(i)
        else:
            self._queue(self._make_job(i))  # waits for its Limit

    def _dep_values(self, i: int) -> dict[str, Any]:
        kwargs = {}
        results = self.results
        for d in self.graph.deps[i]:
            r = results[d]
            assert r is not None
            # a value kept on the cluster goes to the dependent as it is (runners.calls.RemoteValue)
            kwargs[r.name] = r._value if type(r._value) is RemoteValue else r.value
        return kwargs

    def _make_job(self, i: int) -> Job:
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

    def _queue(self, job: Job) -> None:
        limit = job.td.limit
        if limit is not None and job.mode != A.GATE:
            parked = self.parked.get(limit)
            if parked is None:
                parked = self.parked[limit] = collections.deque()
            parked.append(job)
            self.busy_limits.add(limit)
        else:
            self.ready.append(job)

    def _dispatch(self) -> None:
        if self.in_flight >= self.capacity:
            return
        if self.busy_limits:
            self._dispatch_limited()
        ready, capacity = self.ready, self.capacity
        while ready and self.in_flight < capacity:
            entry = ready.popleft()
            if type(entry) is int:  # a released task: its first attempt starts now
                if self._not_started(entry):
                    continue
                entry = self._make_job(entry)
            self._start(entry)  # type: ignore[arg-type]

    def _dispatch_limited(self) -> None:
        now = time.monotonic()
        for limit in list(self.busy_limits):
            parked = self.parked[limit]
            # a rate counts starts, so its jobs must start the moment they are admitted
            room = self.max_workers if limit.rate_count else self.capacity
            while parked and self.in_flight < room:
                if self._stopped_before_start(parked[0]):
                    parked.popleft()
                    continue
                wait = limit.try_acquire(now)
                if wait is None:
                    self.admitted.add(parked[0])
                if wait is not None:
                    if wait == float("inf"):
                        limit.add_waiter(self._wake)  # blocked on concurrency, maybe by another flow
                    else:
                        heapq.heappush(self.timers, (now + wait, next(self.seq), None))
                    break
                self._start(parked.popleft())
            if not parked:
                self.busy_limits.discard(limit)
                limit.remove_waiter(self._wake)

    def _stopped_before_start(self, job: Job) -> bool:
        """fail_fast: a main task that has not started yet is skipped instead."""
        return job.attempt == 1 and job.mode != A.ITEM and self._not_started(job.task)

    def _not_started(self, i: int) -> bool:
        """The one fail_fast boundary: main task i, about to be handed to a runner, is
        skipped if this thread has seen a main task fail (``stop_seen``). It is asked
        only here, never by a worker, so tasks handed over together before the
        failure was seen all run, whichever thread gets to them first."""
        if self.stop_seen is None or self.graph.detached[i]:
            return False
        self._finish(i, self._skipped(i, f"not started: {self.stop_seen}"))
        return True

    def _start(self, job: Job) -> None:
        if job.td.limit is None or job.mode == A.GATE:
            if self._stopped_before_start(job):
                return
        self.in_flight += 1
        if job.mode == A.ITEM:
            fan = self.fanouts.get(job.task)
            if fan is not None:
                fan.running += 1
        else:
            self.status[job.task] = RUNNING
            if self.in_flight <= self.max_workers:
                self._start_event(job.task, job.attempt)
            elif self.emit:
                # queued behind busy workers: it may yet be skipped, so the worker
                # says when it really starts
                job.announce = True
        if job.td.timeout_s is not None:  # a GATE job's listing counts against it too
            due = time.monotonic() + job.td.timeout_s + max(1.0, 0.1 * job.td.timeout_s)
            heapq.heappush(self.overdue, (due, next(self.seq), job))
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
            return  # failed by _fail_overdue already: a late verdict is ignored
        if o.kind is A.STARTED:
            self._start_event(job.task, job.attempt, o.started_at)
            return
        job.settled = True
        if o.warning:
            self._warn(o.warning)
        if o.next_job is None:
            self.in_flight -= 1
        if job.mode == A.ITEM:
            fan = self.fanouts.get(job.task)
            if fan is not None:
                fan.running -= 1
        limit = job.td.limit
        if limit is not None and job.mode != A.GATE:
            self.admitted.discard(job)
            self._give_back(job, limit)
            if self.parked.get(limit):
                self.busy_limits.add(limit)
        if o.kind is A.RETRY:
            self._retry(o)
            return
        if job.mode == A.ITEM:
            self._on_item(o)
            return
        if o.kind is A.PASSED:
            self._fan_out(job.task, job.kwargs, job.first_started, o.value)
            return
        i = job.task
        if o.kind is A.SUCCEEDED:
            if self.replayer is not None:
                self.replayer.succeeded(o)
        started = job.first_started or o.started_at
        result = StepResult(job.td.name, _STATE_OF[o.kind], o.value, o.error, None,
                            o.attempts, job.key, False, o.reason, o.traceback, started,
                            o.finished_at, None, bool(self.graph.detached[i]))
        if o.attempts > 1 and o.started_at is not None:
            self.last_attempt_started[result.name] = o.started_at
        successor = o.next_job
        if successor is not None:
            self.status[successor.task] = RUNNING  # so finishing i does not queue it again
        self._finish(i, result)
        if successor is not None:
            self._start_event(successor.task, 1)

    def _give_back(self, job: Job, limit: Limit) -> None:
        """Free the Limit slot of a job whose verdict came. A sync body that timed out
        but still runs (``job.abandoned``) keeps it until it really ends, so the
        Limit stays a true bound on what the service sees; one still running
        ``linger_grace`` seconds after its deadline gives it back with a warning."""
        abandoned = job.abandoned
        if abandoned is None or limit.max_concurrency is None:
            limit.release()  # a rate counts starts only: nothing to hold
            return
        grace = linger_grace(job.td.timeout_s)
        reporter, name = self.reporter, job.td.name
        warned = self._lingered

        def overstayed() -> None:
            if name not in warned:
                warned.add(name)
                reporter.warning(
                    f"task '{name}': body still running {grace:g}s past its timeout; its "
                    f"Limit slot is given back, so one more may start; make the body "
                    f"honour timeout_s (e.g. pass it on to the call)")

        limit.release_when(abandoned.then, grace, overstayed)

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.reporter.warning(message)

    def _retry(self, o: Outcome) -> None:
        job = o.job
        self.retries.append((job.task, job.item, job.attempt, o.started_at, o.finished_at,
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
        heapq.heappush(self.timers, (time.monotonic() + (o.retry_in or 0.0), next(self.seq),
                                     job.retry_job()))

    # ----- for_each -----------------------------------------------------------

    def _fan_out(self, i: int, kwargs: dict[str, Any], started: float | None,
                 items: list[Any]) -> None:
        """The gate job passed and listed the items (on a worker, inside the
        attempt's boundary: a source that iterates forever or raises never
        reaches this thread): journal lookups by content, then one job per item."""
        td = self.graph.tasks[i]
        source_name = td.for_each
        assert source_name is not None
        self.status[i] = RUNNING
        fan = self.fanouts[i] = _FanOut(len(items))
        fan.started_at = started
        previous = self.partial_items.get(i)
        if previous is not None and len(previous) != len(items):
            previous = None
        keys = None if self.replayer is None else self.replayer.items(i)
        others = None if keys is None else keys.in_digest
        item_store = keys is not None and keys.store
        task_inputs = self._task_inputs(i)
        catcher = self.catcher
        for index, item in enumerate(items):
            if not index & 1023 and catcher.seen:
                raise KeyboardInterrupt  # Ctrl-C: a huge fan-out must not delay it
            prior = previous[index] if previous is not None else None
            if prior is not None and prior.state is SUCCEEDED:
                fan.items[index] = prior
                fan.remaining -= 1
                continue
            key = None
            if keys is not None:
                key, replayed = keys.lookup(index, item)
                if replayed is not None:
                    fan.items[index] = replayed
                    fan.remaining -= 1
                    continue
            item_kwargs = dict(kwargs)
            item_kwargs[source_name] = item
            self._queue(Job(i, td, item_kwargs, mode=A.ITEM, item=index, gates=False, key=key,
                            signals=self.shared, inputs=task_inputs, item_value=item,
                            in_digest=others, store=item_store and key is not None))
        if not fan.remaining:
            self._complete_fan(i)

    def _on_item(self, o: Outcome) -> None:
        job = o.job
        i = job.task
        fan = self.fanouts[i]
        if o.kind is A.SUCCEEDED and self.replayer is not None:
            self.replayer.record(o)
        if o.stopped:
            fan.stopped = True
        assert job.item is not None
        fan.items[job.item] = ItemResult(job.item, _STATE_OF[o.kind], o.value, o.error,
                                         o.attempts, False, o.traceback,
                                         job.first_started, o.finished_at, job.item_value)
        if fan.started_at is None or (job.first_started and job.first_started < fan.started_at):
            fan.started_at = job.first_started
        fan.remaining -= 1
        if not fan.remaining:
            self._complete_fan(i)

    def _complete_fan(self, i: int) -> None:
        """All items of for_each task i are done: its result.

        With ``allow_failed_items``, a task with at most that many failed items
        SUCCEEDS, holding a ``Failed`` at each failed item's position; it is then
        not journaled as a whole (its succeeded items were, one by one), so the
        next run replays them and retries only the failed ones.
        """
        if self.replayer is not None:
            self.replayer.flush()  # its items' lines (group commit): acknowledged from here on
        fan = self.fanouts.pop(i)
        td = self.graph.tasks[i]
        items: list[ItemResult] = [r for r in fan.items if r is not None]
        now = time.time()
        ends = [r.finished_at for r in items if r.finished_at]
        finished = max(ends) if ends else now
        started = fan.started_at or finished
        failures = [r for r in items if r.state is not SUCCEEDED]
        allowed = td.allowed_failures(len(items))
        values = [r.value for r in items]
        attempts = max((r.attempts for r in items), default=0)
        key = None if self.keys is None else self.keys[i]
        detached = bool(self.graph.detached[i])
        if failures and allowed is not None and len(failures) <= allowed:
            values = [r.value if r.state is SUCCEEDED else Failed(r.index, r.item, r.error)
                      for r in items]
            result = StepResult(td.name, SUCCEEDED, values, None, (finished - started) * 1000,
                                attempts, key, False, None, None, started, finished, items,
                                detached)
        elif not failures:
            result = StepResult(td.name, SUCCEEDED, values, None, (finished - started) * 1000,
                                attempts, key, all(r.cached for r in items) and bool(items),
                                None, None, started, finished, items, detached)
            if self.replayer is not None:
                self.replayer.fan_succeeded(i, values, items, fan.stopped)
        else:
            first = failures[0]
            beyond = "" if allowed is None else f", more than allowed ({allowed})"
            error = ItemsFailed(
                f"task '{td.name}': {len(failures)} of {len(items)} items failed{beyond}; "
                f"first: {item_failure(first.index, first.item, first.error)}", failures)
            result = StepResult(td.name, FAILED, values, error, (finished - started) * 1000,
                                attempts, key, False, f"{len(failures)} item(s) failed"
                                + ("" if allowed is None else f" (allowed {allowed})"),
                                first.traceback, started, finished, items, detached)
        self._finish(i, result)

    # ----- finishing ----------------------------------------------------------

    def _skipped(self, i: int, reason: str) -> StepResult:
        now = time.time()
        return StepResult(self.graph.tasks[i].name, SKIPPED, reason=reason,
                          step_key=None if self.keys is None else self.keys[i],
                          started_at=now, finished_at=now,
                          detached=bool(self.graph.detached[i]))

    def _failed(self, i: int, error: BaseException, started: float | None) -> StepResult:
        now = time.time()
        started = started or now
        return StepResult(self.graph.tasks[i].name, FAILED, error=error,
                          duration_ms=(now - started) * 1000,
                          step_key=None if self.keys is None else self.keys[i],
                          traceback=A.format_traceback(error), started_at=started,
                          finished_at=now, detached=bool(self.graph.detached[i]))

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
        g, status = self.graph, self.status
        self.results[i] = result
        status[i] = DONE
        self.unfinished -= 1
        detached = g.detached[i]
        if not detached:
            self.main_left -= 1
        self.layer_left[g.layer[i]] -= 1
        if self.emit:
            self.running_since.pop(i, None)
            self._result_event(result, bool(detached),
                               None if result.items is None
                               else g.tasks[i].allowed_failures(len(result.items)))
        if result.state is SUCCEEDED:
            waiting = self.waiting
            for j in g.dependents[i]:
                waiting[j] -= 1
                if not waiting[j]:
                    self._release(j)
        else:
            if result.state is FAILED and not detached and self.fail_fast:
                self.shared.stop(f"fail_fast: '{result.name}' failed")
                if self.stop_seen is None:
                    self.stop_seen = self.shared.stop_reason
            verb = "failed" if result.state is FAILED else "was skipped"
            for j in g.dependents[i]:
                if status[j] == PENDING:
                    status[j] = QUEUED  # claimed: a second failed dependency must not skip it twice
                    self._finishing.append(
                        (j, self._skipped(j, f"dependency '{result.name}' {verb}")))
        if self.layered:
            self._advance_layers()
        elif not self.main_left and self.held_detached:
            held, self.held_detached = self.held_detached, []
            for j in held:
                self._enqueue_task(j)

    def _advance_layers(self) -> None:
        layers = len(self.layer_left)
        opened = False
        while self.open_layer < layers - 1 and not self.layer_left[self.open_layer]:
            self.open_layer += 1
            opened = True
        if opened and self.layered:
            held = self.held.pop(self.open_layer, ())
            for j in held:
                self._enqueue_task(j)

    def _result_event(self, r: StepResult, detached: bool, allowed: int | None) -> None:
        assert self.emit is not None
        now = time.time()
        if r.state is SUCCEEDED:
            # (a replayed for_each task's items are not read just to be reported)
            self.emit(TaskSucceeded(now, r.name, r.attempts, r.duration_ms, detached,
                                    r.items if r.value_loaded else None, allowed))
        elif r.state is FAILED:
            self.emit(TaskFailed(now, r.name, r.attempts, r.duration_ms, r.error, r.reason,
                                 detached, r.items, allowed))
        else:
            self.emit(TaskSkipped(now, r.name, r.reason or "", detached))

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
                fan = self.fanouts.get(job.task)
                if fan is not None and job.item is not None and fan.items[job.item] is None:
                    fan.items[job.item] = ItemResult(
                        job.item, _STATE_OF[o.kind], o.value, o.error, o.attempts, False,
                        o.traceback, job.first_started, o.finished_at, job.item_value)
                continue
            if self.results[job.task] is None:
                started = job.first_started or o.started_at
                self.results[job.task] = StepResult(
                    job.td.name, _STATE_OF[o.kind], o.value, o.error,
                    (o.finished_at - started) * 1000 if started and o.finished_at else 0.0,
                    o.attempts, job.key, False, o.reason, o.traceback, started, o.finished_at,
                    None, bool(self.graph.detached[job.task]))

    def unfinished_items(self) -> dict[int, list[ItemResult | None]]:
        """index -> ItemResults so far (None: not finished) of for_each tasks cut short."""
        return {i: list(fan.items) for i, fan in self.fanouts.items()}

    def _close(self) -> None:
        self.shared.closed = True  # a worker finishing late must not write to the journal
        for limit in self.parked:
            limit.remove_waiter(self._wake)
        # Ctrl-C: admitted jobs whose verdict will never be taken give their Limit
        # slot back now (the Limit is process-wide: later runs would wait forever)
        for job in self.admitted:
            if not job.settled and job.td.limit is not None:
                job.settled = True
                job.td.limit.release()
        self.admitted.clear()
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
        reason = r.reason or ""
        if reason.startswith(A.WHEN_SKIP):
            gated[i] = 1
            continue
        deps = graph.deps[i]
        if reason.startswith("dependency '") and any(gated[d] for d in deps) and all(
                gated[d] or (results[d] is not None
                             and results[d].state is StepState.SUCCEEDED)  # type: ignore[union-attr]
                for d in deps):
            gated[i] = 1
            continue
        return False
    return True
