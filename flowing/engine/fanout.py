"""``for_each`` fan-out: one job per item, and the task's result once every item is done.

Policy
------
* The gate job of a ``for_each`` task lists the items on a worker, inside the
  attempt's boundary (a source that iterates forever or raises never reaches
  the scheduler thread); ``start`` then makes one job per item, except items
  that already SUCCEEDED in an earlier, unfinished run of the task (kept by
  resume()) and items the journal replays by content (``Replayer.items``).
* Items run, retry and fail one by one; an item never stops its siblings.
* When every item is done the task gets its result (``complete``): SUCCEEDED
  with the list of values, or FAILED naming the first failed item. With
  ``allow_failed_items``, a task with at most that many failed items
  SUCCEEDS, holding a ``Failed`` at each failed item's position; it is then
  not journaled as a whole (its succeeded items were, one by one), so the
  next run replays them and retries only the failed ones.
* After Ctrl-C, the items that finished are kept (``unfinished_items``), so
  resume() does not run them again.

State
-----
``running[i]``  per running for_each task i, its ``FanOut`` (items as they
                finish, how many remain, first start, jobs in flight)
``partial[i]``  the ItemResults of an earlier, unfinished run of task i
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ItemsFailed
from ..results import Failed, ItemResult, StepResult, StepState
from ..runners import attempt as attempt_
from ..runners.attempt import Job, Outcome
from ..text import item_failure

if TYPE_CHECKING:
    from ..graph import Graph
    from ..interrupts import Catcher
    from ..replay.replayer import Replayer
    from ..runners.base import Shared

SUCCEEDED, FAILED = StepState.SUCCEEDED, StepState.FAILED
STATE_OF = {attempt_.SUCCEEDED: SUCCEEDED, attempt_.FAILED: FAILED,
            attempt_.SKIPPED: StepState.SKIPPED}


class FanOut:
    """Progress of one running for_each task."""

    __slots__ = ("items", "remaining", "started_at", "stopped", "running")

    def __init__(self, n: int) -> None:
        self.items: list[ItemResult | None] = [None] * n  # per item, as they finish
        self.remaining = n
        self.started_at: float | None = None
        self.stopped = False  # an item ended while told to stop: the list is not journaled
        self.running = 0  # item jobs handed to the runner, verdict not yet taken


def item_result(o: Outcome) -> ItemResult:
    """The result of one item from the verdict of its last attempt."""
    job = o.job
    assert job.item is not None
    return ItemResult(job.item, STATE_OF[o.kind], o.value, o.error, o.attempts, False,
                      o.traceback, job.first_started, o.finished_at, job.item_value)


class FanOuts:
    """The running for_each tasks of one run; see the module docstring."""

    def __init__(self, graph: Graph, shared: Shared, replayer: Replayer | None,
                 keys: list[str] | None, queue: Callable[[Job], None],
                 task_inputs: Callable[[int], dict[str, Any] | None]) -> None:
        self.graph = graph
        self.shared = shared
        self.replayer = replayer
        self.keys = keys
        self.queue = queue  # a job waits for a slot (Admission.queue)
        self.task_inputs = task_inputs
        self.running: dict[int, FanOut] = {}
        self.partial: dict[int, list[ItemResult | None]] = {}

    def start(self, i: int, kwargs: dict[str, Any], started: float | None, items: list[Any],
              catcher: Catcher) -> StepResult | None:
        """The gate job of task i passed and listed ``items``: queue one job per item
        to run. Returns the task's result if no item is left to run."""
        td = self.graph.tasks[i]
        source_name = td.for_each
        assert source_name is not None
        fan = self.running[i] = FanOut(len(items))
        fan.started_at = started
        previous = self.partial.get(i)
        if previous is not None and len(previous) != len(items):
            previous = None
        keys = None if self.replayer is None else self.replayer.items(i)
        others = None if keys is None else keys.in_digest
        item_store = keys is not None and keys.store
        task_inputs = self.task_inputs(i)
        for index, item in enumerate(items):
            if not index & 1023 and catcher.seen:
                raise KeyboardInterrupt  # Ctrl-C: a huge fan-out must not delay it
            prior = previous[index] if previous is not None else None
            if prior is not None and prior.state is SUCCEEDED:
                fan.items[index] = prior
                fan.remaining -= 1
                continue
            key = None
            if keys is not None:
                key, replayed = keys.lookup(index, item)
                if replayed is not None:
                    fan.items[index] = replayed
                    fan.remaining -= 1
                    continue
            item_kwargs = dict(kwargs)
            item_kwargs[source_name] = item
            self.queue(Job(i, td, item_kwargs, mode=attempt_.ITEM, item=index, gates=False,
                           key=key, signals=self.shared, inputs=task_inputs, item_value=item,
                           in_digest=others, store=item_store and key is not None))
        return None if fan.remaining else self.complete(i)

    def on_item(self, o: Outcome) -> StepResult | None:
        """The verdict of one item. Returns the task's result once it was the last."""
        job = o.job
        i = job.task
        fan = self.running[i]
        if o.kind is attempt_.SUCCEEDED and self.replayer is not None and not o.journaled:
            self.replayer.record(o)  # (the worker's thread journals it first, as a rule)
        if o.stopped:
            fan.stopped = True
        assert job.item is not None
        fan.items[job.item] = item_result(o)
        if fan.started_at is None or (job.first_started and job.first_started < fan.started_at):
            fan.started_at = job.first_started
        fan.remaining -= 1
        return None if fan.remaining else self.complete(i)

    def keep(self, o: Outcome) -> None:
        """After Ctrl-C: keep an item's verdict that came back (see unfinished_items)."""
        job = o.job
        fan = self.running.get(job.task)
        if fan is not None and job.item is not None and fan.items[job.item] is None:
            fan.items[job.item] = item_result(o)

    def complete(self, i: int) -> StepResult:
        """All items of for_each task i are done: its result (see the module docstring)."""
        if self.replayer is not None:
            self.replayer.flush()  # its items' lines (group commit): acknowledged from here on
        fan = self.running.pop(i)
        td = self.graph.tasks[i]
        items: list[ItemResult] = [r for r in fan.items if r is not None]
        now = time.time()
        ends = [r.finished_at for r in items if r.finished_at]
        finished = max(ends) if ends else now
        started = fan.started_at or finished
        failures = [r for r in items if r.state is not SUCCEEDED]
        allowed = td.allowed_failures(len(items))
        values = [r.value for r in items]
        attempts = max((r.attempts for r in items), default=0)
        key = None if self.keys is None else self.keys[i]
        detached = bool(self.graph.detached[i])
        if failures and allowed is not None and len(failures) <= allowed:
            values = [r.value if r.state is SUCCEEDED else Failed(r.index, r.item, r.error)
                      for r in items]
            return StepResult(td.name, SUCCEEDED, values, None, (finished - started) * 1000,
                              attempts, key, False, None, None, started, finished, items,
                              detached)
        if not failures:
            result = StepResult(td.name, SUCCEEDED, values, None, (finished - started) * 1000,
                                attempts, key, all(r.cached for r in items) and bool(items),
                                None, None, started, finished, items, detached)
            if self.replayer is not None:
                self.replayer.fan_succeeded(i, values, items, fan.stopped)
            return result
        first = failures[0]
        beyond = "" if allowed is None else f", more than allowed ({allowed})"
        error = ItemsFailed(
            f"task '{td.name}': {len(failures)} of {len(items)} items failed{beyond}; "
            f"first: {item_failure(first.index, first.item, first.error)}", failures)
        return StepResult(td.name, FAILED, values, error, (finished - started) * 1000,
                          attempts, key, False, f"{len(failures)} item(s) failed"
                          + ("" if allowed is None else f" (allowed {allowed})"),
                          first.traceback, started, finished, items, detached)

    def progress(self, max_workers: int, now: float) -> dict[str, tuple[int, int, int, float]]:
        """name -> (items done, items, items running, first start), for progress lines.
        Jobs queued ahead at the runner are not running yet: at most max_workers are."""
        tasks = self.graph.tasks
        return {tasks[i].name: (len(fan.items) - fan.remaining, len(fan.items),
                                min(fan.running, max_workers), fan.started_at or now)
                for i, fan in self.running.items()}

    def unfinished_items(self) -> dict[int, list[ItemResult | None]]:
        """index -> ItemResults so far (None: not finished) of for_each tasks cut short."""
        return {i: list(fan.items) for i, fan in self.running.items()}
