"""The engine: the scheduler loop that decides what starts when.

``scheduler`` (the inbox loop and the run's state), ``ready`` (which tasks
may start: schedule modes, detached tasks), ``admission`` (capacity,
``Limit`` parking, timers, overdue jobs, the clock) and ``fanout``
(``for_each`` items). It takes a runner (``flowing.runners``) and a replay
policy (``flowing.replay``) as arguments and never runs a body itself.
"""
