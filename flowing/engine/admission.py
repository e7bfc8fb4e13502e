"""Admission: which waiting job is handed to the runner next, and when.

Policy
------
* At most ``capacity`` jobs are in flight: ``max_workers``, or twice that
  when the runner queues jobs ahead for its own idle workers (so a worker
  never idles waiting for the scheduler). Jobs start in FIFO order.
* A runner that batches (``Runner.quick``: a process pool) marks the tasks
  whose bodies it measured quick; their jobs may go beyond ``capacity``, up
  to ``quick_capacity``, so that the runner can ship several in one engine
  call. The first job that is not quick waits for ``capacity`` as usual.
* A task's ``Limit`` further bounds its bodies in flight and their start rate
  across every flow of the process: its jobs are parked per Limit (FIFO) and
  admitted by ``Limit.try_acquire``. A rate counts starts, so a rate-limited
  job starts the moment it is admitted, within ``max_workers``. Blocked on
  concurrency, the scheduler asks the Limit to wake it (another flow may free
  the slot); blocked on the rate, it sets a timer.
* A sync body that timed out keeps its Limit slot until it really ends, or
  ``linger_grace`` seconds past its deadline (then with one warning naming
  the task); its worker slot is free at the deadline.
* A failed attempt that may be retried frees its slot and comes back after
  its backoff through a timer; waiting never holds a worker.
* A timed job whose verdict has not arrived well after its deadline (its
  timeout plus max(1 s, 10%)) is failed here (``fail_overdue``) and its late
  verdict ignored, so ``run()`` always returns.
* fail_fast is decided by the scheduler (``Starter.not_started``), asked for
  a task's first attempt just before it is handed over, never after.

Time comes from a ``Clock`` (``SYSTEM_CLOCK`` by default): tests pass one they
advance by hand, so backoffs, rates and deadlines pass without sleeping.

State
-----
``ready``        released tasks (by index) and jobs (retries, items) waiting
                 for a slot, FIFO; a task's Job is made when it starts
``in_flight``    jobs handed to the runner whose verdict is not taken yet
``quick``        the runner's flags (task index -> 1: quick bodies), or None
``timers``       heap of (due, seq, job): retries after their backoff, and
                 wake-ups for rate limits (job None)
``overdue``      heap of (due, seq, job): timed jobs to fail if their verdict
                 never comes
``parked``       per Limit, the jobs waiting for it (FIFO)
``busy_limits``  the Limits with parked jobs to look at
``admitted``     jobs holding a Limit slot, until settled
"""

from __future__ import annotations

import collections
import heapq
import itertools
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..runners import attempt as attempt_
from ..runners.attempt import Job, Outcome

if TYPE_CHECKING:
    from ..limits import Limit

# The longest the scheduler sleeps without looking around (timers, progress).
MAX_WAIT_S = 1.0

# Jobs of quick tasks a batching runner may hold, as a multiple of ``capacity``.
QUICK_AHEAD = 16

# A sync body that timed out keeps its Limit slot while it still runs, for at most
# this long after its deadline, or timeout_s if that is longer (see give_back).
LINGER_GRACE_S = 5.0


def linger_grace(timeout_s: float | None) -> float:
    """Seconds past its deadline a timed-out body may keep its Limit slot."""
    return max(LINGER_GRACE_S, timeout_s or 0.0)


class Clock(Protocol):
    """Where the scheduler reads time and waits for its inbox."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def wait(self, inbox: queue.SimpleQueue[Any], timeout: float) -> Any:
        """The next inbox entry, or None once ``timeout`` seconds passed without one."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, a blocking ``get``."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    @staticmethod
    def wait(inbox: queue.SimpleQueue[Any], timeout: float) -> Any:
        try:
            return inbox.get(timeout=timeout)
        except queue.Empty:
            return None


SYSTEM_CLOCK: Clock = SystemClock()


class Starter(Protocol):
    """What admission needs of the scheduler to hand a job over."""

    def not_started(self, i: int) -> bool:
        """fail_fast: skip main task i instead of starting it (True if skipped)."""
        ...

    def make_job(self, i: int) -> Job: ...

    def start(self, job: Job) -> None:
        """Hand ``job`` to the runner (admission has counted it in flight)."""
        ...


class Admission:
    """Capacity, Limit parking, timers and overdue jobs of one run."""

    def __init__(self, max_workers: int, capacity: int, clock: Clock,
                 wake: Callable[[], None], warn: Callable[[str], None],
                 quick: bytearray | None = None, quick_capacity: int = 0) -> None:
        self.max_workers = max_workers
        self.capacity = capacity
        self.quick = quick  # per task, 1 while the runner batches its quick bodies
        self.quick_capacity = quick_capacity
        self.clock = clock
        self.wake = wake  # a Limit slot freed (maybe by another flow)
        self.warn = warn  # a warning, once per text
        self.ready: collections.deque[Job | int] = collections.deque()
        self.in_flight = 0
        self.timers: list[tuple[float, int, Job | None]] = []
        self.overdue: list[tuple[float, int, Job]] = []
        self.seq = itertools.count()
        self.parked: dict[Limit, collections.deque[Job]] = {}
        self.busy_limits: set[Limit] = set()
        self.admitted: set[Job] = set()
        self._lingered: set[str] = set()  # tasks warned about a body outlasting its grace

    # ----- waiting ------------------------------------------------------------

    def queue(self, job: Job) -> None:
        """A job waits for a slot (and for its Limit, if it has one)."""
        limit = job.td.limit
        if limit is not None and job.mode != attempt_.GATE:
            parked = self.parked.get(limit)
            if parked is None:
                parked = self.parked[limit] = collections.deque()
            parked.append(job)
            self.busy_limits.add(limit)
        else:
            self.ready.append(job)

    def retry_later(self, job: Job, delay: float) -> None:
        heapq.heappush(self.timers, (self.clock.monotonic() + delay, next(self.seq), job))

    def idle(self) -> bool:
        """Nothing in flight, no timer, nothing parked: nothing can ever come back."""
        return not self.in_flight and not self.timers and not any(self.parked.values())

    def wait_time(self) -> float:
        due = MAX_WAIT_S
        if self.timers or self.overdue:
            now = self.clock.monotonic()
            if self.timers:
                due = min(due, max(0.0, self.timers[0][0] - now))
            if self.overdue:
                due = min(due, max(0.0, self.overdue[0][0] - now))
        return due

    def fire_timers(self) -> None:
        now = self.clock.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            job = heapq.heappop(timers)[2]
            if job is not None:
                self.queue(job)

    # ----- handing over -------------------------------------------------------

    def dispatch(self, s: Starter) -> None:
        """Hand waiting jobs to the runner while there is room."""
        if self.in_flight >= self.capacity:
            if self.quick is None or not self.ready:
                return
        elif self.busy_limits:
            self._dispatch_limited(s)
        ready, capacity, start, quick = self.ready, self.capacity, s.start, self.quick
        while ready:
            if self.in_flight >= capacity:
                # beyond it, only jobs of tasks whose bodies the runner found quick
                head = ready[0]
                if (quick is None or self.in_flight >= self.quick_capacity
                        or not quick[head if isinstance(head, int) else head.task]):
                    break
            entry = ready.popleft()
            if type(entry) is int:  # a released task: its first attempt starts now
                if s.not_started(entry):
                    continue
                job = s.make_job(entry)
            else:
                job = entry  # type: ignore[assignment]
                if self._stopped_before_start(s, job):
                    continue
            if job.td.timeout_s is not None:
                self._start(s, job)
            else:  # (the common case, inlined: it runs once per task)
                self.in_flight += 1
                start(job)

    def _dispatch_limited(self, s: Starter) -> None:
        now = self.clock.monotonic()
        for limit in list(self.busy_limits):
            parked = self.parked[limit]
            # a rate counts starts, so its jobs must start the moment they are admitted
            room = self.max_workers if limit.rate_count else self.capacity
            while parked and self.in_flight < room:
                if self._stopped_before_start(s, parked[0]):
                    parked.popleft()
                    continue
                wait = limit.try_acquire(now)
                if wait is not None:
                    if wait == float("inf"):
                        limit.add_waiter(self.wake)  # blocked on concurrency, maybe by another flow
                    else:
                        heapq.heappush(self.timers, (now + wait, next(self.seq), None))
                    break
                self.admitted.add(parked[0])
                self._start(s, parked.popleft())
            if not parked:
                self.busy_limits.discard(limit)
                limit.remove_waiter(self.wake)

    @staticmethod
    def _stopped_before_start(s: Starter, job: Job) -> bool:
        """fail_fast: a main task that has not started yet is skipped instead."""
        return job.attempt == 1 and job.mode != attempt_.ITEM and s.not_started(job.task)

    def _start(self, s: Starter, job: Job) -> None:
        self.in_flight += 1
        timeout = job.td.timeout_s
        if timeout is not None:  # a GATE job's listing counts against it too
            due = self.clock.monotonic() + timeout + max(1.0, 0.1 * timeout)
            heapq.heappush(self.overdue, (due, next(self.seq), job))
        s.start(job)

    # ----- verdicts -----------------------------------------------------------

    def settled(self, outcome: Outcome) -> None:
        """The verdict of a job in flight was taken: its slot, and its Limit's, are free
        (a fused successor keeps the worker slot)."""
        job = outcome.job
        if outcome.next_job is None:
            self.in_flight -= 1
        limit = job.td.limit
        if limit is not None and job.mode != attempt_.GATE:
            self.admitted.discard(job)
            self.give_back(job, limit)
            if self.parked.get(limit):
                self.busy_limits.add(limit)

    def give_back(self, job: Job, limit: Limit) -> None:
        """Free the Limit slot of a job whose verdict came. A sync body that timed out
        but still runs (``job.abandoned``) keeps it until it really ends, so the
        Limit stays a true bound on what the service sees; one still running
        ``linger_grace`` seconds after its deadline gives it back with a warning."""
        abandoned = job.abandoned
        if abandoned is None or limit.max_concurrency is None:
            limit.release()  # a rate counts starts only: nothing to hold
            return
        grace = linger_grace(job.td.timeout_s)
        name, warned, warn = job.td.name, self._lingered, self.warn

        def overstayed() -> None:
            if name not in warned:
                warned.add(name)
                warn(f"task '{name}': body still running {grace:g}s past its timeout; its "
                     f"Limit slot is given back, so one more may start; make the body "
                     f"honour timeout_s (e.g. pass it on to the call)")

        limit.release_when(abandoned.then, grace, overstayed)

    def fail_overdue(self, on_outcome: Callable[[Outcome], None]) -> None:
        """A timed job whose verdict never came (a blocked event loop, a hung engine):
        fail it here, at its deadline plus a grace period."""
        clock = self.clock
        now = clock.monotonic()
        while self.overdue and self.overdue[0][0] <= now:
            _, _, job = heapq.heappop(self.overdue)
            if job.settled:
                continue
            deadline = job.deadline
            timeout = job.td.timeout_s or 0.0
            grace = max(1.0, 0.1 * timeout)
            if deadline is None or clock.time() < deadline + grace:
                # not started yet (queued at the runner), or not overdue yet: look again later
                wait = grace if deadline is None else deadline + grace - clock.time()
                heapq.heappush(self.overdue, (now + max(0.05, wait), next(self.seq), job))
                continue
            job.cancelled = True
            started = job.first_started or clock.time()
            if job.mode == attempt_.GATE:  # stuck listing its items (a source blocked in next())
                outcome = Outcome(job, attempt_.FAILED, error=attempt_.timeout_error(job),
                                  reason="listing the for_each items timed out",
                                  started_at=started, finished_at=clock.time())
            else:
                outcome = attempt_.verdict(job, None, attempt_.timeout_error(job), started)
            outcome.warning = (f"{job.label()}: no verdict {grace:g}s after its deadline; "
                               f"failed by the scheduler and abandoned")
            on_outcome(outcome)

    def close(self) -> None:
        """The run is over (or cut short by Ctrl-C): admitted jobs whose verdict will never
        be taken give their Limit slot back now (a Limit is process-wide: later runs
        would wait forever), and no Limit wakes this run again."""
        for limit in self.parked:
            limit.remove_waiter(self.wake)
        for job in self.admitted:
            if not job.settled and job.td.limit is not None:
                job.settled = True
                job.td.limit.release()
        self.admitted.clear()
