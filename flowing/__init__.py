"""flowing: run a DAG of Python steps in one process — parallel, retried, resumable."""

from .context import Cancelled, RunContext, current
from .engine.scheduler import ItemsFailed
from .flow import Flow
from .graph import CycleError
from .limits import Limit
from .results import Failed, ItemResult, StepResult, StepState
from .retry import RetryUntilRejected
from .runners.local import CannotRun, CannotShip, PoolBroken, WorkerLost
from .tasks import TaskDef, clear_registry, task

__version__ = "0.3.0"


def __getattr__(name: str) -> object:
    # The journal's step keys are only needed by runs that journal: import on demand.
    if name in ("compute_step_key", "STEP_KEY_VERSION", "item_step_key"):
        from .keys import stepkey
        return getattr(stepkey, name)
    if name == "JournalError":
        from .journal.store import JournalError
        return JournalError
    raise AttributeError(f"module 'flowing' has no attribute {name!r}")


__all__ = ["task", "TaskDef", "Flow", "StepState", "StepResult", "ItemResult", "Limit",
           "current", "Cancelled", "RunContext",
           "clear_registry", "compute_step_key", "STEP_KEY_VERSION", "RetryUntilRejected",
           "ItemsFailed", "JournalError", "CycleError", "CannotShip", "WorkerLost", "PoolBroken",
           "CannotRun", "Failed"]
