"""Every exception flowing raises for a user to catch, in one hierarchy.

Policy
------
Each message names the task (or the path) and says how to fix it. A step's
error is kept in its ``StepResult.error``; ``run()`` never raises these for a
failed step (it returns), so most are met as values, not as raises.

::

    Exception
    ├── Cancelled              current().raise_if_cancelled(): the body was told to stop
    ├── RetryUntilRejected     retry_until rejected the last allowed attempt's value
    ├── ItemsFailed            some for_each items failed (.failures)
    ├── GateError              a gate or retry_until returned a value with no truth value
    ├── JournalError           the journal cannot be used (names the path and the fix)
    │   └── ValueUnavailable   a value stored beside the journal could not be loaded
    ├── NoRetry                no retry can mend it (never retried)
    │   ├── CannotShip (also TypeError)    a body, argument or value could not be pickled
    │   │                                  or loaded where it runs
    │   ├── CannotRun (also RuntimeError)  the executor refused the job
    │   └── PoolBroken (also WorkerLost)   a process pool is broken for good
    └── WorkerLost (RuntimeError)          the worker running a body died
    ValueError
    └── CycleError             depends_on forms a cycle (.cycle lists the names)

This module imports nothing of flowing at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import ItemResult

__all__ = ["Cancelled", "CannotRun", "CannotShip", "CycleError", "GateError", "ItemsFailed",
           "JournalError", "NoRetry", "PoolBroken", "RetryUntilRejected", "ValueUnavailable",
           "WorkerLost"]


class Cancelled(Exception):
    """Raised by ``current().raise_if_cancelled()`` when the body has been told to stop."""


class RetryUntilRejected(Exception):
    """``retry_until`` rejected the value of the last allowed attempt."""


class ItemsFailed(Exception):
    """Some items of a ``for_each`` task failed after their retries."""

    def __init__(self, message: str, failures: list[ItemResult]) -> None:
        super().__init__(message)
        self.failures = failures  # the failed ItemResults, in input order


class GateError(Exception):
    """A gate or ``retry_until`` returned a value that has no truth value."""


class CycleError(ValueError):
    """The tasks' ``depends_on`` form a cycle; ``cycle`` lists its names, the first
    repeated at the end (``['a', 'b', 'a']``: a depends on b, which depends on a)."""

    def __init__(self, message: str, cycle: list[str]) -> None:
        super().__init__(message)
        self.cycle = cycle


class JournalError(Exception):
    """The journal cannot be used; the message names the path and the fix."""


class ValueUnavailable(JournalError):
    """A replayed value stored beside the journal could not be loaded when it was needed.

    The message names the task and says the next run computes it again (the
    journal no longer replays that entry).
    """


class NoRetry(Exception):
    """An error that no retry can mend (e.g. a body that cannot be pickled)."""


class CannotShip(NoRetry, TypeError):
    """A task's body, an argument or its value could not be pickled to or from the worker."""


class WorkerLost(RuntimeError):
    """The worker running a body was lost (killed, out of memory, ``os._exit``, cancelled
    by the engine). Retried like any error when ``retry_on`` allows it."""


class PoolBroken(NoRetry, WorkerLost):
    """A process pool lost a worker and is broken for good: no retry can run on it."""


class CannotRun(NoRetry, RuntimeError):
    """The executor refused the job (shut down, closed client)."""
