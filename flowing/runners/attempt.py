"""One attempt of one task: gates, body, ``retry_until``, and the verdict.

A ``Job`` is what a runner is handed; an ``Outcome`` is what comes back to
the scheduler. ``run_attempt`` (sync bodies, on a worker thread) and
``run_attempt_async`` (coroutine bodies, on the run's event loop) NEVER
raise: each is one catch-all boundary, so whatever user code returns or
raises anywhere in an attempt — a gate value with no truth value, an
exception whose ``__str__`` raises, a ``retry_after`` property that raises —
becomes a FAILED (or retried) outcome naming the task. Whether a failed
attempt is retried, and after how long, is decided here from the task's
policy (``retry.RetryPolicy.next_delay``); the scheduler only waits and resubmits.

Order within a job, as the spec fixes it: ``when`` (falsy: skipped; raises
or has no truth value: failed, 0 attempts) -> ``validate`` (raises: failed,
0 attempts, no retry) -> body -> ``retry_until`` (falsy: retry; raises:
failed, value kept). The gates run once per task, in the job of its first
attempt (for ``for_each`` tasks, in a job of their own before the fan-out),
always in the flow's process.

Told to stop. ``verdict`` is the one place that decides whether a body
ended while it was told to stop (deadline, Ctrl-C, fail_fast): such an
outcome is marked ``stopped`` and the journal's entry point refuses it. A
body that heard the stop (``current().cancelled()`` returned True to it) and
returned a value FAILS with ``Cancelled`` (the value may be partial; it is
kept in the result); one that never asked SUCCEEDS unjournaled.

Listing a ``for_each`` source (``_list_items``) is part of the GATE job's
attempt: in adaptive ``islice`` chunks, against ``timeout_s``, stopped by
Ctrl-C and fail_fast, and at most ``MAX_ITEMS`` items.

A body that ``os.fork()``s and whose child returns into this module's code
(or ``worker.run_shipped``): the child leaves with ``os._exit`` at once
(``exit_if_forked``), it never runs on as a copy of the run's worker.

Where the body runs: ``run_attempt`` calls it on this thread (``call_here``,
with ``timeout_s`` enforced by abandoning a daemon thread), ``run_attempt_async``
on the run's event loop; each sets ``flowing.current()`` for the body. A
body that completes later, elsewhere (``remote.RemoteRunner``: another
process, no thread waiting for it) uses the two halves of ``run_attempt``:
``begin_attempt`` (gates, start, deadline) before it is shipped and
``finish_attempt`` (the verdict) when its value or error comes back; both
never raise.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any

from .. import context
from .. import retry as retry_policy
from ..errors import Cancelled, GateError, NoRetry, RetryUntilRejected
from ..results import Deferred
from ..text import safe_repr, safe_str

if TYPE_CHECKING:
    from ..tasks import TaskDef

# Job modes
TASK = 0  # one attempt of a whole task
GATE = 1  # a for_each task before fan-out: its when/validate gates, then listing its items
ITEM = 2  # one attempt of one for_each item

# Outcome kinds
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
RETRY = "retry"    # failed attempt that will be retried after ``retry_in`` seconds
PASSED = "passed"  # GATE job: the gates let the task through
STARTED = "started"  # not a verdict: a queued job announcing that its body starts now

# The reason of a task skipped by its own ``when`` starts with this (Flow.ok reads it).
WHEN_SKIP = "when() returned "


class RunSignals:
    """The run-wide stop signals a body may poll through ``current().cancelled()``."""

    __slots__ = ("stopping", "interrupted")

    def __init__(self) -> None:
        self.stopping = threading.Event()  # fail_fast (or Ctrl-C): no new main task starts
        self.interrupted = False           # Ctrl-C: everything is told to stop


class Job:
    """One attempt of one task (or item), as handed to a runner."""

    __slots__ = ("task", "td", "kwargs", "inputs", "attempt", "mode", "item", "item_value",
                 "gates", "key", "first_started", "announce", "deadline", "cancelled",
                 "settled", "signals", "in_digest", "store", "gate_inputs", "saw_stop",
                 "abandoned", "remote_change")

    def __init__(self, task: int, td: TaskDef, kwargs: dict[str, Any], attempt: int = 1,
                 mode: int = TASK, item: int | None = None, gates: bool = True,
                 key: str | None = None, first_started: float | None = None,
                 signals: RunSignals | None = None, inputs: dict[str, Any] | None = None,
                 item_value: Any = None, in_digest: str | None = None,
                 store: bool = True) -> None:
        self.task = task              # index of the task in the graph
        self.td = td                  # its TaskDef
        self.kwargs = kwargs          # dependencies by name (the gates see only these)
        self.inputs = inputs          # Flow inputs the body receives too, or None
        self.attempt = attempt        # 1-based attempt number
        self.mode = mode              # TASK, GATE or ITEM
        self.item = item              # item index for ITEM jobs
        self.item_value = item_value  # the item itself for ITEM jobs
        self.gates = gates            # run when/validate first
        self.key = key                # journal key of this task or item, if journaling
        self.in_digest = in_digest    # digest of the dependency values (journal), or None
        self.store = store            # journal the value (False: marker only)
        self.first_started = first_started  # epoch start of attempt 1, kept across retries
        self.announce = False         # post a STARTED notice when the body starts
        self.deadline: float | None = None  # epoch deadline of this attempt's body
        self.cancelled = False        # told to stop: timed out (set by whoever saw it)
        self.saw_stop = False         # the body asked current().cancelled() and heard True
        self.settled = False          # scheduler thread only: its verdict has been taken
        self.signals = signals        # the run's stop signals
        # Flow inputs (when's, validate's) gates name, or None
        self.gate_inputs: tuple[dict[str, Any], dict[str, Any]] | None = None
        # a sync body that timed out and still runs on its abandoned thread, or None
        self.abandoned: Abandoned | None = None
        # why its result must not be journaled, seen by its worker (calls.CHANGED), or None
        self.remote_change: str | None = None

    def retry_job(self) -> Job:
        return Job(self.task, self.td, self.kwargs, self.attempt + 1, self.mode, self.item,
                   False, self.key, self.first_started, self.signals, self.inputs,
                   self.item_value, self.in_digest, self.store)

    def shipped_kwargs(self) -> dict[str, Any]:
        """The body's arguments as they are: a value kept on the cluster stays there."""
        return self.kwargs if not self.inputs else {**self.kwargs, **self.inputs}

    def body_kwargs(self) -> dict[str, Any]:
        """The body's arguments, in this process (values kept remote are fetched)."""
        return here(self.shipped_kwargs())

    def gate_kwargs(self, gate: int) -> dict[str, Any]:
        """Keyword arguments of gate 0 (when) or 1 (validate)."""
        extra = None if self.gate_inputs is None else self.gate_inputs[gate]
        return here({**self.kwargs, **extra} if extra else self.kwargs)

    def label(self) -> str:
        """``task 'x'`` or ``task 'x' item 3 ('a.csv')``, for messages."""
        if self.mode == ITEM:
            return f"task '{self.td.name}' item {self.item} ({safe_repr(self.item_value, 40)})"
        return f"task '{self.td.name}'"

    # -- what flowing.current() reads ---------------------------------------

    def context_fields(self) -> tuple[str, int, int, int | None, Any, float | None]:
        is_item = self.mode == ITEM
        return (self.td.name, self.attempt, 1 + self.td.retry, self.item if is_item else None,
                self.item_value if is_item else None, self.deadline)

    def is_cancelled(self) -> bool:
        """``current().cancelled()``: whether the body is told to stop (remembered when
        it is: a body that heard it may have returned a partial value)."""
        told = self.told_to_stop()
        if told:
            self.saw_stop = True
        return told

    def told_to_stop(self) -> bool:
        """Timed out, Ctrl-C, or (a main task) fail_fast stopped the run."""
        if self.cancelled:
            return True
        s = self.signals
        if s is None:
            return False
        return s.interrupted or (s.stopping.is_set() and not self.td.detached)

    def stop_reason(self) -> str:
        """Why the job is told to stop, for messages."""
        if self.cancelled:
            return "its deadline passed"
        s = self.signals
        if s is not None and s.interrupted:
            return "Ctrl-C"
        why = getattr(s, "stop_reason", None)
        return why if isinstance(why, str) else "the run is stopping"


def here(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every value that was kept where it was made (``Deferred``, e.g.
    a Dask step's value, ``remote.RemoteValue``) fetched into this process: the one
    place where user code in the flow's process (a local body, a gate, listing
    ``for_each`` items) receives dependency values."""
    for value in kwargs.values():
        if isinstance(value, Deferred):
            return {k: v.load() if isinstance(v, Deferred) else v for k, v in kwargs.items()}
    return kwargs


class Abandoned:
    """A timed-out sync body still running on the daemon thread ``call_here`` left it
    on. ``then(fn)`` asks for ``fn()`` (on that thread) when the body ends; it
    returns False, calling nothing, if the body has ended already. ``end()`` is
    called by whoever sees the end first (it may be called twice)."""

    __slots__ = ("_lock", "_ended", "_then")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended = False
        self._then: Callable[[], object] | None = None

    def end(self) -> None:
        with self._lock:
            self._ended = True
            then, self._then = self._then, None
        if then is not None:
            then()

    def then(self, fn: Callable[[], object]) -> bool:
        with self._lock:
            if self._ended:
                return False
            self._then = fn
            return True


class Outcome:
    """The verdict of one job."""

    __slots__ = ("job", "kind", "value", "error", "traceback", "reason", "attempts",
                 "started_at", "finished_at", "retry_in", "journaled", "next_job", "digest",
                 "warning", "stopped")

    def __init__(self, job: Job, kind: str, value: Any = None,
                 error: BaseException | None = None, reason: str | None = None,
                 attempts: int = 0, started_at: float | None = None,
                 finished_at: float | None = None, retry_in: float | None = None) -> None:
        self.job = job
        self.kind = kind
        self.value = value
        self.error = error
        self.traceback = None if error is None else format_traceback(error)
        self.reason = reason
        self.attempts = attempts        # body calls this outcome accounts for
        self.started_at = started_at    # this attempt's start (epoch seconds)
        self.finished_at = finished_at
        self.retry_in = retry_in        # RETRY: seconds to wait before the next attempt
        self.journaled = False          # set once the value is in the journal
        self.next_job: Job | None = None  # fused successor the same worker went on to run
        self.digest: str | None = None  # content digest of the value (journaling runs)
        self.warning: str | None = None  # one line for the log (e.g. a bad retry_after)
        # the body ended while it was told to stop (deadline, Ctrl-C, fail_fast): its
        # value is never journaled (replay.record refuses it), see ``verdict``
        self.stopped = False


def format_traceback(error: BaseException) -> str:
    import traceback as tb_module  # only failures pay for it

    try:
        return "".join(tb_module.format_exception(type(error), error, error.__traceback__))
    except Exception:  # a traceback that cannot even be formatted
        return f"{type(error).__name__}: {safe_str(error)}\n"


def _truth(value: Any, what: str) -> bool:
    try:
        return bool(value)
    except Exception as exc:
        raise GateError(f"{what} returned {safe_repr(value)}, which has no truth value "
                        f"({type(exc).__name__}: {safe_str(exc)}); return True or False, "
                        f"e.g. bool(...) or len(...) > 0") from exc


def _gates(job: Job, now: float) -> Outcome | None:
    """Run when/validate; an Outcome if they stop the task, None to go on."""
    td = job.td
    if td.when is not None:
        try:
            go = td.when(**job.gate_kwargs(0))
            ok = _truth(go, "when()")
        except BaseException as exc:
            return Outcome(job, FAILED, error=exc, reason="when() raised",
                           started_at=now, finished_at=time.time())
        if not ok:
            return Outcome(job, SKIPPED, reason=WHEN_SKIP + safe_repr(go),
                           started_at=now, finished_at=time.time())
    if td.validate is not None:
        try:
            td.validate(**job.gate_kwargs(1))
        except BaseException as exc:
            return Outcome(job, FAILED, error=exc, reason="validate() raised",
                           started_at=now, finished_at=time.time())
    return None


def verdict(job: Job, value: Any, error: BaseException | None, started: float) -> Outcome:
    """Turn a body's return value or exception into an outcome (retry or final).

    The one place that decides whether a body stopped because it was told to:
    ``current().cancelled()`` is true when it ends. Such an outcome is marked
    ``stopped`` and is never journaled. A body that heard the stop (its
    ``cancelled()`` returned True) and returned a value gave up early: its
    value is partial, so the task FAILS with ``Cancelled`` (the value kept in
    the result, never retried). A body that never asked finished its work: it
    SUCCEEDS, but is not journaled all the same (flowing cannot tell).
    """
    outcome = _verdict(job, value, error, started)
    if job.told_to_stop():
        outcome.stopped = True
        if outcome.kind is SUCCEEDED or (outcome.kind is RETRY and error is None):
            why = job.stop_reason()
            if job.saw_stop:
                cancelled = Cancelled(
                    f"{job.label()} stopped early because it was told to ({why}) and "
                    f"returned {safe_repr(value)}, which may be partial: it is kept in the "
                    f"result's value but not journaled; run again (or resume()) to compute it")
                outcome = Outcome(job, FAILED, value, error=cancelled,
                                  reason=f"stopped early: {why}", attempts=job.attempt,
                                  started_at=outcome.started_at,
                                  finished_at=outcome.finished_at)
                outcome.stopped = True
            elif outcome.kind is SUCCEEDED:
                outcome.reason = f"finished after it was told to stop ({why}): not journaled"
                outcome.warning = (f"{job.label()} finished after it was told to stop ({why}); "
                                   f"its value is in the results but not journaled")
    return outcome


def _verdict(job: Job, value: Any, error: BaseException | None, started: float) -> Outcome:
    td = job.td
    finished = time.time()
    if error is None:
        if td.retry_until is None:
            return Outcome(job, SUCCEEDED, value, attempts=job.attempt, started_at=started,
                           finished_at=finished)
        try:
            accepted = _truth(td.retry_until(value), "retry_until()")
        except BaseException as exc:
            return Outcome(job, FAILED, value, error=exc, reason="retry_until() raised",
                           attempts=job.attempt, started_at=started, finished_at=finished)
        if accepted:
            return Outcome(job, SUCCEEDED, value, attempts=job.attempt, started_at=started,
                           finished_at=finished)
        delay = td.retry_policy.next_delay(job.attempt, None)
        if delay is not None:
            return Outcome(job, RETRY, value, reason=f"retry_until rejected {safe_repr(value)}",
                           attempts=job.attempt, started_at=started, finished_at=finished,
                           retry_in=delay)
        error = RetryUntilRejected(
            f"{job.label()}: retry_until rejected the value of all {job.attempt} "
            f"attempt(s); last value: {safe_repr(value)}")
        return Outcome(job, FAILED, value, error=error, reason="retry_until never accepted",
                       attempts=job.attempt, started_at=started, finished_at=finished)
    delay = None
    # A body that stopped because it was told to (``raise_if_cancelled``) is not retried.
    stopped = isinstance(error, Cancelled) and job.told_to_stop()
    if not isinstance(error, NoRetry) and not stopped:
        delay = td.retry_policy.next_delay(job.attempt, error)
    kind = FAILED if delay is None else RETRY
    outcome = Outcome(job, kind, error=error, attempts=job.attempt, started_at=started,
                      finished_at=finished, retry_in=delay)
    if delay is not None:
        problem = retry_policy.retry_after_problem(error)
        if problem is not None:
            outcome.warning = f"{job.label()}: {problem}"
    return outcome


def timeout_error(job: Job) -> TimeoutError:
    timeout = job.td.timeout_s or 0.0
    return TimeoutError(f"{job.label()} timed out after {timeout:g}s (attempt {job.attempt})")


def broken_outcome(job: Job, exc: BaseException, started: float | None) -> Outcome:
    """The catch-all: something in the attempt itself raised. Fail the job, naming the task."""
    now = time.time()
    return Outcome(job, FAILED, error=exc, reason="the attempt could not finish",
                   attempts=max(job.attempt, 1) if job.mode != GATE else 0,
                   started_at=started or now, finished_at=now)


# The most items a for_each source may list: past it the task fails (a source that never
# ends would otherwise eat all memory). Each item costs about half a kilobyte and 20 µs of
# scheduling (a million items: ~0.5 GB, ~20 s), so beyond this, batches are the better
# design: a for_each over chunks of items.
MAX_ITEMS = 1_000_000

# Listing takes items in chunks that each last about this long (seconds), so that the
# deadline, Ctrl-C and fail_fast are looked at between chunks even for a C iterator.
_CHUNK_S = 0.01
_MAX_CHUNK = 65_536


def _list_items(job: Job, started: float) -> Outcome:
    """A for_each task's gates passed: list its items (PASSED, value = the list).

    Listing is part of the attempt: it counts against ``timeout_s``, stops when
    the run is told to stop (Ctrl-C, fail_fast), and a source with more than
    ``MAX_ITEMS`` items fails the task. Items are taken in chunks (``islice``)
    whose size adapts so that each lasts about ``_CHUNK_S``: an endless C
    iterator (``itertools.count()``) cannot hold the GIL for long, and a slow
    generator is looked at after each item.
    """

    td = job.td
    name = td.for_each or ""
    source = job.kwargs[name]
    if td.timeout_s is not None:
        job.deadline = started + td.timeout_s

    def failed(error: BaseException, reason: str) -> Outcome:
        return Outcome(job, FAILED, error=error, reason=reason, started_at=started,
                       finished_at=time.time())

    try:
        if isinstance(source, Deferred):
            source = source.load()
        if isinstance(source, (str, bytes, bytearray, dict)):
            raise TypeError("not a list of items")
        plain = type(source) is list or type(source) is tuple
        it = None if plain else iter(source)
    except TypeError:
        error = TypeError(
            f"task '{td.name}': for_each='{name}' needs a list, tuple or other iterable of "
            f"items, but '{name}' returned {type(source).__name__}; return a list from "
            f"'{name}'")
        return failed(error, "for_each source is not a list")
    except BaseException as exc:
        return failed(exc, "listing the for_each items raised")
    try:
        if it is None:
            items = list(source)  # a plain list: its length is known, no iteration
        else:
            items = []
            size = 1
            while True:
                t0 = time.monotonic()
                chunk = list(islice(it, size))
                items.extend(chunk)
                if len(chunk) < size:
                    break
                if time.monotonic() - t0 < _CHUNK_S / 2 and size < _MAX_CHUNK:
                    size *= 2
                if len(items) > MAX_ITEMS:
                    break
                if job.deadline is not None and time.time() >= job.deadline:
                    job.cancelled = True
                    return failed(TimeoutError(
                        f"task '{td.name}': listing the items of for_each='{name}' took "
                        f"longer than timeout_s={td.timeout_s:g} ({len(items)} items so far); "
                        f"return a list from '{name}', or raise timeout_s"),
                        "listing the for_each items timed out")
                if job.told_to_stop():
                    return failed(Cancelled(
                        f"task '{td.name}': told to stop ({job.stop_reason()}) while listing "
                        f"its items ({len(items)} so far)"), "stopped while listing its items")
    except BaseException as exc:
        return failed(exc, "listing the for_each items raised")
    if len(items) > MAX_ITEMS:
        return failed(ValueError(
            f"task '{td.name}': for_each='{name}' gave more than {MAX_ITEMS:,} items (the "
            f"most a for_each task may have; an endless iterator?); return a finite list, "
            f"or split the work into batches (e.g. a for_each over chunks of items)"),
            f"more than {MAX_ITEMS:,} items")
    return Outcome(job, PASSED, items, started_at=started, finished_at=time.time())


def _begin(job: Job) -> tuple[float, Outcome | None]:
    """Stamp the start; run the gates if due. -> (start, verdict or None to go on)."""
    started = time.time()
    if job.first_started is None:
        job.first_started = started
    if job.gates:
        stop = _gates(job, started)
        if stop is not None:
            return started, stop
        if job.mode == GATE:
            return started, _list_items(job, started)
    if job.td.timeout_s is not None:
        job.deadline = time.time() + job.td.timeout_s
    return started, None


def call_here(job: Job, kwargs: dict[str, Any]) -> Any:
    """Run the body on this thread; with ``timeout_s``, on a daemon thread abandoned at
    the deadline.

    A Python thread cannot be killed, so an overrunning body is abandoned: it
    keeps running in the background (``current().cancelled()`` turns True so
    it can stop itself), its result is discarded, and being a daemon it never
    holds the interpreter open at exit. The worker is free again at the deadline.
    ``job.abandoned`` then tells when the body really ends (the scheduler keeps
    the task's Limit slot until then).
    """
    fn = job.td.fn
    pid = os.getpid()
    if job.deadline is None:
        token = context.enter(job)
        try:
            value = fn(**kwargs)
        except BaseException:
            exit_if_forked(pid, 1)
            raise
        finally:
            context.leave(token)
        exit_if_forked(pid, 0)
        return value
    box: list[tuple[Any, BaseException | None]] = []
    finished = threading.Event()  # set by the body thread once box holds its result

    def body() -> None:
        token = context.enter(job)
        try:
            box.append((fn(**kwargs), None))
        except BaseException as exc:
            box.append((None, exc))
        finally:
            exit_if_forked(pid, 0 if box and box[0][1] is None else 1)
            context.leave(token)
            finished.set()
            # read after the set: either this sees the worker's Abandoned or the
            # worker sees ``finished`` (both may: end() is idempotent)
            left = job.abandoned
            if left is not None:
                left.end()

    thread = threading.Thread(target=body, daemon=True,
                              name=f"flowing-body-{job.td.name}-{job.attempt}")
    thread.start()
    if not finished.wait(max(0.0, job.deadline - time.time())):
        job.cancelled = True
        abandoned = job.abandoned = Abandoned()
        if finished.is_set():
            abandoned.end()
        raise timeout_error(job)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def exit_if_forked(pid: int, status: int) -> None:
    """A body that called ``os.fork()`` and whose child returned (or raised) came back
    into flowing's code in a process that is not the one that ran the body (``pid``):
    that child exits at once, rather than run a copy of the run's workers."""
    if os.getpid() != pid:
        os._exit(status)


def begin_attempt(job: Job) -> tuple[float, Outcome | None]:
    """The part of an attempt before its body (start stamp, gates, deadline), in the
    flow's process. -> (start, the attempt's verdict, or None: call the body now).
    Never raises."""
    try:
        return _begin(job)
    except BaseException as exc:
        return time.time(), broken_outcome(job, exc, None)


def finish_attempt(job: Job, started: float, value: Any,
                   error: BaseException | None) -> Outcome:
    """The part after the body: the verdict from its value or error (``retry_until``,
    retries), wherever and whenever the body ran. Never raises."""
    try:
        return verdict(job, value, error, started)
    except BaseException as exc:
        return broken_outcome(job, exc, started)


def run_attempt(job: Job) -> Outcome:
    """Run one job with a sync body (on a worker thread). Never raises."""
    started, early = begin_attempt(job)
    if early is not None:
        return early
    try:
        value = call_here(job, job.body_kwargs())
    except BaseException as exc:
        return finish_attempt(job, started, None, exc)
    return finish_attempt(job, started, value, None)


async def run_attempt_async(job: Job) -> Outcome:
    """Run one job with a coroutine body on the run's event loop. Never raises,
    except ``CancelledError`` when the run itself is being torn down.

    ``timeout_s`` cancels the coroutine for real (its ``finally`` blocks run);
    a coroutine that swallows the cancellation is abandoned at its deadline
    all the same. The gates are plain functions and run on the loop thread;
    keep them quick.
    """
    import asyncio  # lazy: keeps import flowing fast

    started = None
    try:
        started, early = _begin(job)
        if early is not None:
            return early
        token = context.enter(job)  # the body's task copies this context
        try:
            body = asyncio.ensure_future(_contained(job.td.fn(**job.body_kwargs())))
        except BaseException as exc:
            return verdict(job, None, exc, started)
        finally:
            context.leave(token)
        timeout = None if job.deadline is None else max(0.0, job.deadline - time.time())
        try:
            done, _ = await asyncio.wait({body}, timeout=timeout)
        except asyncio.CancelledError:
            body.cancel()  # the run is being torn down: take the body with us
            raise
        if not done:
            job.cancelled = True
            body.cancel()  # if it swallows this, it is abandoned on the loop all the same
            body.add_done_callback(_consume)
            return verdict(job, None, timeout_error(job), started)
        if body.cancelled():
            return verdict(job, None, asyncio.CancelledError("the body was cancelled"), started)
        error = body.exception()
        if isinstance(error, _Escaped):
            error = error.original
        if error is not None:
            return verdict(job, None, error, started)
        return verdict(job, body.result(), None, started)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return broken_outcome(job, exc, started)


class _Escaped(Exception):
    """Carries a SystemExit/KeyboardInterrupt out of a body's asyncio task: raised
    as they are, asyncio would re-raise them out of the event loop and kill it."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original


async def _contained(awaitable: Any) -> Any:
    pid = os.getpid()
    try:
        value = await awaitable
    except (KeyboardInterrupt, SystemExit) as exc:
        exit_if_forked(pid, 1)
        raise _Escaped(exc) from exc
    except BaseException:
        exit_if_forked(pid, 1)
        raise
    exit_if_forked(pid, 0)
    return value


def _consume(task: Any) -> None:
    """Retrieve an abandoned body's result so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
