"""The runners of the flow's own process: its threads, an event loop, a caller's
thread-based executor, and ``open_runner``, which picks the runner for a run.

The kinds (the protocol is ``base.Runner``)
-------------------------------------------
``ThreadRunner``   daemon threads owned by the run (the default). Each runs a
                   whole attempt — gates, body, verdict, journal write — and
                   then any fused successor.
``remote.RemoteRunner`` process pools, loky, Dask: ships each body call with a
                   ``calls.RemoteCall`` and finishes the attempt when the
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

Which executors ship: any executor that is not a ``ThreadPoolExecutor``
(``ProcessPoolExecutor`` in every start method, loky, a Dask ``Client`` or
``client.get_executor()``); see ``remote`` for what then happens.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..text import safe_str
from .attempt import FAILED, Job, Outcome, broken_outcome, run_attempt_async
from .base import Runner, Shared, Unbatched, report, work

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future


class ThreadRunner(Unbatched):
    """Daemon worker threads owned by one run.

    Daemon threads, unlike ``ThreadPoolExecutor``'s, never hold the
    interpreter open: a body still running after Ctrl-C or a timeout cannot
    delay process exit. Threads are started on demand, up to ``max_workers``.
    """

    fuses = True
    queues_ahead = True

    def __init__(self, max_workers: int, shared: Shared) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # None = exit
        self._threads: list[threading.Thread] = []
        self._max = max_workers
        self._shared = shared
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
        jobs, shared = self._jobs, self._shared
        while True:
            job = jobs.get()
            if job is None:
                return
            work(job, shared)
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


class ExecutorRunner(Unbatched):
    """Runs whole attempts on the caller's thread-based executor (never shut down here)."""

    fuses = True
    queues_ahead = False

    def __init__(self, executor: Executor, shared: Shared) -> None:
        self._executor = executor
        self._shared = shared

    def submit(self, job: Job) -> None:
        try:
            future = self._executor.submit(work, job, self._shared)
        except Exception as exc:  # e.g. the executor was shut down
            self._refused(job, exc, "refused it")
            return
        # work never raises, so a failed or cancelled future means the executor
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
        self._shared.inbox.put(Outcome(job, FAILED, error=error, started_at=now,
                                       finished_at=now))

    def close(self) -> None:
        pass


class EventLoopRunner(Unbatched):
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
            outcome = broken_outcome(job, exc, None)
        report(outcome, self._shared)

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
        self.quick = None if remote is None else remote.quick  # local=True tasks never set it

    def submit(self, job: Job) -> None:
        if self._remote is not None and not job.td.local:
            self._remote.submit(job)
        elif job.td.is_async:
            if self._loop is None:
                self._loop = EventLoopRunner(self._shared)
            self._loop.submit(job)
        else:
            self._sync.submit(job)

    def flush(self) -> None:
        if self._remote is not None:
            self._remote.flush()

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
        from .remote import RemoteRunner  # lazy: remote engines only

        # coroutine bodies are shipped too, and run with asyncio.run in the worker;
        # local=True tasks run on the run's own threads (and event loop)
        remote = RemoteRunner(executor, max_workers, shared)
        return Mixed(ThreadRunner(max_workers, shared), shared, remote)
    return Mixed(sync, shared) if has_async else sync
