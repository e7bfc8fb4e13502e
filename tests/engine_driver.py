"""Drive a ``Flow`` through its scheduler deterministically: the in-process runner
settles each attempt where the scheduler hands it over, on the scheduler's own
thread, and time is a ``ManualClock`` that moves only when the scheduler waits
(backoffs, rates, deadlines) or a body advances it. The order of starts is
then exactly the scheduler's decision: tests of ordering need no sleeps."""

from __future__ import annotations

from flowing import Flow
from flowing.engine.scheduler import Scheduler
from flowing.interrupts import Catcher
from flowing.runners.inline import InlineRunner, ManualClock


def run_inline(flow: Flow, clock: ManualClock | None = None) -> Scheduler:
    """Run ``flow`` (as ``flow.run()`` would, results, ``ok`` and events included)
    with the in-process runner; returns the scheduler, for its state."""
    clock = clock or ManualClock()
    scheduler = Scheduler(flow.graph, lambda shared: InlineRunner(shared, clock),
                          max_workers=flow.max_workers, fail_fast=flow.fail_fast,
                          schedule=flow.schedule, reporter=flow._reporter, inputs=flow.inputs,
                          clock=clock)
    with Catcher() as catcher:
        flow._run_scheduler(scheduler, catcher, {}, {})
    return scheduler
