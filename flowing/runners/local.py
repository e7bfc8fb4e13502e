"""Where a body runs: the run's own threads, an event loop, a caller's executor,
another process or a Dask cluster — behind one small protocol.

The protocol (``Runner``)
-------------------------
``submit(job)``  start the job; exactly one verdict ``Outcome`` for it (and, for
                 a fused chain, one per fused successor) is later put on
                 ``shared.inbox``, the scheduler's only input. ``submit`` never
                 blocks on the body and never raises for anything the job does.
``close()``      the run is over: let idle workers go, cancel what can be
                 cancelled. Bounded: it never waits for a running body.
``fuses``        whether this runner runs fused chains (see the scheduler).
``queues_ahead`` whether jobs may wait queued at the runner, beyond the bodies
                 in flight (only when idle workers pick them up themselves).

The scheduler talks to one ``Runner`` and never learns which kind it is.

The kinds
---------
``ThreadRunner``   daemon threads owned by the run (the default). Each runs a
                   whole attempt — gates, body, verdict, journal write — and
                   then any fused successor.
``remote.RemoteRunner`` process pools, loky, Dask: ships each body call with a
                   ``RemoteCall`` (below) and finishes the attempt when the
                   engine's future calls back; no thread waits for a body.
``ExecutorRunner`` a caller's thread-based ``concurrent.futures`` executor: the
                   whole attempt runs on it (never shut down here).
``EventLoopRunner`` one asyncio loop on a daemon thread for ``async def`` bodies
                   (in-process runs only; remote engines run coroutines in the
                   worker with ``asyncio.run``).
``Mixed``          routes each job to the sync or the async runner, and, with an
                   executor that ships, every job not ``local=True`` to the
                   remote runner (``local=True`` bodies stay on the run's own
                   threads and event loop).

A Dask error saying the cluster could not deserialize the call (its
scheduler or workers lack flowing or the body's module) is ``CannotShip``,
never ``WorkerLost``; a value whose unpickling raises anything (even
``SystemExit``) is ``CannotShip`` too, never the body's own error.

Every attempt goes through ``attempt.run_attempt``/``run_attempt_async``,
which never raise: that is the one boundary that makes every job produce an
outcome. What can still be lost is a whole worker (a killed process, a dead
Dask worker); the engine's future then fails, and ``RemoteCall`` turns that
into the task's error.

Bodies in other processes (``RemoteCall``)
------------------------------------------
Which executors ship: any executor that is not a ``ThreadPoolExecutor``
(``ProcessPoolExecutor`` in every start method, loky, a Dask ``Client`` or
``client.get_executor()``). Only the body call travels; everything else —
scheduling, ``when``/``validate`` and ``retry_until`` (on the flow's
threads), retries and their backoff, ``Limit``, the journal (written by the
flow's process alone), events and reports — stays in the flow's process and
behaves as with threads. ``max_workers`` bounds the bodies handed to the
engine at once: set it to the engine's slots (``ProcessPoolExecutor(4)`` ->
``max_workers=4``; Dask: ``sum(client.nthreads().values())``); more keeps
the engine fed between tiny bodies, but see Timeouts. Every call ships its
arguments: a ``for_each`` item ships its item and the task's other
dependencies whole, so keep big shared data out of task values (load it
in the body). A process pool's value comes back to the flow's process. On
a Dask ``Client`` without a journal a whole task's value stays on the worker
that made it (``RemoteValue``): remote dependents get it as a future
argument, and it comes here only when something here needs it (a
``local=True`` body, a gate, listing ``for_each`` items, ``retry_until``,
``StepResult.value``); with a journal, or ``client.get_executor()``, values
come back as with process pools.

What ships, and the pickling rules. The flow pickles the body once per
function and run, and each call's arguments (dependency values, Flow inputs,
the ``current()`` facts) into bytes itself; the worker runs ``run_shipped``
(on Dask flowing sends itself to workers that lack it: see shipping.py) and
pickles the value back into bytes (a kept Dask value is only checked to
pickle). The engine only ever carries bytes, and every (un)pickling
happens inside flowing's own ``try``: a failure is the task's error
(``CannotShip``, never retried) saying what could not be pickled — the body,
which argument, the return value — and how to fix it; it never breaks the
pool, and nothing hangs.

* ``ProcessPoolExecutor`` (and any other process executor): standard
  ``pickle``. A module-level ``@task`` ships by reference (``TaskRef``: the
  worker imports the module and takes the task's function), ``__main__``
  included: under fork the worker has the script already; under spawn and
  forkserver it imports the script again, so the flow must run under
  ``if __name__ == "__main__":``. Lambdas, nested functions and closures
  cannot ship: ``CannotShip`` says to define the body at module level.
* loky and Dask: ``cloudpickle``. Functions of ``__main__`` (and lambdas,
  closures) ship by value; ``@task`` functions of importable modules ship by
  reference, as plain functions do with cloudpickle, so the workers need
  those modules installed.
* Values come back pickled the same way; an exception raised by the body
  comes back as itself (its class, so ``retry_on`` and ``retry_after`` work),
  with the worker's traceback as its ``__cause__``. An exception that pickles
  but cannot be rebuilt with its ``args`` (an ``__init__`` with other
  parameters) is rebuilt from its state; one that cannot travel at all
  becomes a ``RuntimeError`` carrying its type and message.

``flowing.current()`` answers in the worker from a snapshot: task, attempt,
max_attempts, item_index, item, deadline (in the worker's clock);
``cancelled()`` turns True at the deadline (the flow's fail_fast and Ctrl-C
cannot be seen there). Coroutine bodies run with ``asyncio.run`` in the
worker.

Timeouts. The flow's deadline starts when the attempt starts (its gates
passed), so time the call waits queued in the engine counts: do not hand the
engine more timed bodies than it has slots. At the deadline the attempt
fails with ``TimeoutError`` in the flow (retried if ``retry_on`` allows) and
the engine's future is cancelled: a call still queued is dropped (process
pools, Dask), a Dask task is released. A body already running cannot be
killed, so the worker gives up on it at the same deadline, measured from
its own start: with ``timeout_s`` the body runs on a daemon thread of the
worker, and ``run_shipped`` returns at the deadline. The worker is free for
the next call at once; the abandoned body keeps running in the background
(sharing that worker's CPU) until it ends or its process exits, and a body
that polls ``current().cancelled()`` can stop itself. A coroutine is
cancelled for real. Bodies without ``timeout_s`` run on the worker's own
thread, as with the plain engine.

A lost worker. ``run_shipped`` returns everything the body and the data can
do as a value, so an exception from the engine's future is the engine's
own. ``BrokenProcessPool`` (a worker killed, out of memory, ``os._exit``, or
a spawn worker that could not import the script) fails the task with
``PoolBroken``, never retried: the pool runs nothing more; create a new one.
A Dask worker that dies is first rescheduled by Dask itself (the
scheduler's ``allowed-failures``, 3 by default); then ``KilledWorker``
fails the attempt with ``WorkerLost``, retried like any error when
``retry_on`` allows. A refused submit (a shut-down executor, a closed
client) is ``CannotRun``, not retried.

Exit, per engine, after a run whose remote body timed out. The flow holds
nothing itself: its threads are daemons and the wait ends at the deadline.
* ``ProcessPoolExecutor``: ``shutdown(wait=True)`` (the ``with`` block) and
  the interpreter's exit hook join the pool's work items. A timed-out body's
  work item ends at its deadline (above), so neither waits for the body;
  workers exit at shutdown and the abandoned daemon thread with them. Without
  the worker-side deadline a ``time.sleep(30)`` body would hold the exit for
  30 s: that is what a plain process pool does.
* loky: the same; its reusable executor is shut down at exit.
* Dask: the flow cancels the task; the worker's thread is free at the
  deadline. A ``LocalCluster`` closes at once. Against a remote scheduler
  the client closes at once, and the abandoned body ends on its worker.
Bodies still running for another reason (Ctrl-C, or no ``timeout_s``) are
the engine's business. ``ProcessPoolExecutor``: ``shutdown()`` and the exit
hook wait for them to end, ``shutdown(wait=False)`` included. A terminal's
Ctrl-C reaches the workers too, whose bodies then end with
KeyboardInterrupt, so the process exits at once (workers forked during a
run get Python's default SIGINT handler back: ``interrupts.py``); a SIGINT sent to the flow's
process alone does not: to exit without waiting, terminate the workers
(``for p in multiprocessing.active_children(): p.terminate()``, or
``terminate_workers()`` from Python 3.14). loky:
``shutdown(kill_workers=True)``. A ``LocalCluster`` gives its workers about
4 s to close, then kills them; a remote cluster finishes them and drops the
values. ``run()`` itself re-raises Ctrl-C within about a second whatever
the engine.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .. import context
from ..errors import CannotRun, CannotShip, PoolBroken, WorkerLost
from ..interrupts import is_terminal
from ..results import Deferred
from ..runners import attempt as A
from ..runners.attempt import Job, Outcome, RunSignals, run_attempt, run_attempt_async
from ..text import safe_repr, safe_str

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from ..journal.store import Journal
    from ..replay.inplace import RunDigests
    from ..tasks import TaskDef

# Put in the inbox to wake the scheduler loop without an outcome.
WAKE = object()


class Shared(RunSignals):
    """What workers may see of a run (everything else is the scheduler's).

    ``inbox`` is the one queue through which every outcome comes back.
    ``stopping`` (from RunSignals) is set by a worker the instant a main task
    fails for good under fail_fast, or by the scheduler on Ctrl-C; bodies see
    it through ``current().cancelled()`` and a worker reads it before going on
    to a fused successor. A job already handed to a runner is never skipped
    for it: the scheduler decides, from the failures it has seen, whether a
    task starts. The journal does its own locking.
    """

    __slots__ = ("inbox", "stop_reason", "fail_fast", "journal", "tasks", "keys", "deps",
                 "parts", "fused_next", "digest", "closed")

    def __init__(self, tasks: list[TaskDef], deps: list[tuple[int, ...]], fail_fast: bool,
                 journal: Journal | None, keys: list[str] | None) -> None:
        super().__init__()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # workers -> scheduler
        self.stop_reason: str | None = None    # why: set once, before ``stopping``
        self.fail_fast = fail_fast
        self.journal = journal
        self.tasks = tasks
        # step key per task, or None without a journal; the scheduler sets a task's key
        # when it is released (it covers its dependencies' values)
        self.keys = keys
        self.deps = deps
        # per task, what its key was computed from (short fingerprints, for "why"),
        # set with its key
        self.parts: list[Mapping[str, str] | None] = [None] * len(tasks)
        self.fused_next = array("i", [-1]) * len(tasks)  # index of the fused successor, or -1
        self.digest: RunDigests | None = None  # value digests, with a journal
        self.closed = False  # the run has returned or raised: nothing is journaled any more

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopping.set()

    def dep_keys(self, i: int) -> list[str]:
        """The keys of the entries task i was computed from (its dependencies')."""
        keys = self.keys
        return [] if keys is None else [keys[d] for d in self.deps[i]]

    def record(self, outcome: Outcome) -> None:
        """Journal a success; called by whichever thread sees it first.

        Refuses (first lines) an outcome whose body was told to stop
        (``Outcome.stopped``, decided in ``attempt.verdict``) and everything
        once the run is ``closed``: a worker finishing late never writes.

        The value's content digest is computed here, on the worker, so that
        dependents can be replayed by value (early cutoff) without the
        scheduler thread hashing anything.
        """
        if outcome.stopped or self.closed:  # told to stop (attempt.verdict), or run over
            return
        job = outcome.job
        journal = self.journal
        if journal is None or job.key is None or outcome.journaled:
            return
        outcome.journaled = True
        digest = self.digest(outcome.value) if self.digest is not None else None
        outcome.digest = digest
        store = job.store
        item = job.mode == A.ITEM
        check = None
        if store and self.digest is not None:
            # A body that changed a dependency's value in place must not be journaled
            # as computed from the original (the policy: flowing.replay.inplace). An item's
            # side inputs are checked by the journal just before its line is written.
            if item:
                check = self.digest.item_check(job)
            else:
                changed = self.digest.check_job(job)
                if changed is not None:
                    store = False
                    outcome.warning = changed
        dep_keys = self.dep_keys(job.task)
        if item:
            # the task's own dependencies too: the task may have no entry of its
            # own (some items failed), and ``journal forget`` must still reach its items
            assert self.keys is not None
            journal.record(job.key, f"{job.td.name}[{job.item}]",
                           [self.keys[job.task], *dep_keys], outcome.value, "item",
                           digest=digest, inputs=job.in_digest, store=store,
                           # group commit: acknowledged when the task completes (the
                           # scheduler flushes the journal then), so lines may share an fsync
                           durable=False, check=check)
        else:
            journal.record(job.key, job.td.name, dep_keys, outcome.value, "task",
                           digest=digest, inputs=job.in_digest, store=store,
                           parts=self.parts[job.task])

    def fail_fast_trips(self, outcome: Outcome) -> bool:
        job = outcome.job
        return (outcome.kind is A.FAILED and self.fail_fast and job.mode != A.ITEM
                and not job.td.detached)


class Runner(Protocol):
    fuses: bool
    queues_ahead: bool

    def submit(self, job: Job) -> None: ...

    def close(self) -> None: ...


def _work(job: Job | None, shared: Shared, call: A.BodyCall = A.call_here) -> None:
    """Worker entry: run a sync job, then any fused successors, reporting each."""
    while job is not None:
        if shared.interrupted:
            return
        # No fail_fast check here: whether a job may start was decided by the scheduler
        # when it handed the job over (a failure it had not seen then never skips it).
        if job.announce:
            shared.inbox.put(Outcome(job, A.STARTED, started_at=time.time()))
        outcome = run_attempt(job, call)
        successor = None
        if outcome.kind is A.SUCCEEDED and job.mode == A.TASK:
            s = shared.fused_next[job.task]
            if s >= 0:
                successor = Job(s, shared.tasks[s], {job.td.name: outcome.value},
                                key=None if shared.keys is None else shared.keys[s],
                                signals=shared)
        if not _report(outcome, shared, successor):
            successor = None
        job = successor


def _report(outcome: Outcome, shared: Shared, successor: Job | None = None) -> bool:
    """Journal a success (durable before any dependent starts), trip fail_fast on a
    failure, and post the outcome. Returns whether the fused ``successor`` may run."""
    job = outcome.job
    try:
        if outcome.kind is A.SUCCEEDED:
            shared.record(outcome)
            if successor is not None and not shared.stopping.is_set():
                outcome.next_job = successor
        elif shared.fail_fast_trips(outcome):
            shared.stop(f"fail_fast: '{job.td.name}' failed")
    except BaseException as exc:  # the journal is never allowed to lose an outcome
        outcome.warning = f"{job.label()}: could not journal its result ({safe_str(exc)})"
    shared.inbox.put(outcome)
    return outcome.next_job is not None


class ThreadRunner:
    """Daemon worker threads owned by one run.

    Daemon threads, unlike ``ThreadPoolExecutor``'s, never hold the
    interpreter open: a body still running after Ctrl-C or a timeout cannot
    delay process exit. Threads are started on demand, up to ``max_workers``.
    """

    fuses = True
    queues_ahead = True

    def __init__(self, max_workers: int, shared: Shared, call: A.BodyCall = A.call_here) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # None = exit
        self._threads: list[threading.Thread] = []
        self._max = max_workers
        self._shared = shared
        self._call = call
        self._submitted = 0  # jobs submitted (scheduler thread only)
        self._done = 0       # jobs whose outcome was posted (guarded by _lock)
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)
        self._submitted += 1
        # One thread per job in flight, up to max_workers (a chain needs only one).
        if len(self._threads) < self._max and len(self._threads) < self._submitted - self._done:
            thread = threading.Thread(target=self._worker, daemon=True,
                                      name=f"flowing-worker-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()

    def _worker(self) -> None:
        jobs, shared, call = self._jobs, self._shared, self._call
        while True:
            job = jobs.get()
            if job is None:
                return
            _work(job, shared, call)
            with self._lock:
                self._done += 1

    def close(self) -> None:
        """Let idle workers exit; jobs still queued are dropped (only Ctrl-C leaves any)."""
        while not self._jobs.empty():
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._jobs.put(None)
        closer = getattr(self._call, "close", None)
        if closer is not None:
            closer()


class ExecutorRunner:
    """Runs whole attempts on the caller's thread-based executor (never shut down here)."""

    fuses = True
    queues_ahead = False

    def __init__(self, executor: Executor, shared: Shared) -> None:
        self._executor = executor
        self._shared = shared

    def submit(self, job: Job) -> None:
        try:
            future = self._executor.submit(_work, job, self._shared)
        except Exception as exc:  # e.g. the executor was shut down
            self._refused(job, exc, "refused it")
            return
        # _work never raises, so a failed or cancelled future means the executor
        # itself could not run it (a shutdown).
        future.add_done_callback(lambda f: self._check(f, job))

    def _check(self, future: Future[Any], job: Job) -> None:
        if future.cancelled():
            self._refused(job, None, "cancelled it")
        elif future.exception() is not None:
            self._refused(job, future.exception(), "could not run it")

    def _refused(self, job: Job, exc: BaseException | None, what: str) -> None:
        why = f" ({type(exc).__name__}: {safe_str(exc)})" if exc is not None else ""
        error = RuntimeError(f"{job.label()}: the executor {what}{why}; pass a running "
                             f"executor (or none: flowing then uses its own threads)")
        now = time.time()
        self._shared.inbox.put(Outcome(job, A.FAILED, error=error, started_at=now,
                                       finished_at=now))

    def close(self) -> None:
        pass


class EventLoopRunner:
    """An event loop on a daemon thread, owned by one run, for coroutine bodies."""

    fuses = False
    queues_ahead = False

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        import asyncio  # imported on first use: it costs more than all of flowing

        self._loop = asyncio.new_event_loop()
        self._tasks: set[Any] = set()  # running asyncio tasks (loop thread only)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="flowing-event-loop")
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._loop.call_soon_threadsafe(self._spawn, job)

    def _spawn(self, job: Job) -> None:
        t = self._loop.create_task(run_attempt_async(job))
        self._tasks.add(t)
        t.add_done_callback(lambda t: self._done(t, job))

    def _done(self, t: Any, job: Job) -> None:
        self._tasks.discard(t)
        if t.cancelled():
            return  # torn down by close(): the scheduler is no longer listening
        try:
            outcome = t.result()
        except BaseException as exc:  # run_attempt_async never raises; belt and braces
            outcome = A.broken_outcome(job, exc, None)
        _report(outcome, self._shared)

    def close(self) -> None:
        """Cancel what still runs (its ``finally`` blocks get one loop turn), stop the loop."""
        def stop() -> None:
            for t in list(self._tasks):
                t.cancel()
            self._loop.call_soon(self._loop.stop)
        try:
            self._loop.call_soon_threadsafe(stop)
        except RuntimeError:
            return  # loop already closed
        self._thread.join(timeout=1.0)
        if not self._thread.is_alive():
            self._loop.close()


class Mixed:
    """Sync jobs to one runner, coroutine jobs to an event loop made on first use;
    with a ``remote`` runner (an executor that ships), every job of a task that is
    not ``local=True`` goes there instead."""

    def __init__(self, sync: Runner, shared: Shared, remote: Runner | None = None) -> None:
        self._sync = sync
        self._shared = shared
        self._remote = remote
        self._loop: EventLoopRunner | None = None
        self.fuses = sync.fuses and (remote is None or remote.fuses)
        self.queues_ahead = sync.queues_ahead and (remote is None or remote.queues_ahead)

    def submit(self, job: Job) -> None:
        if self._remote is not None and not job.td.local:
            self._remote.submit(job)
        elif job.td.is_async:
            if self._loop is None:
                self._loop = EventLoopRunner(self._shared)
            self._loop.submit(job)
        else:
            self._sync.submit(job)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
        self._sync.close()
        if self._loop is not None:
            self._loop.close()


def _is_thread_pool(executor: Any) -> bool:
    # concurrent.futures costs 4 ms to import (logging, threading machinery): only a
    # run that was handed an executor from it can need it, and then it is loaded.
    module = sys.modules.get("concurrent.futures.thread")
    return module is not None and isinstance(executor, module.ThreadPoolExecutor)


def open_runner(executor: Any, max_workers: int, shared: Shared,
                has_async: bool) -> Runner:
    """The runner for ``Flow(executor=...)``; see the module docstring."""
    if executor is None:
        sync: Runner = ThreadRunner(max_workers, shared)
    elif _is_thread_pool(executor):
        sync = ExecutorRunner(executor, shared)
    else:
        from ..runners.remote import RemoteRunner  # lazy: remote engines only

        # coroutine bodies are shipped too, and run with asyncio.run in the worker;
        # local=True tasks run on the run's own threads (and event loop)
        remote = RemoteRunner(executor, max_workers, shared)
        return Mixed(ThreadRunner(max_workers, shared), shared, remote)
    return Mixed(sync, shared) if has_async else sync


# ----- shipping a body to another process -------------------------------------------





class RemoteTraceback(Exception):
    """The traceback of a body that raised in another process (set as ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class TaskRef:
    """A module-level ``@task`` function, pickled by reference to its TaskDef.

    ``@task def f`` makes the module attribute ``f`` the TaskDef, so ``pickle``
    cannot find the plain function under its own name; this finds the TaskDef
    in the worker and takes its function.
    """

    __slots__ = ("module", "qualname")

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def resolve(self) -> Callable[..., Any]:
        import importlib

        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        fn: Callable[..., Any] = getattr(obj, "fn", obj)
        if not callable(fn):
            raise TypeError(f"{self.module}.{self.qualname} is not callable in the worker")
        return fn

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskRef, (self.module, self.qualname))


def shippable_body(td: TaskDef, by_value_main: bool = False) -> Any:
    """What to pickle for ``td``'s body: a ``TaskRef`` when the module attribute at the
    function's qualified name is a task made from this very function (``@task`` at
    module level), else the function itself, which must then pickle on its own.

    ``by_value_main``: for cloudpickle engines, whose workers are not forks of the
    flow's process, a function of ``__main__`` ships by value instead.
    """
    fn = td.fn
    try:
        module_name = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None)
        if (type(module_name) is str and type(qualname) is str and "<" not in qualname
                and not (by_value_main and module_name == "__main__")):
            obj: Any = sys.modules.get(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
            if obj is not fn and getattr(obj, "fn", None) is fn:
                return TaskRef(module_name, qualname)
    except Exception:  # a hostile module attribute: ship the function as it is
        pass
    return fn


# What the worker sends back: (code, data).
_OK = 0          # data: the pickled value
_RAISED = 1      # data: the pickled (exception, formatted traceback)
_UNSHIPPABLE = 2  # data: str, what could not be (un)pickled in the worker
_TIMED_OUT = 3   # data: None; the worker gave up on the body at its deadline
_KEPT = 4        # data: the value itself, kept on the worker (run_shipped's keep)
KEPT_TAG = "flowing: not kept"  # args[0] of the RuntimeError run_shipped(keep) raises

# Worker side: bodies already unpickled, by their pickled bytes (bounded).
_bodies: dict[bytes, Callable[..., Any]] = {}
_BODY_CACHE_SIZE = 256


class _WorkerTimeout(Exception):
    """A coroutine body overran its deadline in the worker."""


def _load_body(blob: bytes) -> Callable[..., Any]:
    fn = _bodies.get(blob)
    if fn is None:
        import pickle

        body = pickle.loads(blob)
        fn = body.resolve() if isinstance(body, TaskRef) else body
        if len(_bodies) >= _BODY_CACHE_SIZE:
            _bodies.clear()
        _bodies[blob] = fn
    return fn


def _missing_module(exc: BaseException, what: str) -> str | None:
    """The message for a module the worker cannot import, or None for other errors."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not isinstance(name, str) or not name:
        return None
    return (f"{what} needs the module '{name}', which the worker cannot import "
            f"({_describe(exc)}); install '{name.partition('.')[0]}' on the workers (the "
            f"version the script uses), or mark the task @task(local=True) to run it in "
            f"the flow's process (flowing ships itself and the modules of the script's "
            f"folder, not packages found elsewhere)")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {safe_str(exc)}"


def _type_name(value: object) -> str:
    t = type(value)
    module = getattr(t, "__module__", "builtins")
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _dumps_for(cloud: bool) -> Callable[[Any], bytes]:
    if cloud:
        import importlib

        cloudpickle: Any = importlib.import_module("cloudpickle")  # untyped; engines bring it
        dumps: Callable[[Any], bytes] = cloudpickle.dumps
        return dumps
    import pickle

    return lambda obj: pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def _invoke(fn: Callable[..., Any], kwargs: dict[str, Any], snapshot: context.Snapshot,
            deadline: float | None, is_async: bool) -> tuple[bool, Any]:
    """Call the body (a coroutine body's awaitable with ``asyncio.run``): (True, value)
    or (False, (exception, traceback text)). Never raises."""
    token = context.enter(snapshot)
    pid = os.getpid()
    try:
        value = fn(**kwargs)
        if is_async:
            import asyncio

            value = asyncio.run(_await_body(value, deadline))
        A.exit_if_forked(pid, 0)
        return True, value
    except BaseException as exc:
        A.exit_if_forked(pid, 1)
        return False, (exc, A.format_traceback(exc))
    finally:
        context.leave(token)


async def _await_body(awaitable: Any, deadline: float | None) -> Any:
    if deadline is None:
        return await awaitable
    import asyncio

    body = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({body}, timeout=max(0.0, deadline - time.time()))
    if not done:
        body.cancel()  # cancelled for real; asyncio.run waits for its finally blocks
        raise _WorkerTimeout
    return body.result()


def run_shipped(body_blob: bytes, call_blob: bytes, cloud: bool, keep: bool = False,
                names: tuple[str, ...] = (), *values: Any) -> Any:
    """Runs in the worker: unpickle the body and its call, run it, pickle what it gives.

    ``names``/``values``: arguments that were kept on the cluster (Dask hands the
    values of the futures passed for them). ``keep`` (Dask, a whole task's
    attempt): the value is returned as it is, to stay on the worker until a
    dependent or the flow asks for it; anything else is raised as
    ``RuntimeError(KEPT_TAG, code, data)`` (a builtin class: the scheduler
    never needs flowing to hold it), so a finished task means a success.
    """
    code, data = _run_shipped(body_blob, call_blob, cloud, keep, names, values)
    if not keep:
        return code, data
    if code == _KEPT:
        return data
    raise RuntimeError(KEPT_TAG, code, data)


def _run_shipped(body_blob: bytes, call_blob: bytes, cloud: bool, keep: bool,
                 names: tuple[str, ...], values: tuple[Any, ...]) -> tuple[int, Any]:
    """The body of ``run_shipped``: -> (code, data).

    Everything that can fail here comes back as a value: the body's own
    exception, and what could not be unpickled or pickled. So any exception
    the engine raises on the flow's side is, by construction, the engine's (a
    dead worker, a shutdown), never the body's or the data's.

    With a deadline the body runs on a daemon thread of the worker and this
    returns at the deadline whatever the body does: the worker is free for
    the next call, and a body that never ends cannot hold the worker (or the
    pool's shutdown, or the flow's exit) beyond it. A coroutine is cancelled
    for real at the deadline.
    """
    import pickle

    try:
        fn = _load_body(body_blob)
    except BaseException as exc:
        missing = _missing_module(exc, "its body")
        if missing:
            return _UNSHIPPABLE, missing
        return _UNSHIPPABLE, (f"its body could not be loaded in the worker ({_describe(exc)}); "
                              f"the worker must be able to import the body's module (install "
                              f"it there); a script run with a spawn or forkserver pool needs "
                              f"its flow under `if __name__ == \"__main__\":`, and tasks "
                              f"written in a notebook need fork, loky or Dask (or a module)")
    try:
        kwargs, fields, left, is_async = pickle.loads(call_blob)
    except BaseException as exc:
        missing = _missing_module(exc, "its arguments")
        if missing:
            return _UNSHIPPABLE, missing
        return _UNSHIPPABLE, (f"its arguments could not be unpickled in the worker "
                              f"({_describe(exc)}); pass plain data, or values whose classes "
                              f"the worker can import")
    for name, value in zip(names, values):
        kwargs[name] = value
    deadline = None if left is None else time.time() + left
    snapshot = context.Snapshot((*fields, deadline))
    if deadline is None:
        ok, value = _invoke(fn, kwargs, snapshot, None, is_async)
    else:
        box: list[tuple[bool, Any]] = []
        finished = threading.Event()

        def body() -> None:
            try:
                box.append(_invoke(fn, kwargs, snapshot, deadline, is_async))
            finally:
                finished.set()

        threading.Thread(target=body, daemon=True, name=f"flowing-body-{fields[0]}").start()
        if not finished.wait(max(0.0, deadline - time.time())) or not box:
            return _TIMED_OUT, None
        ok, value = box[0]
    dumps = _dumps_for(cloud)
    if ok:
        try:
            if keep:  # it must be able to travel later (to a dependent, or here)
                if type(value) not in _PLAIN:
                    _pickle_to_nothing(value)
                return _KEPT, value
            return _OK, dumps(value)
        except BaseException as exc:
            return _UNSHIPPABLE, (f"its return value ({_type_name(value)}) cannot be pickled "
                                  f"to send it back from the worker ({_describe(exc)}); return "
                                  f"plain data (dicts, lists, str, numbers), e.g. list(...) "
                                  f"of a generator")
    error, tb = value
    if isinstance(error, _WorkerTimeout):
        return _TIMED_OUT, None
    # An exception that pickles but cannot be rebuilt (its __init__ wants other
    # arguments than its args, a classic) is sent by state instead; one that
    # cannot be sent at all becomes a RuntimeError carrying its text.
    problem: BaseException | None = None
    for shipped in (error, _ByState(error)):
        try:
            blob = dumps((shipped, tb))
            pickle.loads(blob)
            return _RAISED, blob
        except BaseException as exc:
            problem = problem or exc
    assert problem is not None
    stand_in = RuntimeError(f"{type(error).__name__}: {safe_str(error)} (the exception itself "
                            f"could not be sent back from the worker: {_describe(problem)})")
    return _RAISED, dumps((stand_in, tb))


_PLAIN = frozenset({bytes, bytearray, str, int, float, bool, type(None)})


class _Discard:
    """A file that keeps nothing: pickling into it checks a value without a copy."""

    def write(self, data: Any) -> int:
        return len(data)


def _pickle_to_nothing(value: Any) -> None:
    """Raise what pickling ``value`` with cloudpickle raises (the bytes are dropped)."""
    import importlib
    import pickle

    cloudpickle: Any = importlib.import_module("cloudpickle")
    cloudpickle.Pickler(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump(value)


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any] | None) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


class _ByState:
    """Pickles an exception as its class, args and attributes, without calling
    its ``__init__`` on the way back."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        e = self.exc
        return (_rebuild_exception, (type(e), e.args, getattr(e, "__dict__", None)))


def engine_kind(executor: Any) -> str:
    """``"dask"`` (a distributed Client or its executor), ``"cloudpickle"`` (loky) or
    ``"pickle"`` (any other process-based executor)."""
    module = type(executor).__module__
    root = module.partition(".")[0]
    if root in ("distributed", "dask"):
        return "dask"
    if root == "loky" or module.startswith("joblib.externals.loky"):
        return "cloudpickle"
    return "pickle"


class RemoteValue(Deferred):
    """A Dask step's value kept on the worker that made it (SPEC §7b).

    Its remote dependents receive it there (its future is an argument of their
    submit); ``load()`` fetches it into this process, once, the first time
    something here needs it: a ``local=True`` body, a gate, listing
    ``for_each`` items, ``StepResult.value``/``flow.value``. At the end of a
    run, the small ones are fetched in one ``gather`` (``RemoteRunner.close``)
    so that results stay readable after the client closes; a big one is
    fetched on first use, while the client is open.
    """

    __slots__ = ("future", "task", "_value", "_lock")

    def __init__(self, future: Any, task: str) -> None:
        self.future = future
        self.task = task
        self._value: Any = _UNFETCHED
        self._lock = threading.Lock()

    @property
    def fetched(self) -> bool:
        return self._value is not _UNFETCHED

    def load(self) -> Any:
        with self._lock:
            if self._value is _UNFETCHED:
                try:
                    self._value = self.future.result()
                except Exception as exc:
                    raise WorkerLost(
                        f"task '{self.task}': its value, kept on the Dask cluster, could not "
                        f"be fetched ({_describe(exc)}); read results before the client "
                        f"closes (small values are fetched at the end of the run)") from exc
            return self._value

    def set(self, value: Any) -> None:
        with self._lock:
            if self._value is _UNFETCHED:
                self._value = value

    def __repr__(self) -> str:
        return f"<value of task '{self.task}' on the Dask cluster>"


_UNFETCHED = object()


class RemoteCall:
    """Ships body calls to a process-based executor or a Dask client.

    ``start`` pickles the body (once per function and run) and the call and
    submits ``run_shipped``; ``result``, once the engine's future is done,
    unpickles what came back. No thread waits in between (see
    ``remote.RemoteRunner``). The engine only ever carries bytes. With a Dask
    ``Client`` the values that finish together are fetched in one ``gather``
    (``client.get_executor()`` fetches them one by one).
    """

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        self._kind = engine_kind(executor)
        self._dask = self.dask = self._kind == "dask"
        self.client = getattr(executor, "_client", executor) if self._dask else None
        self._cloud = self._kind != "pickle"
        self._dumps = _dumps_for(self._cloud)
        self._bodies: dict[int, tuple[Any, bytes]] = {}  # id(fn) -> (fn, pickled body)
        self._futures: set[Any] = set()  # in flight, for close()
        self._lock = threading.Lock()      # guards _futures
        self._closed = False
        self._token = f"{id(self):x}"
        self._count = itertools.count()
        # Dask Client: values finished meanwhile are gathered in one call (see _gather)
        self._gathers = self._dask and callable(getattr(executor, "gather", None))
        self._to_gather: list[tuple[Any, list[Any]]] = []  # (future, box), under _lock
        self._gathering = threading.Lock()  # held by the one thread gathering a batch
        self._target: tuple[Callable[..., Any], tuple[Any, ...]] | None = None  # Dask only

    def start(self, job: Job, kwargs: dict[str, Any], keep: bool = False) -> Any:
        """Pickle and submit the body call; -> the engine's future. Raises CannotShip
        (what could not be pickled) or CannotRun (a refused submit).

        A dependency value kept on the cluster (``RemoteValue``) is passed as its
        future: Dask hands the value to the worker from where it was made.
        ``keep``: the value is to stay on the worker (see ``run_shipped``)."""
        body = self._body_blob(job)
        names: tuple[str, ...] = ()
        futures: tuple[Any, ...] = ()
        if self._dask:
            names = tuple(k for k, v in kwargs.items() if isinstance(v, RemoteValue))
            if names:
                futures = tuple(kwargs[n].future for n in names)
                kwargs = {k: v for k, v in kwargs.items() if k not in names}
        deadline = job.deadline
        left = None if deadline is None else max(0.0, deadline - time.time())
        try:
            call = self._dumps((kwargs, job.context_fields()[:5], left, job.td.is_async))
        except Exception as exc:
            raise CannotShip(self._which_argument(job, kwargs, exc)) from None
        try:
            if self._dask:
                key = f"{job.td.name}-{next(self._count)}-{self._token}"
                target, prefix = self._dask_target()
                future = self._executor.submit(target, *prefix, body, call, self._cloud, keep,
                                               names, *futures, pure=False, key=key)
            else:
                future = self._executor.submit(run_shipped, body, call, self._cloud)
        except Exception as exc:
            raise self._engine_error(job, exc, "refused it") from exc
        with self._lock:
            self._futures.add(future)
        return future

    def result(self, job: Job, future: Any, keep: bool = False) -> Any:
        """The body's value from its finished ``future`` (raises the body's exception,
        or the engine's failure as CannotShip/WorkerLost/PoolBroken). ``keep``: a
        success is a ``RemoteValue``; nothing is fetched but a failure."""
        with self._lock:
            self._futures.discard(future)
        if keep:
            if future.status == "finished":
                return RemoteValue(future, job.td.name)
            try:
                error = future.exception()
            except BaseException as exc:
                if is_terminal(exc):
                    raise
                raise self._engine_error(job, exc, "lost it") from exc
            args: tuple[Any, ...] = getattr(error, "args", ())
            if type(error) is RuntimeError and len(args) == 3 and args[0] == KEPT_TAG:
                return self._unpack(job, args[1], args[2])
            raise self._engine_error(job, error or RuntimeError("no result"), "lost it")
        try:
            if self._gathers and future.status == "finished":
                outcome = self._gather(future)
            else:  # done: a Dask error is fetched from the cluster
                outcome = future.result()
        except Exception as exc:
            raise self._engine_error(job, exc, "lost it") from exc
        try:
            code, data = outcome
        except Exception as exc:  # not what run_shipped returns: the executor ran something else
            raise self._engine_error(job, exc, "lost it") from exc
        return self._unpack(job, code, data)

    def forget(self, future: Any) -> None:
        """The attempt is over without its value (timed out): cancel the call."""
        with self._lock:
            self._futures.discard(future)
        self._cancel(future)

    def _dask_target(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """What Dask runs: ``run_shipped`` when the workers import flowing and the
        script's modules themselves, else ``shipping.ENTRY`` with the bundle that
        ``shipping.prepare`` sent them (once per run and client; see shipping.py)."""
        with self._lock:
            if self._target is None:
                from ..runners import shipping  # lazy: Dask clients only

                try:
                    shipped = shipping.prepare(self.client)
                except Exception:  # a closed client: the submit itself will say so
                    shipped = None
                self._target = ((run_shipped, ()) if shipped is None
                                else (shipping.ENTRY, shipped))
            return self._target

    def _gather(self, future: Any) -> Any:
        """Fetch a finished Dask task's value, together with every other value that
        finished meanwhile: one round trip to the cluster for the whole batch
        instead of one per task (``Future.result()`` fetches its value alone).

        Whoever holds ``_gathering`` fetches the batch and hands each value to its
        waiting thread; a thread that finds its value there returns at once. If the
        batch cannot be fetched, each thread asks for its own value.
        """
        box: list[Any] = []
        with self._lock:
            self._to_gather.append((future, box))
        with self._gathering:
            if not box:
                with self._lock:
                    batch, self._to_gather = self._to_gather, []
                try:
                    values = self._executor.gather([f for f, _ in batch])
                except Exception:
                    values = [_UNGATHERED] * len(batch)
                for (_, waiting), value in zip(batch, values):
                    waiting.append(value)
        if box[0] is _UNGATHERED:
            return future.result()
        return box[0]

    def _body_blob(self, job: Job) -> bytes:
        td = job.td
        cached = self._bodies.get(id(td.fn))  # what ships depends on the function alone
        if cached is not None and cached[0] is td.fn:
            return cached[1]
        body = shippable_body(td, by_value_main=self._cloud)
        try:
            blob = self._dumps(body)
        except Exception as exc:
            if self._cloud:
                fix = ("something the function refers to (a global or a closure variable) "
                       "cannot be pickled: create such resources inside the body")
            else:
                fix = ("define the function at module level (not a lambda, a nested function "
                       "or a method of a local class) so that worker processes can import it; "
                       "loky and Dask ship lambdas and closures too (cloudpickle)")
            raise CannotShip(f"{job.label()}: its body {safe_repr(td.fn)} cannot be pickled to "
                             f"send it to a worker ({_describe(exc)}); {fix}") from None
        self._bodies[id(td.fn)] = (td.fn, blob)
        return blob

    def _which_argument(self, job: Job, kwargs: dict[str, Any], exc: Exception) -> str:
        for name, value in kwargs.items():
            try:
                self._dumps(value)
            except Exception as e:
                return (f"{job.label()}: its argument '{name}' ({_type_name(value)}) cannot "
                        f"be pickled to send it to a worker ({_describe(e)}); pass plain data "
                        f"between tasks (open files, locks and connections inside the body), "
                        f"or run this flow on threads (no executor=)")
        return (f"{job.label()}: its arguments cannot be pickled to send them to a worker "
                f"({_describe(exc)}); pass plain data between tasks")

    def _unpack(self, job: Job, code: int, data: Any) -> Any:
        import pickle

        if code == _OK:
            try:
                return pickle.loads(data)
            except BaseException as exc:  # SystemExit too: the value's code, not the body
                if is_terminal(exc):
                    raise
                raise CannotShip(f"{job.label()}: its return value came back from the worker "
                                 f"but cannot be unpickled here ({_describe(exc)}); return "
                                 f"plain data (dicts, lists, str, numbers)") from None
        if code == _RAISED:
            try:
                error, tb = pickle.loads(data)
            except BaseException as exc:
                if is_terminal(exc):
                    raise
                error, tb = RuntimeError(f"the body raised, and its exception cannot be "
                                         f"unpickled here ({_describe(exc)})"), None
            if tb and isinstance(error, BaseException):
                error.__cause__ = RemoteTraceback(tb)
            raise error
        if code == _UNSHIPPABLE:
            raise CannotShip(f"{job.label()}: {data}")
        job.cancelled = True
        raise A.timeout_error(job)

    def _engine_error(self, job: Job, exc: BaseException, what: str) -> BaseException:
        """The engine's own failure (never the body's: see ``run_shipped``)."""
        import concurrent.futures

        why = f"({_describe(exc)})"
        if isinstance(exc, concurrent.futures.BrokenExecutor):
            return PoolBroken(
                f"{job.label()}: the process pool is broken {why}: one of its worker processes "
                f"died while it ran this or another body (killed, out of memory, os._exit()), "
                f"or could not start (a spawn or forkserver pool imports the main script "
                f"again: put the flow under `if __name__ == \"__main__\":`); nothing more can "
                f"run on that executor: create a new one")
        if what == "refused it":
            return CannotRun(f"{job.label()}: the executor refused it {why}; pass a running "
                             f"executor (or none: flowing then uses its own threads)")
        if self._dask and _cannot_load(exc):
            return CannotShip(
                f"{job.label()}: the Dask cluster could not load the call flowing shipped to "
                f"it {why}: its scheduler or workers cannot import something the call needs "
                f"(flowing itself, or the module of the task's body); install flowing and "
                f"your modules in the cluster's environment, at the client's versions")
        if self._closed:
            return WorkerLost(f"{job.label()}: the run was closed while it ran {why}")
        if _is_cancelled(exc):
            return WorkerLost(f"{job.label()}: the engine cancelled it {why}; it is retried "
                              f"if retry_on allows")
        return WorkerLost(f"{job.label()}: the worker running it was lost {why}; it is "
                          f"retried if retry_on allows (a killed worker is often out of "
                          f"memory)")

    def _cancel(self, future: Any) -> None:
        try:
            future.cancel()
        except Exception:  # a closed client: nothing left to cancel
            pass

    def close(self) -> None:
        """The run is over: cancel what was handed to the engine and is still pending."""
        self._closed = True
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            self._cancel(future)


_UNGATHERED = object()  # a value the batch could not fetch: its thread asks for it alone


def _cannot_load(exc: BaseException) -> bool:
    """A Dask error saying the cluster could not unpickle what was sent (a module it
    lacks): the scheduler reports "Error during deserialization of the task graph",
    a worker an ImportError."""
    if isinstance(exc, ImportError):
        return True
    text = safe_str(exc).lower()
    return "deserializ" in text or "no module named" in text


def _is_cancelled(exc: BaseException) -> bool:
    import asyncio
    import concurrent.futures

    return (isinstance(exc, (concurrent.futures.CancelledError, asyncio.CancelledError))
            or type(exc).__name__ in ("CancelledError", "FutureCancelledError"))
