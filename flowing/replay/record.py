"""Journaling a finished attempt: whether a success may be written, and the write.

``record_outcome`` is called by the runners (``runners.base.Shared.record``) on
whichever thread sees a success first: a worker, a finisher thread, or the
scheduler's. Replay sits below the runners, so it reads their job and outcome,
and the run's state, through Protocols of the fields it needs (``Job``,
``Outcome``, ``Run`` below), never importing them.

Policy, in the order it is checked:

* an outcome whose body was told to stop (``Outcome.stopped``, decided in
  ``attempt.verdict``) is never written, nor anything once the run is
  ``closed`` (it returned or raised): a worker finishing late never writes;
* nothing without a journal or a step key, and each outcome at most once
  (``journaled``);
* a value kept on a Dask worker is journaled from what that worker made of
  it (``Deferred.journal_form``: its pickle, written to the store as it
  came, and its digest), never fetched to be pickled here again;
* a task's value digest is computed here, on the worker's thread, so that
  dependents can be replayed by value (early cutoff) without the scheduler
  thread hashing anything; an item's only when the journal cannot store its
  value as JSON (``Journal.record(digest_of=)``): no dependent reads it;
* a body that changed a dependency's value in place must not be journaled as
  computed from the original (the checks: ``inplace``): a task's entry is then
  a value-less marker (``store=False``) and the outcome carries the warning;
  an item's side inputs are checked by the journal just before its line is
  written (``RunDigests.item_check``);
* an item's line names only its task's key as its dependency: what a task's
  items share (the dependencies' keys, their digest, the key's parts) is in the
  task's own line, a value-less marker written when its fan-out starts
  (``Replayer.items``), so ``journal forget`` reaches every item through it even
  when the task never completes; the item's ``inputs`` is null (its key covers
  them). It is written without an fsync of its own (group commit: acknowledged
  when the task completes, when the scheduler flushes the journal, so lines may
  share an fsync).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..results import Deferred

if TYPE_CHECKING:  # shapes only: run time needs none of them (nor inplace's digests)
    from ..journal.store import Journal
    from . import inplace
    from .inplace import RunDigests

    class Job(inplace.Job, Protocol):
        """What is read of a runner's job (``flowing.runners.attempt.Job``)."""

        key: str | None   # its step key (a task's, or an item's), None without a journal
        store: bool       # journal the value (False: a marker only)
        item: int | None  # the item's index, for an item's job

    class Outcome(Protocol):
        """What is read and set of an attempt's verdict (``runners.attempt.Outcome``)."""

        @property
        def job(self) -> Job: ...
        @property
        def value(self) -> Any: ...
        @property
        def stopped(self) -> bool: ...

        journaled: bool
        digest: str | None
        warning: str | None

    class Run(Protocol):
        """What is read of the run (``flowing.runners.base.Shared``)."""

        @property
        def closed(self) -> bool: ...
        @property
        def journal(self) -> Journal | None: ...
        @property
        def digest(self) -> RunDigests | None: ...
        @property
        def keys(self) -> list[str] | None: ...
        @property
        def parts(self) -> list[Mapping[str, str] | None]: ...

        def dep_keys(self, i: int) -> list[str]: ...


def record_outcome(run: Run, outcome: Outcome, item: bool) -> None:
    """Journal the success ``outcome`` of ``run`` if the policy above allows it;
    ``item``: it is a ``for_each`` item's (else a whole task's)."""
    if outcome.stopped or run.closed:  # told to stop (attempt.verdict), or run over
        return
    job = outcome.job
    journal = run.journal
    if journal is None or job.key is None or outcome.journaled:
        return
    outcome.journaled = True
    digests = run.digest
    store = job.store
    if item:
        keys = run.keys
        assert keys is not None
        check = digests.item_check(job) if store and digests is not None else None
        # (no dependent reads an item's digest: the journal takes one only to check a
        # value it cannot store as JSON when it is read back)
        journal.record(job.key, f"{job.td.name}[{job.item}]", [keys[job.task]],
                       outcome.value, "item", digest_of=digests, store=store, durable=False,
                       check=check)
        return
    digest = None
    if digests is not None:
        if store:
            digest, changed = digests.digest_and_check(job, outcome.value)
            if changed is not None:
                store = False
                outcome.warning = changed
        else:
            digest = digests(outcome.value)
    outcome.digest = digest
    value = outcome.value
    if store and isinstance(value, Deferred):  # kept where it was made (a Dask worker)
        try:
            value = value.journal_form()  # its pickle made there, or the value fetched here
        except Exception as exc:  # (a lost worker): a marker, and the task runs next time
            store = False
            outcome.warning = (f"{job.label()}: its value could not be journaled "
                               f"({type(exc).__name__}); it runs again next time")
    journal.record(job.key, job.td.name, run.dep_keys(job.task), value, "task",
                   digest=digest, inputs=job.in_digest, store=store, parts=run.parts[job.task])
