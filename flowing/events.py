"""What a run tells the outside world: typed events, and the log lines made from them.

The scheduler thread creates every event and hands it to ``Reporter.emit``,
so hooks see events in order and from one thread. A hook that raises is
logged once and then ignored; it never breaks the run or loses a result.
"""

from __future__ import annotations

import sys

from .records import Record

LOGGER_NAME = "flowing"


class Event(Record):
    """Base of all events. ``at`` is epoch seconds; events are read-only by convention."""

    __slots__ = ("at",)


class FlowStarted(Event):
    __slots__ = ("at", "tasks", "layers", "max_workers", "schedule")


class FlowFinished(Event):
    # counts: state name -> number of tasks
    __slots__ = ("at", "ok", "duration_ms", "counts", "interrupted")
    _defaults = dict(counts=None, interrupted=False)


class TaskStarted(Event):
    __slots__ = ("at", "task", "attempt", "detached")
    _defaults = dict(detached=False)


class TaskRetrying(Event):
    # attempt: the attempt that failed; delay_s: wait before the next one
    __slots__ = ("at", "task", "attempt", "max_attempts", "delay_s", "error", "reason", "item")
    _defaults = dict(error=None, reason=None, item=None)


class TaskSucceeded(Event):
    __slots__ = ("at", "task", "attempts", "duration_ms", "detached")
    _defaults = dict(detached=False)


class TaskFailed(Event):
    __slots__ = ("at", "task", "attempts", "duration_ms", "error", "reason", "detached")
    _defaults = dict(error=None, reason=None, detached=False)


class TaskSkipped(Event):
    __slots__ = ("at", "task", "reason", "detached")
    _defaults = dict(detached=False)


class TaskCached(Event):
    __slots__ = ("at", "task", "step_key", "reason")
    _defaults = dict(step_key=None, reason="journal")


def error_line(error: BaseException | None, width: int = 120) -> str:
    """``Type: first line of message``, cut to ``width`` characters."""
    if error is None:
        return ""
    message = str(error).strip().splitlines()
    text = type(error).__name__ + (f": {message[0]}" if message else "")
    return text if len(text) <= width else text[:width - 3] + "..."


def format_duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms / 1000, 60)
    return f"{int(minutes)}m{seconds:02.0f}s"


def resolve_logger(log):
    """``True`` -> the "flowing" logger, given a stderr handler once; ``False`` -> None."""
    import logging  # on first Flow, not at import: keeps ``import flowing`` light

    if log is False or log is None:
        return None
    if isinstance(log, logging.Logger):
        return log
    if log is not True:
        raise TypeError(f"Flow(log=...) takes True, False or a logging.Logger, got {log!r}")
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        # A library normally leaves handlers to the application, but a one-shot
        # script should see its flow's progress without configuring logging.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("flowing: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return logger


class Reporter:
    """Turns events into log lines and hands them to the user's hook."""

    def __init__(self, logger, on_event=None):
        if on_event is not None and not callable(on_event):
            raise TypeError(f"Flow(on_event=...) must be callable, got {on_event!r}")
        self.logger = logger
        self.on_event = on_event
        self._hook_failed = False
        # The scheduler skips building events entirely when nobody listens.
        self.active = logger is not None or on_event is not None

    def emit(self, event: Event) -> None:
        if self.logger is not None:
            line = log_line(event)
            if line:
                if isinstance(event, TaskFailed):
                    self.logger.warning(line)
                else:
                    self.logger.info(line)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:
                if not self._hook_failed:
                    self._hook_failed = True
                    import logging

                    (self.logger or logging.getLogger(LOGGER_NAME)).warning(
                        "on_event hook raised %s; further hook errors are ignored",
                        error_line(exc))

    def tick(self, done: int, total: int, running: dict) -> None:
        """Progress, called by the scheduler thread about once a second during a run.

        ``running`` maps the name of each running task to its start (epoch s).
        """

    def warning(self, message: str) -> None:
        if self.logger is not None:
            self.logger.warning(message)


def log_line(event: Event) -> str | None:
    """One concise, greppable line per event."""
    if isinstance(event, TaskStarted):
        tag = " [detached]" if event.detached else ""
        return f"start   {event.task}{tag}" + (
            f" attempt {event.attempt}" if event.attempt > 1 else "")
    if isinstance(event, TaskSucceeded):
        extra = f" after {event.attempts} attempts" if event.attempts > 1 else ""
        return f"ok      {event.task} {format_duration(event.duration_ms)}{extra}"
    if isinstance(event, TaskFailed):
        why = error_line(event.error) or event.reason or ""
        return (f"FAILED  {event.task} {format_duration(event.duration_ms)} "
                f"attempts={event.attempts}: {why}"
                + (" [detached]" if event.detached else ""))
    if isinstance(event, TaskRetrying):
        what = event.task + (f"[{event.item}]" if event.item is not None else "")
        why = error_line(event.error) or event.reason or ""
        return (f"retry   {what} attempt {event.attempt}/{event.max_attempts} failed, "
                f"next in {event.delay_s:.1f}s: {why}")
    if isinstance(event, TaskSkipped):
        return f"skipped {event.task}: {event.reason}"
    if isinstance(event, TaskCached):
        return f"cached  {event.task} ({event.reason})"
    if isinstance(event, FlowStarted):
        return (f"flow start: {event.tasks} tasks in {event.layers} layers "
                f"(max_workers={event.max_workers}, schedule={event.schedule})")
    if isinstance(event, FlowFinished):
        counts = ", ".join(f"{n} {state}" for state, n in event.counts.items() if n)
        status = "INTERRUPTED" if event.interrupted else ("ok" if event.ok else "FAILED")
        return f"flow {status}: {counts or 'nothing to do'} in {format_duration(event.duration_ms)}"
    return None
