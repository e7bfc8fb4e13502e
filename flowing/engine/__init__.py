"""The engine: the scheduler loop that decides what starts when.

It owns the run's state (which steps are ready, running, done), admission
(capacity, ``Limit`` parking, timers), ``for_each`` fan-out and fail_fast. It
takes a runner (``flowing.runners``) and a replay policy (``flowing.replay``)
as arguments and never runs a body itself.
"""
