"""The scheduler: runs a checked ``Graph`` on a bounded pool of workers.

Scheduling policy
-----------------
* eager (default): a task is released the moment all of its own dependencies
  have SUCCEEDED; it never waits for unrelated tasks. Released tasks start in
  release order (FIFO) as worker slots free up.
* layers: a task is also held until every task of the earlier layers has
  finished, as the original flowing did.
* Detached tasks are held until every main task has finished, then run in
  dependency order among themselves. They never trigger fail_fast.
* A task whose dependency FAILED or was SKIPPED is SKIPPED at once, with a
  reason naming that dependency.
* fail_fast: once a main task has FAILED for good, no new main task starts.
  Started tasks (retries and for_each items included) run to the end; tasks
  that never started are SKIPPED with a reason naming the failure.
* At most ``max_workers`` jobs are in flight: sync bodies on worker threads,
  coroutine bodies on one event loop. A task's ``Limit`` further bounds its
  bodies in flight and their start rate (jobs wait for it in FIFO order).
* A failed attempt that may be retried frees its slot and comes back after
  its backoff through a timer; waiting never holds a worker.
* Chain fusion: when a task's only dependent has no other dependency, the
  worker that finishes the task runs the dependent next, without a round
  trip through the scheduler (the dependent would be released at that very
  moment anyway, so the policy is unchanged). Only plain sync tasks fuse;
  the ``layers`` schedule never fuses.

State
-----
Everything below is owned by the scheduler thread (the one that called
``run()``); workers never touch it.

``results[i]``      the StepResult of task i, once it has one
``status[i]``       PENDING -> (HELD) -> QUEUED -> RUNNING -> DONE
``waiting[i]``      dependencies of i that have not succeeded yet
``ready``           jobs released and waiting for a worker slot (FIFO)
``timers``          heap of (due, seq, job): retries after their backoff, and
                    wake-ups for rate limits (job None)
``gates``           live counters of each Limit (``LimitGate``), with the jobs
                    parked behind it; ``busy_gates`` are those with parked jobs
``fanouts[i]``      per-item progress of a running ``for_each`` task
``held``            tasks released but held back by the schedule (detached
                    tasks before the main graph ends, or later layers)
``in_flight``       jobs handed to workers and not yet reported back

Shared with workers (``_Shared``): the ``inbox`` queue through which every
outcome comes back, the ``stopping`` event (set by a worker the instant a
main task fails for good under fail_fast, or by the scheduler on Ctrl-C;
workers read it before running a fused successor), and the journal, which
does its own locking.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import queue
import threading
import time
from array import array

from . import attempt as A
from .attempt import Job, Outcome, run_attempt, run_attempt_async
from .events import (
    FlowFinished,
    FlowStarted,
    TaskCached,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from .limits import LimitGate
from .results import ItemResult, StepResult, StepState

PENDING, HELD, QUEUED, RUNNING, DONE = range(5)

SUCCEEDED, FAILED, SKIPPED = StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED
_STATE_OF = {A.SUCCEEDED: SUCCEEDED, A.FAILED: FAILED, A.SKIPPED: SKIPPED}

# The longest the scheduler sleeps without looking around (timers, progress).
MAX_WAIT_S = 1.0

# Put in the inbox by our SIGINT handler to wake the loop.
_INTERRUPT = object()


class ItemsFailed(Exception):
    """Some items of a ``for_each`` task failed after their retries."""

    def __init__(self, message, failures):
        super().__init__(message)
        self.failures = failures  # the failed ItemResults, in input order


class _Shared:
    """What workers may see of a run."""

    __slots__ = ("inbox", "stopping", "stop_reason", "interrupted", "fail_fast", "journal",
                 "tasks", "keys", "dep_keys", "fused_next")

    def __init__(self, graph, fail_fast, journal, keys):
        self.inbox = queue.SimpleQueue()  # outcomes, workers -> scheduler
        self.stopping = threading.Event()  # no new main task may start
        self.stop_reason = None            # why: set once, before ``stopping``
        self.interrupted = False           # Ctrl-C: workers drop whatever is still queued
        self.fail_fast = fail_fast
        self.journal = journal
        self.tasks = graph.tasks
        self.keys = keys                   # step key per task, or None without a journal
        self.dep_keys = None if keys is None else [
            [keys[d] for d in ds] for ds in graph.deps]
        self.fused_next = array("i", [-1]) * len(graph)  # index of the fused successor, or -1

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopping.set()

    def record(self, outcome: Outcome) -> None:
        """Journal a success; called by whichever thread sees it first."""
        job = outcome.job
        if self.journal is None or job.key is None or outcome.journaled:
            return
        outcome.journaled = True
        if job.mode == A.ITEM:
            # the task's own dependencies too: the task may have no entry of its
            # own (some items failed), and ``journal forget`` must still reach its items
            self.journal.record(job.key, f"{job.td.name}[{job.item}]",
                                [self.keys[job.task]] + self.dep_keys[job.task],
                                outcome.value, "item")
        else:
            self.journal.record(job.key, job.td.name, self.dep_keys[job.task],
                                outcome.value, "task")


def _work(job: Job, shared: _Shared) -> None:
    """Worker entry: run a sync job, then any fused successors, reporting each."""
    while job is not None:
        if shared.interrupted:
            return
        if (shared.stopping.is_set() and job.attempt == 1 and job.mode != A.ITEM
                and not job.td.detached):
            # queued before fail_fast (or Ctrl-C) stopped the run: it never starts
            now = time.time()
            shared.inbox.put(Outcome(job, A.SKIPPED, reason=f"not started: {shared.stop_reason}",
                                     started_at=now, finished_at=now))
            return
        if job.announce:
            shared.inbox.put(Outcome(job, A.STARTED, started_at=time.time()))
        outcome = run_attempt(job)
        successor = None
        if outcome.kind is A.SUCCEEDED:
            shared.record(outcome)  # durable before any dependent starts
            if job.mode == A.TASK:
                s = shared.fused_next[job.task]
                if s >= 0 and not shared.stopping.is_set():
                    successor = Job(s, shared.tasks[s], {job.td.name: outcome.value},
                                    key=None if shared.keys is None else shared.keys[s])
                    outcome.next_job = successor
        elif (outcome.kind is A.FAILED and shared.fail_fast and job.mode != A.ITEM
              and not job.td.detached):
            shared.stop(f"fail_fast: '{job.td.name}' failed")
        shared.inbox.put(outcome)
        job = successor


class WorkerPool:
    """Daemon worker threads owned by one run.

    Daemon threads, unlike ``ThreadPoolExecutor``'s, never hold the
    interpreter open: a body still running after Ctrl-C or a timeout cannot
    delay process exit. Threads are started on demand, up to ``max_workers``.
    """

    def __init__(self, max_workers: int, shared: _Shared):
        self._jobs = queue.SimpleQueue()  # jobs, scheduler -> workers; None = exit
        self._threads: list[threading.Thread] = []
        self._max = max_workers
        self._shared = shared

    def submit(self, job: Job, in_flight: int) -> None:
        self._jobs.put(job)
        # Every thread may be busy with one of the other in-flight jobs.
        if len(self._threads) < in_flight and len(self._threads) < self._max:
            thread = threading.Thread(target=self._worker, daemon=True,
                                      name=f"flowing-worker-{len(self._threads)}")
            thread.start()
            self._threads.append(thread)

    def _worker(self) -> None:
        jobs, shared = self._jobs, self._shared
        while True:
            job = jobs.get()
            if job is None:
                return
            _work(job, shared)

    def shutdown(self) -> None:
        """Let idle workers exit; jobs still queued are dropped (only Ctrl-C leaves any)."""
        while not self._jobs.empty():
            self._jobs.get_nowait()
        for _ in self._threads:
            self._jobs.put(None)


class ExecutorPool:
    """Runs jobs on the caller's ``concurrent.futures.Executor`` (never shut down here)."""

    def __init__(self, executor, shared: _Shared):
        self._executor = executor
        self._shared = shared

    def submit(self, job: Job, in_flight: int) -> None:
        try:
            future = self._executor.submit(_work, job, self._shared)
        except Exception as exc:  # e.g. the executor was shut down
            self._refused(job, exc, "refused it")
            return
        # _work never raises, so a failed or cancelled future means the executor
        # itself could not run it (a process pool that cannot pickle, a shutdown).
        future.add_done_callback(lambda f: self._check(f, job))

    def _check(self, future, job: Job) -> None:
        if future.cancelled():
            self._refused(job, None, "cancelled it")
        elif future.exception() is not None:
            self._refused(job, future.exception(), "could not run it")

    def _refused(self, job: Job, exc, what: str) -> None:
        why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        error = RuntimeError(f"task '{job.td.name}': the executor {what}{why}; pass a "
                             f"running thread-based executor")
        now = time.time()
        self._shared.inbox.put(Outcome(job, A.FAILED, error=error, started_at=now,
                                       finished_at=now))

    def shutdown(self) -> None:
        pass


class AsyncRunner:
    """An event loop on a daemon thread, owned by one run, for coroutine bodies."""

    def __init__(self, shared: _Shared):
        self._shared = shared
        import asyncio  # imported on first use: it costs more than all of flowing

        self._loop = asyncio.new_event_loop()
        self._tasks: set = set()  # running asyncio tasks (loop thread only)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="flowing-event-loop")
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._loop.call_soon_threadsafe(self._spawn, job)

    def _spawn(self, job: Job) -> None:
        t = self._loop.create_task(run_attempt_async(job))
        self._tasks.add(t)
        t.add_done_callback(self._done)

    def _done(self, t) -> None:
        self._tasks.discard(t)
        if not t.cancelled():
            outcome = t.result()
            if (outcome.kind is A.FAILED and self._shared.fail_fast
                    and outcome.job.mode != A.ITEM and not outcome.job.td.detached):
                self._shared.stop(f"fail_fast: '{outcome.job.td.name}' failed")
            self._shared.inbox.put(outcome)

    def close(self) -> None:
        """Cancel what still runs (its ``finally`` blocks get one loop turn), stop the loop."""
        def stop():
            for t in list(self._tasks):
                t.cancel()
            self._loop.call_soon(self._loop.stop)
        try:
            self._loop.call_soon_threadsafe(stop)
        except RuntimeError:
            return  # loop already closed
        self._thread.join(timeout=MAX_WAIT_S)
        if not self._thread.is_alive():
            self._loop.close()


class _FanOut:
    """Progress of one running for_each task."""

    __slots__ = ("items", "remaining", "started_at")

    def __init__(self, n):
        self.items: list = [None] * n  # ItemResult per item, as they finish
        self.remaining = n
        self.started_at = None


class Scheduler:
    """Runs one pass over a graph. Create one per run()/resume()."""

    def __init__(self, graph, *, max_workers, fail_fast, schedule, executor, reporter,
                 journal=None, keys=None, item_key=None):
        self.graph = graph
        self.max_workers = max_workers
        self.fail_fast = fail_fast
        self.layered = schedule == "layers"
        self.reporter = reporter
        self.emit = reporter.emit if reporter.active else None
        self.journal = journal
        self.keys = keys
        self.item_key = item_key  # (task_key, index, item) -> key, with a journal
        self.shared = _Shared(graph, fail_fast, journal, keys)
        self.pool = (ExecutorPool(executor, self.shared) if executor is not None
                     else WorkerPool(max_workers, self.shared))
        self.async_runner = None
        n = len(graph)
        self.results: list[StepResult | None] = [None] * n
        self.status = bytearray(n)
        self.waiting = array("i", bytes(4 * len(graph)))  # set for pending tasks in _prepare
        self.ready = collections.deque()
        self.timers: list = []
        self.seq = itertools.count()
        self.gates: dict = {}
        self.busy_gates: set = set()
        self.fanouts: dict[int, _FanOut] = {}
        self.partial_items: dict[int, list] = {}
        self.held: dict[int, list[int]] = {}  # layer -> tasks waiting for it to open
        self.held_detached: list[int] = []
        self.layer_left = [0] * len(graph.layers)
        self.open_layer = 0
        self.in_flight = 0
        # Own daemon threads bound the bodies in flight by their number, so a few
        # jobs may wait queued at the pool and a worker never idles waiting for the
        # scheduler. Coroutines and rate-limited jobs need a free slot right away.
        self.capacity = max_workers
        if executor is None and not any(td.is_async for td in graph.tasks):
            self.capacity = 2 * max_workers
        self.unfinished = 0
        self.main_left = 0
        self.interrupted = False
        self.running_since: dict[int, float] = {}  # task -> start, kept only when reporting
        self.next_tick = 0.0
        self.retries: list = []  # (task, item, attempt, started, finished, error) of failed attempts
        self.last_attempt_started: dict[str, float] = {}  # name -> start, for retried tasks
        self._finishing: list = []
        self._in_finish = False
        self.sigint = False  # Ctrl-C seen by our handler, to be raised at a safe point

    # ----- set-up -------------------------------------------------------------

    def run(self, kept: dict, force: set, partial_items: dict) -> list:
        """Run everything not in ``kept`` (index -> SUCCEEDED result).

        ``force``: indices that must run even if journaled. ``partial_items``:
        index -> ItemResults of an earlier failed for_each run of that task.
        """
        g = self.graph
        started = time.time()
        self.partial_items = partial_items
        emit = self.emit
        if emit:
            emit(FlowStarted(started, len(g), len(g.layers), self.max_workers,
                             "layers" if self.layered else "eager"))
        previous_handler = self._catch_sigint()
        try:
            self._prepare(kept, force)
            self._loop()
        except KeyboardInterrupt:
            self.interrupted = True
            self.shared.interrupted = True
            self.shared.stop("interrupted")
            self._keep_finished()
            raise
        finally:
            if previous_handler is not None:
                import signal

                signal.signal(signal.SIGINT, previous_handler)
            self._close()
            if emit:
                counts = {s.value: 0 for s in StepState}
                for r in self.results:
                    if r is not None:
                        counts[r.state.value] += 1
                ok = not self.interrupted and all(
                    r is not None and r.state is SUCCEEDED for r in self.results[:g.main_count])
                emit(FlowFinished(time.time(), ok, (time.time() - started) * 1000, counts,
                                  self.interrupted))
        return self.results

    def _catch_sigint(self):
        """Turn Ctrl-C into a request the loop honours between two outcomes.

        A KeyboardInterrupt raised at an arbitrary bytecode could drop an
        outcome the loop had just taken off the inbox (and with it a finished
        result). So, when run() is on the main thread and SIGINT has Python's
        default handler, our handler only sets a flag and wakes the loop, which
        raises KeyboardInterrupt itself. Returns the handler to restore, or None.
        """
        if threading.current_thread() is not threading.main_thread():
            return None
        import signal

        previous = signal.getsignal(signal.SIGINT)
        if previous is not signal.default_int_handler:
            return None  # the application handles SIGINT its own way: leave it alone

        def on_sigint(signum, frame):
            self.sigint = True
            self.shared.inbox.put(_INTERRUPT)  # SimpleQueue.put is safe in a signal handler

        signal.signal(signal.SIGINT, on_sigint)
        return previous

    def _prepare(self, kept: dict, force: set) -> None:
        g, results, status = self.graph, self.results, self.status
        journal, keys = self.journal, self.keys
        for i, td in enumerate(g.tasks):
            r = kept.get(i)
            if r is None and journal is not None and i not in force:
                found, value = journal.lookup(keys[i])
                if found:
                    now = time.time()
                    r = StepResult(td.name, SUCCEEDED, value, step_key=keys[i], cached=True,
                                   started_at=now, finished_at=now)
                    if self.emit:
                        self.emit(TaskCached(now, td.name, keys[i]))
            if r is not None:
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
        if not self.layered:
            self._plan_fusion(pending)
        self._advance_layers()
        for i in pending:
            if self.waiting[i] == 0:
                self._release(i)

    def _plan_fusion(self, pending) -> None:
        g, status, fused = self.graph, self.status, self.shared.fused_next
        for i in pending:
            if len(g.dependents[i]) != 1 or g.tasks[i].detached:
                continue
            s = g.dependents[i][0]
            td = g.tasks[s]
            if (len(g.deps[s]) == 1 and status[s] != DONE and not td.detached
                    and not td.is_async and td.for_each is None and td.limit is None):
                fused[i] = s

    # ----- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        inbox = self.shared.inbox
        while self.unfinished:
            if self.sigint:
                raise KeyboardInterrupt
            self._dispatch()
            if not self.unfinished:
                break
            if not self.in_flight and not self.timers:
                self._stalled()
            try:
                outcome = inbox.get(timeout=self._wait_time())
            except queue.Empty:
                outcome = None
            while outcome is not None:
                if outcome is _INTERRUPT:
                    raise KeyboardInterrupt
                self._on_outcome(outcome)
                outcome = None if inbox.empty() else inbox.get_nowait()
            if self.timers:
                self._fire_timers()
            if self.emit and time.monotonic() >= self.next_tick:
                self._tick()

    def _tick(self) -> None:
        self.next_tick = time.monotonic() + MAX_WAIT_S
        g = self.graph
        done = len(g) - self.unfinished
        running = {g.tasks[i].name: t for i, t in self.running_since.items()}
        self.reporter.tick(done, len(g), running)

    def _wait_time(self) -> float:
        if self.timers:
            return min(MAX_WAIT_S, max(0.0, self.timers[0][0] - time.monotonic()))
        return MAX_WAIT_S

    def _fire_timers(self) -> None:
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            job = heapq.heappop(timers)[2]
            if job is not None:
                self._queue(job)

    def _stalled(self):
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

    def _enqueue_task(self, i: int) -> None:
        g = self.graph
        td = g.tasks[i]
        if self.interrupted:
            return
        if self.shared.stopping.is_set() and not g.detached[i]:
            self._finish(i, self._skipped(i, f"not started: {self.shared.stop_reason}"))
            return
        results = self.results
        kwargs = {results[d].name: results[d].value for d in g.deps[i]}
        self.status[i] = QUEUED
        if td.for_each is not None and td.when is None and td.validate is None:
            self._start_event(i, 1)
            self._fan_out(i, kwargs, None)
            return
        job = Job(i, td, kwargs, mode=A.GATE if td.for_each is not None else A.TASK,
                  key=None if self.keys is None else self.keys[i])
        self._queue(job)

    def _queue(self, job: Job) -> None:
        limit = job.td.limit
        if limit is not None and job.mode != A.GATE:
            gate = self.gates.get(limit)
            if gate is None:
                gate = self.gates[limit] = LimitGate(limit)
            gate.parked.append(job)
            self.busy_gates.add(gate)
        else:
            self.ready.append(job)

    def _dispatch(self) -> None:
        if self.in_flight >= self.capacity:
            return
        if self.busy_gates:
            self._dispatch_gated()
        ready, capacity = self.ready, self.capacity
        while ready and self.in_flight < capacity:
            self._start(ready.popleft())

    def _dispatch_gated(self) -> None:
        now = time.monotonic()
        for gate in list(self.busy_gates):
            parked = gate.parked
            # a rate counts starts, so its jobs must start the moment they are admitted
            room = self.max_workers if gate.limit.rate_count else self.capacity
            while parked and self.in_flight < room:
                wait = gate.wait_time(now)
                if wait is not None:
                    if wait != float("inf"):
                        heapq.heappush(self.timers, (now + wait, next(self.seq), None))
                    break
                job = parked.popleft()
                if self._stopped_before_start(job):
                    continue
                gate.admit(now)
                self._start(job)
            if not parked:
                self.busy_gates.discard(gate)

    def _stopped_before_start(self, job: Job) -> bool:
        """fail_fast: a main task that has not started yet is skipped instead."""
        if (job.attempt == 1 and job.mode != A.ITEM and self.shared.stopping.is_set()
                and not job.td.detached):
            self._finish(job.task, self._skipped(job.task,
                                                 f"not started: {self.shared.stop_reason}"))
            return True
        return False

    def _start(self, job: Job) -> None:
        if job.td.limit is None or job.mode == A.GATE:
            if self._stopped_before_start(job):
                return
        self.in_flight += 1
        if job.mode != A.ITEM:
            self.status[job.task] = RUNNING
            if self.in_flight <= self.max_workers:
                self._start_event(job.task, job.attempt)
            elif self.emit:
                # queued behind busy workers: it may yet be skipped, so the worker
                # says when it really starts
                job.announce = True
        if job.td.is_async:
            if self.async_runner is None:
                self.async_runner = AsyncRunner(self.shared)
            self.async_runner.submit(job)
        else:
            self.pool.submit(job, self.in_flight)

    def _start_event(self, i: int, attempt: int, now: float | None = None) -> None:
        if self.emit:
            now = now or time.time()
            self.running_since.setdefault(i, now)
            self.emit(TaskStarted(now, self.graph.tasks[i].name, attempt,
                                  bool(self.graph.detached[i])))

    # ----- outcomes -----------------------------------------------------------

    def _on_outcome(self, o: Outcome) -> None:
        job = o.job
        if o.kind is A.STARTED:
            self._start_event(job.task, job.attempt, o.started_at)
            return
        if o.next_job is None:
            self.in_flight -= 1
        if job.td.limit is not None and job.mode != A.GATE:
            gate = self.gates[job.td.limit]
            gate.release()
            if gate.parked:
                self.busy_gates.add(gate)
        if o.kind is A.RETRY:
            self._retry(o)
            return
        if job.mode == A.ITEM:
            self._on_item(o)
            return
        if o.kind is A.PASSED:
            self._fan_out(job.task, job.kwargs, job.first_started)
            return
        if o.kind is A.SUCCEEDED:
            self.shared.record(o)
        i = job.task
        started = job.first_started or o.started_at
        result = StepResult(job.td.name, _STATE_OF[o.kind], o.value, o.error, None,
                            o.attempts, job.key, False, o.reason, o.traceback, started,
                            o.finished_at)
        if o.attempts > 1:
            self.last_attempt_started[result.name] = o.started_at
        successor = o.next_job
        if successor is not None:
            self.status[successor.task] = RUNNING  # so finishing i does not queue it again
        self._finish(i, result)
        if successor is not None:
            self._start_event(successor.task, 1)

    def _retry(self, o: Outcome) -> None:
        job = o.job
        self.retries.append((job.task, job.item, job.attempt, o.started_at, o.finished_at,
                             o.error if o.error is not None else o.reason))
        if self.emit:
            self.emit(TaskRetrying(time.time(), job.td.name, job.attempt, 1 + job.td.retry,
                                   o.retry_in, o.error, o.reason, job.item,
                                   duration_ms=(o.finished_at - o.started_at) * 1000))
        heapq.heappush(self.timers, (time.monotonic() + o.retry_in, next(self.seq),
                                     job.retry_job()))

    # ----- for_each -----------------------------------------------------------

    def _fan_out(self, i: int, kwargs: dict, started) -> None:
        td = self.graph.tasks[i]
        source_name = td.for_each
        source = kwargs[source_name]
        try:
            if isinstance(source, (str, bytes, bytearray, dict)):
                raise TypeError
            items = list(source)
        except TypeError:
            error = TypeError(
                f"task '{td.name}': for_each='{source_name}' needs a list, tuple or other "
                f"iterable of items, but '{source_name}' returned {type(source).__name__}; "
                f"return a list from '{source_name}'")
            self._finish(i, self._failed(i, error, started))
            return
        except Exception as exc:
            self._finish(i, self._failed(i, exc, started))
            return
        self.status[i] = RUNNING
        fan = self.fanouts[i] = _FanOut(len(items))
        fan.started_at = started
        previous = self.partial_items.get(i)
        if previous is not None and len(previous) != len(items):
            previous = None
        task_key = None if self.keys is None else self.keys[i]
        for index, item in enumerate(items):
            prior = previous[index] if previous is not None else None
            if prior is not None and prior.state is SUCCEEDED:
                fan.items[index] = prior
                fan.remaining -= 1
                continue
            key = None
            if task_key is not None:
                key = self.item_key(task_key, index, item)
                found, value = self.journal.lookup(key)
                if found:
                    fan.items[index] = ItemResult(index, SUCCEEDED, value, cached=True)
                    fan.remaining -= 1
                    continue
            item_kwargs = dict(kwargs)
            item_kwargs[source_name] = item
            self._queue(Job(i, td, item_kwargs, mode=A.ITEM, item=index, gates=False, key=key))
        if not fan.remaining:
            self._complete_fan(i)

    def _on_item(self, o: Outcome) -> None:
        job = o.job
        i = job.task
        fan = self.fanouts[i]
        if o.kind is A.SUCCEEDED:
            self.shared.record(o)
        fan.items[job.item] = ItemResult(job.item, _STATE_OF[o.kind], o.value, o.error,
                                         o.attempts, False, o.traceback,
                                         job.first_started, o.finished_at)
        if fan.started_at is None or (job.first_started and job.first_started < fan.started_at):
            fan.started_at = job.first_started
        fan.remaining -= 1
        if not fan.remaining:
            self._complete_fan(i)

    def _complete_fan(self, i: int) -> None:
        fan = self.fanouts.pop(i)
        td = self.graph.tasks[i]
        items = fan.items
        now = time.time()
        ends = [r.finished_at for r in items if r.finished_at]
        finished = max(ends) if ends else now
        started = fan.started_at or finished
        failures = [r for r in items if r.state is not SUCCEEDED]
        values = [r.value for r in items]
        attempts = max((r.attempts for r in items), default=0)
        key = None if self.keys is None else self.keys[i]
        if not failures:
            result = StepResult(td.name, SUCCEEDED, values, None, (finished - started) * 1000,
                                attempts, key, all(r.cached for r in items) and bool(items),
                                None, None, started, finished, items)
            if self.journal is not None and key is not None:
                self.journal.record(key, td.name, self.shared.dep_keys[i], values, "task")
        else:
            first = failures[0]
            error = ItemsFailed(
                f"task '{td.name}': {len(failures)} of {len(items)} items failed; first: "
                f"item {first.index}: {type(first.error).__name__}: {first.error}", failures)
            result = StepResult(td.name, FAILED, values, error, (finished - started) * 1000,
                                attempts, key, False, f"{len(failures)} item(s) failed",
                                first.traceback, started, finished, items)
        self._finish(i, result)

    # ----- finishing ----------------------------------------------------------

    def _skipped(self, i: int, reason: str) -> StepResult:
        now = time.time()
        return StepResult(self.graph.tasks[i].name, SKIPPED, reason=reason,
                          step_key=None if self.keys is None else self.keys[i],
                          started_at=now, finished_at=now)

    def _failed(self, i: int, error: BaseException, started) -> StepResult:
        now = time.time()
        started = started or now
        return StepResult(self.graph.tasks[i].name, FAILED, error=error,
                          duration_ms=(now - started) * 1000,
                          step_key=None if self.keys is None else self.keys[i],
                          traceback=A.format_traceback(error), started_at=started,
                          finished_at=now)

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
            self._result_event(result, bool(detached))
        if result.state is SUCCEEDED:
            waiting = self.waiting
            for j in g.dependents[i]:
                waiting[j] -= 1
                if not waiting[j]:
                    self._release(j)
        else:
            if result.state is FAILED and not detached and self.fail_fast:
                self.shared.stop(f"fail_fast: '{result.name}' failed")
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

    def _result_event(self, r: StepResult, detached: bool) -> None:
        now = time.time()
        if r.state is SUCCEEDED:
            self.emit(TaskSucceeded(now, r.name, r.attempts, r.duration_ms, detached))
        elif r.state is FAILED:
            self.emit(TaskFailed(now, r.name, r.attempts, r.duration_ms, r.error, r.reason,
                                 detached))
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
            if o is _INTERRUPT or o.kind not in _STATE_OF:
                continue
            job = o.job
            if o.kind is A.SUCCEEDED:
                self.shared.record(o)
            if job.mode == A.ITEM:
                fan = self.fanouts.get(job.task)
                if fan is not None and fan.items[job.item] is None:
                    fan.items[job.item] = ItemResult(
                        job.item, _STATE_OF[o.kind], o.value, o.error, o.attempts, False,
                        o.traceback, job.first_started, o.finished_at)
                continue
            if self.results[job.task] is None:
                started = job.first_started or o.started_at
                self.results[job.task] = StepResult(
                    job.td.name, _STATE_OF[o.kind], o.value, o.error,
                    (o.finished_at - started) * 1000 if started else 0.0, o.attempts,
                    job.key, False, o.reason, o.traceback, started, o.finished_at)

    def unfinished_items(self) -> dict[int, list]:
        """index -> ItemResults so far (None: not finished) of for_each tasks cut short."""
        return {i: list(fan.items) for i, fan in self.fanouts.items()}

    def _close(self) -> None:
        self.pool.shutdown()
        if self.async_runner is not None:
            self.async_runner.close()
