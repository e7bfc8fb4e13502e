"""The runner for bodies in other processes (process pools, loky, Dask), driven by the
engine's completion callbacks: no flow-side thread waits on a remote body.

Which executors ship: any executor that is not a ``ThreadPoolExecutor``
(``ProcessPoolExecutor`` in every start method, loky, a Dask ``Client`` or
``client.get_executor()``). Only the body call travels (``calls.RemoteCall``;
it runs as ``worker.run_shipped``); everything else — scheduling,
``when``/``validate`` and ``retry_until`` (on the flow's threads), retries and
their backoff, ``Limit``, the journal (written by the flow's process alone),
events and reports — stays in the flow's process and behaves as with threads.
``max_workers`` bounds the bodies handed to the engine at once: set it to the
engine's slots (``ProcessPoolExecutor(4)`` -> ``max_workers=4``; Dask:
``sum(client.nthreads().values())``); more keeps the engine fed between tiny
bodies, but see Timeouts. Every call ships its arguments: a ``for_each`` item
ships its item and the task's other dependencies whole, so keep big shared
data out of task values (load it in the body). A process pool's value comes
back to the flow's process. On a Dask ``Client`` without a journal a whole
task's value stays on the worker that made it (``calls.RemoteValue``): remote
dependents get it as a future argument, and it comes here only when something
here needs it (a ``local=True`` body, a gate, listing ``for_each`` items,
``retry_until``, ``StepResult.value``). With a journal, only a value too
big for a journal line stays (``worker.KEEP_BIG``; a small one comes here to
be written in its line), and what the journal needs of it (its digest, its
pickle) is made on its worker and only that comes here
(``RemoteCall.store``). With
``client.get_executor()`` values come back as with process pools.

Batching (process pools and loky; never Dask, whose tasks must stay one per
call to pass values on). Every call goes to the pool as ``worker.run_batch``,
which says how long its bodies took on the worker. A body function whose
calls took at most ``_QUICK_S`` (2 ms) each is quick, for every task that
runs it, until a later batch says otherwise. The scheduler may then hand over
jobs of those tasks beyond ``2 * max_workers`` (up to ``admission.QUICK_AHEAD``
times as many), and ``flush()``, called after each dispatch, ships the jobs
held meanwhile several per engine task: enough tasks to keep ``2 *
max_workers`` of them in flight, each of at most ``_BATCH_MAX`` calls and
about ``_BATCH_S`` (20 ms) of work. Each call keeps its own value, error,
retries and verdict; calls of a batch come back together. Timed (the
deadline is per call), gated (``when``/``validate``), ``Limit``-ed,
coroutine and ``local=True`` bodies always go one per engine task. A quick
job handed over is started, for fail_fast as any other (it runs even if a
failure arrives meanwhile). A worker lost during a batch fails each of its
calls with ``PoolBroken``. This is what ``pool.map(chunksize=)`` and joblib's
automatic batching do, learnt as the run goes: 400 no-op tasks on
``ProcessPoolExecutor(2)`` cost less than submitting them to the pool one by
one (``bench/remote.py``).

An attempt is split in two (``attempt.begin_attempt`` / ``finish_attempt``):

1. ``submit(job)`` (scheduler thread): the attempt begins — its start stamp and
   deadline — and the call is shipped (``RemoteCall.start``). A job with gates
   (``when``/``validate``, a ``for_each`` task's listing) begins on one of the
   run's finisher threads instead, since gates are user code.
2. The engine's future calls back (``add_done_callback``: concurrent.futures and
   Dask futures both have it) on the engine's own thread; the callback only hands
   the call to a finisher thread, which fetches and unpickles the value
   (``RemoteCall.result``), takes the verdict (``retry_until``, retries), journals
   a success and posts the outcome on ``shared.inbox`` (``base.report``).

Finisher threads: daemon threads of the run, started on demand up to
``max_workers``, running short pieces of work from one queue; a thread is never
held by a body running elsewhere.

Timeouts. The flow's deadline starts when the attempt starts (its gates
passed), so time the call waits queued in the engine counts: do not hand the
engine more timed bodies than it has slots. One daemon thread per run keeps
the deadlines of timed calls in a heap. At a call's deadline the attempt
fails with ``TimeoutError`` (retried if ``retry_on`` allows) and the engine's
future is cancelled: a call still queued is dropped (process pools, Dask), a
Dask task is released; a running one is given up by the worker itself at
the same deadline (see ``worker``). Whichever comes first — the callback or
the deadline — settles the call; the other is ignored (``_Call.settle``).

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

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..interrupts import is_terminal
from .attempt import (
    GATE,
    STARTED,
    TASK,
    Job,
    Outcome,
    begin_attempt,
    broken_outcome,
    finish_attempt,
    timeout_error,
)
from .base import Shared, report
from .calls import RemoteCall, RemoteValue, may_be_returned
from .worker import KEEP, KEEP_BIG, OK

# A process pool's values up to this size in all are unpickled on the engine's callback thread.
_QUICK_BYTES = 64 * 1024
# Batching (process pools, see the module docstring): a body that took at most
# _QUICK_S on its worker is quick; quick calls go up to _BATCH_MAX per engine
# task, adding up to about _BATCH_S of work.
_QUICK_S = 0.002
_BATCH_MAX = 16
_BATCH_S = 0.02
# Kept Dask values fetched at the end of a run: each at most, and all together at most.
_SMALL_BYTES = 1 << 20
_SMALL_TOTAL = 64 << 20
# The types of such values (as Dask names them, or the classes) that are always small.
_SCALAR_TYPES = frozenset({"NoneType", "bool", "int", "float", type(None), bool, int, float})


class _Threads:
    """Daemon threads started on demand (up to ``limit``), running callables."""

    def __init__(self, limit: int, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._limit = max(1, limit)
        self._name = name
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def run(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:  # a late callback: a thread of its own, which then ends
                threading.Thread(target=fn, daemon=True, name=f"{self._name}-late").start()
                return
            self._queue.put(fn)
            if self._idle or self._threads >= self._limit:
                return
            self._threads += 1
        threading.Thread(target=self._loop, daemon=True,
                         name=f"{self._name}-{self._threads}").start()

    def _loop(self) -> None:
        get = self._queue.get
        while True:
            with self._lock:
                self._idle += 1
            fn = get()
            with self._lock:
                self._idle -= 1
            if fn is None:
                return
            fn()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            n = self._threads
        for _ in range(n):
            self._queue.put(None)


class _Call:
    """One shipped body call in flight."""

    __slots__ = ("job", "started", "future", "keep", "_settled", "_lock")

    def __init__(self, job: Job, started: float, keep: int) -> None:
        self.job = job
        self.started = started
        self.keep = keep  # whether its value stays on the cluster (see RemoteRunner._keeps)
        self.future: Any = None
        self._settled = False
        self._lock = threading.Lock()

    @property
    def settled(self) -> bool:
        return self._settled

    def settle(self) -> bool:
        """True for the first caller only (the completion or the deadline)."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True


class _Deadlines:
    """One daemon thread that fails calls whose deadline passed."""

    def __init__(self, expire: Callable[[_Call], None]) -> None:
        self._expire = expire
        self._heap: list[tuple[float, int, _Call]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, deadline: float, call: _Call) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), call))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="flowing-remote-deadlines")
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.time()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    wait = None if not self._heap else self._heap[0][0] - now
                    self._cond.wait(wait)
                    continue
            for call in due:
                self._expire(call)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


class RemoteRunner:
    """Ships every job's body to a process-based executor or a Dask client."""

    fuses = False
    queues_ahead = True  # calls wait in the engine's own queue for its free workers

    def __init__(self, executor: Any, max_workers: int, shared: Shared) -> None:
        self._remote = RemoteCall(executor)
        self._dask = self._remote.dask
        # Process pools batch. Set by the threads that settle calls, read by admission:
        self.quick: bytearray | None = None if self._dask else bytearray(len(shared.tasks))
        self._seconds: dict[int, float] = {}  # id(body) -> a call's seconds on the worker, last seen
        self._alike: dict[int, list[int]] = {}  # id(body) -> the tasks running that body
        for i, td in enumerate(shared.tasks):
            if not (td.timeout_s is not None or td.limit is not None or td.when is not None
                    or td.validate is not None or td.is_async or td.local):  # never batched
                self._alike.setdefault(id(td.fn), []).append(i)
        self._held: list[Job] = []  # quick jobs waiting for flush() (scheduler thread)
        self._slots = max(1, max_workers)
        self._items = 0  # engine tasks in flight (process pools), under _items_lock
        self._items_lock = threading.Lock()
        # a Dask Client (its concurrent.futures face cannot pass futures on)
        self._keeps_values = self._remote.client is not None and self._remote.client is executor
        self._shared = shared
        self._threads = _Threads(max_workers, "flowing-finisher")
        self._deadlines = _Deadlines(self._expire)
        self._kept: list[RemoteValue] = []  # values left on the cluster, for close()
        self._spare = 0  # bytes of journaled pickles kept for close() (``_SMALL_TOTAL`` at most)
        self._kept_lock = threading.Lock()  # guards the two above

    def submit(self, job: Job) -> None:
        if job.gates and (job.mode == GATE or job.td.when is not None
                          or job.td.validate is not None):
            self._threads.run(lambda: self._begin(job))  # gates are user code
        elif self.quick is not None and self.quick[job.task]:
            self._held.append(job)  # shipped with others by flush()
        else:
            self._begin(job)

    def flush(self) -> None:
        """Ship the quick jobs held since the last flush, several per engine task:
        as many tasks as keep the engine's ``2 * max_workers`` slots and queue
        busy, each of at most ``_BATCH_MAX`` calls and about ``_BATCH_S`` of work."""
        held = self._held
        if not held:
            return
        self._held = []
        with self._items_lock:
            free = max(1, 2 * self._slots - self._items)
        worst = max(self._seconds.get(id(job.td.fn), _QUICK_S) for job in held)
        size = min(-(-len(held) // free), _BATCH_MAX, max(1, int(_BATCH_S / max(worst, 1e-6))))
        for k in range(0, len(held), size):
            self._ship(held[k:k + size])

    def _begin(self, job: Job) -> None:
        if not self._dask:
            self._ship([job])
            return
        call = self._started(job)
        if call is None:
            return
        call.keep = self._keeps(job)
        try:
            call.future = self._remote.start(job, job.shipped_kwargs(), call.keep)
            if job.deadline is not None:
                self._deadlines.add(job.deadline, call)
            call.future.add_done_callback(lambda _: self._done(call))
        except BaseException as exc:  # could not ship, or the engine refused it
            self._fail(call, exc)

    def _started(self, job: Job) -> _Call | None:
        """The attempt begins here (its gates, its deadline): its call, or None when
        it is over already (a gate said so; the run was interrupted)."""
        shared = self._shared
        if shared.interrupted:
            return None
        if job.announce:
            shared.inbox.put(Outcome(job, STARTED, started_at=time.time()))
        started, early = begin_attempt(job)
        if early is not None:
            report(early, shared)
            return None
        return _Call(job, started, 0)

    def _fail(self, call: _Call, error: BaseException) -> None:
        """The call could not be shipped: its attempt fails with ``error``."""
        if call.settle():
            self._threads.run(lambda: self._finish(call, None, error))

    def _ship(self, jobs: list[Job]) -> None:
        """Process pools: begin the attempts and ship their calls as one engine task."""
        calls: list[_Call] = []
        packed = []
        for job in jobs:
            call = self._started(job)
            if call is None:
                continue
            try:
                packed.append(self._remote.pack(job, job.shipped_kwargs()))
            except BaseException as exc:  # CannotShip: this call alone fails
                self._fail(call, exc)
                continue
            calls.append(call)
        if not calls:
            return
        try:
            future = self._remote.start_batch(tuple(packed))
        except BaseException as exc:  # the engine refused it
            for call in calls:
                self._fail(call, self._remote.engine_error(call.job, exc, "refused it"))
            return
        with self._items_lock:
            self._items += 1
        for call in calls:
            call.future = future
            if call.job.deadline is not None:  # never batched: a timed call goes alone
                self._deadlines.add(call.job.deadline, call)
        future.add_done_callback(lambda _: self._batch_done(calls, future))

    def _batch_done(self, calls: list[_Call], future: Any) -> None:
        """A process pool's callback (its thread): settle the calls right here when that
        is quick (see ``_quick_batch``), else on a finisher."""
        with self._items_lock:
            self._items -= 1
        if all(call.settled for call in calls):
            return  # timed out (a timed call goes alone)
        try:
            quick = self._quick_batch(calls, future)
        except Exception:  # never leave a call unsettled
            quick = False
        if quick:
            self._settle_batch(calls, future)
        else:
            self._threads.run(lambda: self._settle_batch(calls, future))

    def _quick_batch(self, calls: list[_Call], future: Any) -> bool:
        """Successes with small values, no ``retry_until`` and no journal: their
        verdicts need no I/O, and no user code but unpickling those values (at most
        ``_QUICK_BYTES`` in all: a class's ``__setstate__`` runs on this thread)."""
        if self._shared.journal is not None or future.cancelled():
            return False
        if any(call.job.td.retry_until is not None for call in calls):
            return False
        if future.exception(timeout=0) is not None:
            return False
        total = 0
        for code, data in future.result(timeout=0)[0]:
            if code != OK or type(data) is not bytes:
                return False
            total += len(data)
        return total <= _QUICK_BYTES

    def _settle_batch(self, calls: list[_Call], future: Any) -> None:
        """Each call's verdict from what its engine task brought back."""
        try:
            done, seconds = self._remote.batch_outcomes(future)
            if not len(done) == len(seconds) == len(calls):
                raise RuntimeError(f"{len(done)} results for {len(calls)} calls")
        except BaseException as exc:  # the engine's own failure (or a cancelled call)
            for call in calls:
                if call.settle():
                    self._finish(call, None, self._remote.engine_error(call.job, exc, "lost it"))
            return
        self._learn(calls, seconds)
        for call, (code, data) in zip(calls, done):
            if not call.settle():
                continue  # its deadline settled it
            try:
                value = self._remote.unpack(call.job, code, data)
            except BaseException as exc:
                self._finish(call, None, exc)
                continue
            self._finish(call, value, None)

    def _learn(self, calls: list[_Call], seconds: list[float]) -> None:
        """Mark the tasks whose bodies are quick (by the mean time of their own calls
        in this batch), with every task running the same function (admission then
        hands over more of them, and ``submit`` holds them for ``flush``). A timed,
        gated, limited or coroutine body is never batched (see ``__init__``)."""
        quick = self.quick
        assert quick is not None
        took: dict[int, list[float]] = {}
        for call, s in zip(calls, seconds):
            took.setdefault(id(call.job.td.fn), []).append(s)
        for body, times in took.items():
            each = sum(times) / len(times)
            flag = each <= _QUICK_S
            was = self._seconds.get(body)
            self._seconds[body] = each
            if was is None or (was <= _QUICK_S) != flag:
                for i in self._alike.get(body, ()):
                    quick[i] = flag

    def _done(self, call: _Call) -> None:
        """The engine's callback (its thread): hand the call to a finisher, or finish
        it right here when that is quick and runs no user code (see ``_quick``)."""
        if not call.settle():
            return
        try:
            quick = self._quick(call)
        except Exception:  # never leave a call unsettled
            quick = False
        if quick:
            self._fetch(call)
        else:
            self._threads.run(lambda: self._fetch(call))

    def _keeps(self, job: Job) -> int:
        """Whether this attempt's value stays on the cluster (SPEC §7b): Dask, a whole
        task (items come back: the scheduler lists them) and no ``retry_until``
        (it reads the value here). With a journal only a big one (``KEEP_BIG``):
        a small value comes here anyway, to be written in its line."""
        if not (self._keeps_values and job.mode == TASK and job.td.retry_until is None):
            return 0
        return KEEP if self._shared.journal is None else KEEP_BIG

    def _quick(self, call: _Call) -> bool:
        """A kept Dask success without a journal: its verdict is a success needing
        no user code nor I/O. (Other Dask values are fetched over the network,
        and the journal's part is made on the cluster: on a finisher thread.)"""
        return (call.keep == KEEP and bool(call.future.status == "finished")
                and not may_be_returned(call.future))

    def _fetch(self, call: _Call) -> None:
        try:
            value = self._remote.result(call.job, call.future, call.keep)
        except BaseException as exc:
            self._finish(call, None, exc)
            return
        if not isinstance(value, RemoteValue):
            self._finish(call, value, None)
            return
        shared = self._shared
        try:
            if shared.journal is not None:  # its digest and pickle are made where it is
                value.digester = shared.digest
                job = call.job
                self._remote.store(value, job.store and job.key is not None,
                                   lambda: shared.closed or shared.interrupted)
                if value.made is None:  # not made there: fetched and digested here (and
                    value.load()        # dependents get copies: see RemoteCall.start)
        except BaseException as exc:
            self._finish(call, None, exc)
            return
        with self._kept_lock:
            self._kept.append(value)
        pickled = value.stored
        try:
            self._finish(call, value, None)  # (journals it: see replay.record)
        finally:
            value.stored = None  # written, or never to be: the frames go now...
        if pickled is not None:  # ... unless close() would fetch the value again
            from ..journal.values import pickled_size  # lazy: Dask with a journal only

            size = pickled_size(*pickled)
            with self._kept_lock:
                if size <= _SMALL_BYTES and self._spare + size <= _SMALL_TOTAL:
                    self._spare += size
                    value.stored = pickled

    def _expire(self, call: _Call) -> None:
        """A call's deadline passed (deadline thread)."""
        if not call.settle():
            return
        job = call.job
        job.cancelled = True
        self._remote.forget(call.future)
        self._threads.run(lambda: self._finish(call, None, timeout_error(job)))

    def _finish(self, call: _Call, value: Any, error: BaseException | None) -> None:
        try:
            outcome = finish_attempt(call.job, call.started, value, error)
        except BaseException as exc:  # finish_attempt never raises; belt and braces
            outcome = broken_outcome(call.job, exc, call.started)
        report(outcome, self._shared)

    def close(self) -> None:
        """Cancel what is still pending on the engine; let the threads go; fetch the
        small values kept on the cluster (see ``_fetch_small``)."""
        self._remote.close()
        self._deadlines.close()
        self._threads.close()
        with self._kept_lock:
            kept, self._kept, self._spare = self._kept, [], 0
        if kept and not self._shared.interrupted:
            self._fetch_small(kept)
        for v in kept:
            v.stored = None

    def _fetch_small(self, kept: list[RemoteValue]) -> None:
        """One ``gather`` of the kept values of at most ``_SMALL_BYTES`` each (as the
        cluster measured them), up to ``_SMALL_TOTAL`` in all: results stay readable
        once the client is closed. Bigger values stay remote until read. A value
        the cluster reports of type ``NoneType`` (the class, not a name) is None:
        it is not fetched, nor is one whose pickle came here for the journal (unless
        it is no longer the value that pickle holds: ``dirty``)."""
        client: Any = self._remote.client
        left = [v for v in kept if not v.fetched]
        for v in left:  # a None needs no fetching (the class itself: a name could be a user's)
            if getattr(v.future, "type", None) is type(None):
                v.set(None)
            elif v.stored is not None and not v.dirty:
                import pickle  # lazy: keeps import flowing fast

                try:
                    v.set(pickle.loads(v.stored.frame, buffers=v.stored.buffers))
                except BaseException as exc:  # (a class gone meanwhile): gathered below
                    if is_terminal(exc):
                        raise
        left = [v for v in left if not v.fetched]
        # a bool or a number (the type the cluster reported) needs no measuring
        small = [v for v in left if getattr(v.future, "type", None) in _SCALAR_TYPES]
        left = [v for v in left if getattr(v.future, "type", None) not in _SCALAR_TYPES]
        try:
            sizes = client.nbytes(keys=[v.future.key for v in left], summary=False) if left else {}
            total = 0
            for v in left:
                size = sizes.get(v.future.key)
                if isinstance(size, int) and size <= _SMALL_BYTES and total + size <= _SMALL_TOTAL:
                    small.append(v)
                    total += size
            if small:
                for v, value in zip(small, client.gather([v.future for v in small])):
                    v.set(value)
        except Exception:  # a closed client, a lost worker: read on first use (or say why)
            pass
