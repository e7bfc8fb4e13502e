"""flowing: run a DAG of Python steps in one process — parallel, retried, resumable."""

from .context import RunContext, current
from .errors import (
    Cancelled,
    CannotRun,
    CannotShip,
    CycleError,
    ItemsFailed,
    JournalError,
    PoolBroken,
    RetryUntilRejected,
    WorkerLost,
)
from .flow import Flow
from .limits import Limit
from .results import Failed, ItemResult, StepResult, StepState
from .tasks import TaskDef, clear_registry, task
from .version import __version__ as __version__


def __getattr__(name: str) -> object:
    # The journal's step keys are only needed by runs that journal: import on demand.
    if name in ("compute_step_key", "STEP_KEY_VERSION", "item_step_key"):
        from .keys import stepkey  # lazy: only runs that journal pay for it
        return getattr(stepkey, name)
    raise AttributeError(f"module 'flowing' has no attribute {name!r}")


__all__ = ["task", "TaskDef", "Flow", "StepState", "StepResult", "ItemResult", "Limit",
           "current", "Cancelled", "RunContext",
           "clear_registry", "compute_step_key", "STEP_KEY_VERSION", "RetryUntilRejected",
           "ItemsFailed", "JournalError", "CycleError", "CannotShip", "WorkerLost", "PoolBroken",
           "CannotRun", "Failed"]
