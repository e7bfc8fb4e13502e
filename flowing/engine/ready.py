"""The ready set: which tasks may start now, and in what order.

Like ``graphlib.TopologicalSorter`` (``prepare`` / ``done``), for one run and
one of two schedule modes; it decides nothing about capacity or replay (the
scheduler and ``admission`` do).

Policy
------
* eager (default): a task is released the moment all of its own dependencies
  have SUCCEEDED; it never waits for unrelated tasks.
* layers: a task is also held until every task of the earlier layers has
  finished, as the original flowing did.
* Detached tasks are held until every main task has finished, then released
  in dependency order among themselves.
* A task whose dependency FAILED or was SKIPPED is handed back by ``done`` as
  blocked (claimed, so a second failed dependency does not block it twice);
  the scheduler skips it, naming that dependency.

State
-----
``status[i]``      PENDING -> (HELD) -> QUEUED -> RUNNING -> DONE (the scheduler
                   sets QUEUED and RUNNING)
``waiting[i]``     dependencies of i that have not succeeded yet
``unfinished``     tasks without a final result
``main_left``      main (not detached) tasks without a final result
``layer_left[l]``  tasks of layer l without a final result
``open_layer``     the last layer whose tasks may start (layers mode)
``held[l]``        released tasks waiting for layer l to open (layers mode)
``held_detached``  released detached tasks waiting for the main graph to end
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..graph import Graph


class Status(enum.IntEnum):
    """Where a task is in its run (stored as bytes in ``ReadySet.status``)."""

    PENDING = 0  # waiting for dependencies
    HELD = 1     # released, held back by the schedule
    QUEUED = 2   # waiting for a slot (or claimed to be skipped or replayed)
    RUNNING = 3  # handed to the runner
    DONE = 4     # has its final result


PENDING, HELD, QUEUED, RUNNING, DONE = (int(s) for s in Status)

_NONE: tuple[int, ...] = ()


class ReadySet:
    """The tasks of one run by readiness; see the module docstring."""

    __slots__ = ("deps", "dependents", "detached", "layer", "layered", "status", "waiting",
                 "unfinished", "main_left", "layer_left", "open_layer", "held", "held_detached")

    def __init__(self, graph: Graph, layered: bool) -> None:
        n = len(graph)
        self.deps, self.dependents = graph.deps, graph.dependents
        self.detached, self.layer = graph.detached, graph.layer
        self.layered = layered
        self.status = bytearray(n)
        self.waiting = array("i", bytes(4 * n))  # set for pending tasks in prepare()
        self.unfinished = 0
        self.main_left = 0
        self.layer_left = [0] * len(graph.layers)
        self.open_layer = 0
        self.held: dict[int, list[int]] = {}
        self.held_detached: list[int] = []

    def prepare(self, finished: Iterable[int]) -> list[int]:
        """Mark ``finished`` DONE and count the rest. Returns the unfinished tasks."""
        status = self.status
        for i in finished:
            status[i] = DONE
        pending = [i for i in range(len(status)) if status[i] != DONE]
        self.unfinished = len(pending)
        waiting, deps, detached, layer_left, layer = (self.waiting, self.deps, self.detached,
                                                      self.layer_left, self.layer)
        for i in pending:
            left = 0
            for d in deps[i]:
                if status[d] != DONE:
                    left += 1
            waiting[i] = left
            if not detached[i]:
                self.main_left += 1
            layer_left[layer[i]] += 1
        return pending

    def first(self, pending: list[int]) -> Iterator[int]:
        """The tasks of ``pending`` that may start at once, looked at one by one (the
        caller may finish each, e.g. by replay, before the next is looked at)."""
        self._advance_layers()
        waiting = self.waiting
        for i in pending:
            if waiting[i] == 0 and self.release(i):
                yield i

    def release(self, i: int) -> bool:
        """All dependencies of i succeeded: True if it may start now, False if it is
        held by the schedule (or was released already)."""
        if self.status[i] != PENDING:
            return False
        if self.layered:
            if self.layer[i] > self.open_layer:
                self.status[i] = HELD
                self.held.setdefault(self.layer[i], []).append(i)
                return False
        elif self.detached[i] and self.main_left:
            self.status[i] = HELD
            self.held_detached.append(i)
            return False
        return True

    def done(self, i: int, succeeded: bool) -> tuple[list[int], tuple[int, ...] | list[int]]:
        """Task i has its final result. Returns (released: may start now, in order;
        blocked: dependents to skip because i did not succeed)."""
        status = self.status
        status[i] = DONE
        self.unfinished -= 1
        if not self.detached[i]:
            self.main_left -= 1
        self.layer_left[self.layer[i]] -= 1
        released: list[int] = []
        blocked: tuple[int, ...] | list[int] = _NONE
        if succeeded:
            waiting = self.waiting
            for j in self.dependents[i]:
                waiting[j] -= 1
                if not waiting[j] and self.release(j):
                    released.append(j)
        else:
            blocked = []
            for j in self.dependents[i]:
                if status[j] == PENDING:
                    status[j] = QUEUED  # claimed: a second failed dependency must not skip it twice
                    blocked.append(j)
        if self.layered:
            released += self._advance_layers()
        elif not self.main_left and self.held_detached:
            released += self.held_detached
            self.held_detached = []
        return released, blocked

    def _advance_layers(self) -> list[int]:
        layers = len(self.layer_left)
        opened = False
        while self.open_layer < layers - 1 and not self.layer_left[self.open_layer]:
            self.open_layer += 1
            opened = True
        if opened and self.layered:
            return self.held.pop(self.open_layer, [])
        return []

    def unfinished_tasks(self) -> list[int]:
        return [i for i in range(len(self.status)) if self.status[i] != DONE]
