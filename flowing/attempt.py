"""One attempt of one task: gates, body, ``retry_until``, and the verdict.

A ``Job`` is what a worker is handed; an ``Outcome`` is what it hands back.
``run_attempt`` (sync bodies, on a worker thread) and ``run_attempt_async``
(coroutine bodies, on the run's event loop) never raise: every exception a
user function throws becomes part of the outcome. Whether a failed attempt
is retried, and after how long, is decided here from the task's policy
(``retry.next_delay``); the scheduler only waits and resubmits.

Order within a job, as the spec fixes it: ``when`` (falsy: skipped; raises:
failed, 0 attempts) -> ``validate`` (raises: failed, 0 attempts, no retry)
-> body -> ``retry_until`` (falsy: retry; raises: failed, value kept). The
gates run once per task, in the job of its first attempt (for ``for_each``
tasks, in a job of their own before the fan-out).
"""

from __future__ import annotations

import threading
import time

from . import retry as retry_policy
from .retry import RetryUntilRejected

# Job modes
TASK = 0  # one attempt of a whole task
GATE = 1  # only the when/validate gates of a for_each task, before fan-out
ITEM = 2  # one attempt of one for_each item

# Outcome kinds
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
RETRY = "retry"    # failed attempt that will be retried after ``retry_in`` seconds
PASSED = "passed"  # GATE job: the gates let the task through
STARTED = "started"  # not a verdict: a queued job announcing that its body starts now


class Job:
    """One attempt of one task (or item), as handed to a worker."""

    __slots__ = ("task", "td", "kwargs", "attempt", "mode", "item", "gates", "key",
                 "first_started", "announce")

    def __init__(self, task, td, kwargs, attempt=1, mode=TASK, item=None, gates=True,
                 key=None, first_started=None):
        self.task = task              # index of the task in the graph
        self.td = td                  # its TaskDef
        self.kwargs = kwargs          # keyword arguments for the body (and gates)
        self.attempt = attempt        # 1-based attempt number
        self.mode = mode              # TASK, GATE or ITEM
        self.item = item              # item index for ITEM jobs
        self.gates = gates            # run when/validate first
        self.key = key                # journal key of this task or item, if journaling
        self.first_started = first_started  # epoch start of attempt 1, kept across retries
        self.announce = False         # post a STARTED notice when the body starts

    def retry_job(self) -> Job:
        return Job(self.task, self.td, self.kwargs, self.attempt + 1, self.mode, self.item,
                   False, self.key, self.first_started)


class Outcome:
    """The verdict of one job."""

    __slots__ = ("job", "kind", "value", "error", "traceback", "reason", "attempts",
                 "started_at", "finished_at", "retry_in", "journaled", "next_job")

    def __init__(self, job, kind, value=None, error=None, reason=None, attempts=0,
                 started_at=None, finished_at=None, retry_in=None):
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
        self.next_job = None            # fused successor the same worker went on to run


def format_traceback(error: BaseException) -> str:
    import traceback as tb_module  # only failures pay for it

    return "".join(tb_module.format_exception(type(error), error, error.__traceback__))


def _preview(value, width=60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _gates(job: Job, now: float) -> Outcome | None:
    """Run when/validate; an Outcome if they stop the task, None to go on."""
    td = job.td
    if td.when is not None:
        try:
            go = td.when(**job.kwargs)
        except BaseException as exc:
            return Outcome(job, FAILED, error=exc, reason="when() raised",
                           started_at=now, finished_at=time.time())
        if not go:
            return Outcome(job, SKIPPED, reason=f"when() returned {_preview(go)}",
                           started_at=now, finished_at=time.time())
    if td.validate is not None:
        try:
            td.validate(**job.kwargs)
        except BaseException as exc:
            return Outcome(job, FAILED, error=exc, reason="validate() raised",
                           started_at=now, finished_at=time.time())
    return None


def _verdict(job: Job, value, error, started: float) -> Outcome:
    """Turn a body's return value or exception into an outcome (retry or final)."""
    td = job.td
    finished = time.time()
    if error is None:
        if td.retry_until is None:
            return Outcome(job, SUCCEEDED, value, attempts=job.attempt, started_at=started,
                           finished_at=finished)
        try:
            accepted = td.retry_until(value)
        except BaseException as exc:
            return Outcome(job, FAILED, value, error=exc, reason="retry_until() raised",
                           attempts=job.attempt, started_at=started, finished_at=finished)
        if accepted:
            return Outcome(job, SUCCEEDED, value, attempts=job.attempt, started_at=started,
                           finished_at=finished)
        delay = retry_policy.next_delay(td, job.attempt, None)
        if delay is not None:
            return Outcome(job, RETRY, value, reason=f"retry_until rejected {_preview(value)}",
                           attempts=job.attempt, started_at=started, finished_at=finished,
                           retry_in=delay)
        error = RetryUntilRejected(
            f"task '{td.name}': retry_until rejected the value of all {job.attempt} "
            f"attempt(s); last value: {_preview(value)}")
        return Outcome(job, FAILED, value, error=error, reason="retry_until never accepted",
                       attempts=job.attempt, started_at=started, finished_at=finished)
    delay = retry_policy.next_delay(td, job.attempt, error)
    kind = FAILED if delay is None else RETRY
    return Outcome(job, kind, error=error, attempts=job.attempt, started_at=started,
                   finished_at=finished, retry_in=delay)


def _timeout_error(job: Job) -> TimeoutError:
    what = f"task '{job.td.name}'" + (f" item {job.item}" if job.mode == ITEM else "")
    return TimeoutError(f"{what} timed out after {job.td.timeout_s:g}s (attempt {job.attempt})")


def _begin(job: Job):
    """Stamp the start; run the gates if due. -> (start, verdict or None to go on)."""
    started = time.time()
    if job.first_started is None:
        job.first_started = started
    if job.gates:
        stop = _gates(job, started)
        if stop is not None or job.mode == GATE:
            return started, stop or Outcome(job, PASSED, started_at=started,
                                            finished_at=time.time())
    return started, None


def run_attempt(job: Job) -> Outcome:
    """Run one job with a sync body on the calling (worker) thread."""
    started, verdict = _begin(job)
    if verdict is not None:
        return verdict
    td = job.td
    if td.timeout_s is None:
        try:
            value = td.fn(**job.kwargs)
        except BaseException as exc:
            return _verdict(job, None, exc, started)
        return _verdict(job, value, None, started)
    return _run_with_deadline(job, started)


def _run_with_deadline(job: Job, started: float) -> Outcome:
    """Run the body on a daemon thread and stop waiting for it at the deadline.

    A Python thread cannot be killed, so an overrunning body is abandoned: it
    keeps running in the background, its result is discarded, and being a
    daemon it never holds the interpreter open at exit. The worker slot is
    free again as soon as the deadline passes.
    """
    box: list = []
    finished = threading.Event()  # set by the body thread once box holds its result

    def body():
        try:
            box.append((job.td.fn(**job.kwargs), None))
        except BaseException as exc:
            box.append((None, exc))
        finally:
            finished.set()

    thread = threading.Thread(target=body, daemon=True,
                              name=f"flowing-body-{job.td.name}-{job.attempt}")
    thread.start()
    if not finished.wait(job.td.timeout_s):
        return _verdict(job, None, _timeout_error(job), started)
    value, error = box[0]
    return _verdict(job, value, error, started)


async def run_attempt_async(job: Job) -> Outcome:
    """Run one job with a coroutine body on the run's event loop.

    ``timeout_s`` cancels the coroutine for real (its ``finally`` blocks run).
    The gates are plain functions and run on the loop thread; keep them quick.
    """
    started, verdict = _begin(job)
    if verdict is not None:
        return verdict
    import asyncio

    td = job.td
    try:
        if td.timeout_s is None:
            value = await td.fn(**job.kwargs)
        else:
            value = await asyncio.wait_for(td.fn(**job.kwargs), td.timeout_s)
    except asyncio.TimeoutError:
        # asyncio.TimeoutError is not the builtin TimeoutError before 3.11
        return _verdict(job, None, _timeout_error(job), started)
    except asyncio.CancelledError:
        raise  # the run is being torn down (Ctrl-C): let the loop finish the task
    except BaseException as exc:
        return _verdict(job, None, exc, started)
    return _verdict(job, value, None, started)
