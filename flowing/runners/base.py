"""What every runner shares: the ``Runner`` protocol, the run's state that workers
may see (``Shared``), and how an attempt's outcome goes back to the scheduler.

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
``quick``        None, or (a runner that batches) a flag per task, set while
                 its bodies are quick enough to ship several per engine call:
                 admission may then hand it more jobs of that task.
``flush()``      the scheduler has handed over what it could for now: ship any
                 job held back to go with others (called after each dispatch).

The scheduler talks to one ``Runner`` and never learns which kind it is: the
run's threads, an event loop or a caller's executor (``local``), a process
pool or a Dask cluster (``remote``).

Every attempt goes through ``attempt.run_attempt``/``run_attempt_async`` (or
its two halves, ``begin_attempt``/``finish_attempt``), which never raise:
that is the one boundary that makes every job produce an outcome. What can
still be lost is a whole worker (a killed process, a dead Dask worker); the
engine's future then fails, and ``calls.RemoteCall`` turns that into the
task's error.

An attempt's verdict goes back through ``report``, on the thread that has it:
a success is journaled first (``Shared.record``; the policy is
``replay.record``), so it is durable before any dependent starts; a failure
may trip fail_fast; then the outcome is posted on ``shared.inbox``. A
journal that raises never loses the outcome: it becomes the outcome's
warning. (A ``STARTED`` notice, or a job an executor refused, is posted as
it is.) ``work`` is the loop of a worker thread: one sync job, then any
fused successors, each reported.
"""

from __future__ import annotations

import queue
import time
from array import array
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..replay.record import record_outcome
from ..text import safe_str
from .attempt import FAILED, ITEM, STARTED, SUCCEEDED, TASK, Job, Outcome, RunSignals, run_attempt

if TYPE_CHECKING:
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
        """Journal a success, if the replay policy allows it (``replay.record``);
        called by whichever thread sees it first."""
        record_outcome(self, outcome, outcome.job.mode == ITEM)

    def fail_fast_trips(self, outcome: Outcome) -> bool:
        job = outcome.job
        return (outcome.kind is FAILED and self.fail_fast and job.mode != ITEM
                and not job.td.detached)


class Runner(Protocol):
    """Where the scheduler hands its jobs (see the module docstring)."""

    fuses: bool
    queues_ahead: bool
    quick: bytearray | None

    def submit(self, job: Job) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Unbatched:
    """For runners that ship one job at a time: nothing is ever held back."""

    quick: bytearray | None = None

    def flush(self) -> None:
        pass


def work(job: Job | None, shared: Shared) -> None:
    """Worker entry: run a sync job, then any fused successors, reporting each."""
    while job is not None:
        if shared.interrupted:
            return
        # No fail_fast check here: whether a job may start was decided by the scheduler
        # when it handed the job over (a failure it had not seen then never skips it).
        if job.announce:
            shared.inbox.put(Outcome(job, STARTED, started_at=time.time()))
        outcome = run_attempt(job)
        successor = None
        if outcome.kind is SUCCEEDED and job.mode == TASK:
            s = shared.fused_next[job.task]
            if s >= 0:
                successor = Job(s, shared.tasks[s], {job.td.name: outcome.value},
                                key=None if shared.keys is None else shared.keys[s],
                                signals=shared)
        if not report(outcome, shared, successor):
            successor = None
        job = successor


def report(outcome: Outcome, shared: Shared, successor: Job | None = None) -> bool:
    """Journal a success (durable before any dependent starts), trip fail_fast on a
    failure, and post the outcome. Returns whether the fused ``successor`` may run."""
    job = outcome.job
    try:
        if outcome.kind is SUCCEEDED:
            shared.record(outcome)
            if successor is not None and not shared.stopping.is_set():
                outcome.next_job = successor
        elif shared.fail_fast_trips(outcome):
            shared.stop(f"fail_fast: '{job.td.name}' failed")
    except BaseException as exc:  # the journal is never allowed to lose an outcome
        outcome.warning = f"{job.label()}: could not journal its result ({safe_str(exc)})"
    shared.inbox.put(outcome)
    return outcome.next_job is not None
