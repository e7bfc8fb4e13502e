"""What a run tells the outside world: typed events, and the log lines made from them.

The scheduler thread creates every event and hands it to ``Reporter.emit``,
so hooks see events in order and from one thread. A hook that raises is
logged once per run and then ignored; it never breaks the run or loses a
result.

Log lines go through the ``logging`` logger ``"flowing"`` (or the logger
given as ``Flow(log=...)``), one per event, each starting with a fixed-width
verb so they grep well::

    flowing: flow start: 6 tasks in 3 layers (max_workers=5, schedule=eager)
    flowing: start   fetch attempt=1
    flowing: retry   fetch attempt=1/3 failed after 120ms, next in 0.8s: ConnectionError: reset
    flowing: ok      fetch 1.1s attempts=2
    flowing: FAILED  parse 3ms attempts=1: ValueError: bad row 7
    flowing: skipped report: dependency 'parse' failed
    flowing: cached  load key=3f9a1c2b (journal)
    flowing: flow FAILED: 6 tasks: 3 succeeded, 1 failed, 2 skipped; 1 retry; in 1.4s

No line is longer than ``MAX_LINE`` characters: long task names, reasons and
error messages are cut (errors show their type and the first line of their
message). Progress while a run is going on (a live status line on a
terminal, periodic heartbeat lines otherwise) is in ``progress.py``.
"""

from __future__ import annotations

import sys

from .records import Record

LOGGER_NAME = "flowing"

# Longest log line, prefix included; names, reasons and errors are cut to fit.
MAX_LINE = 200
_PREFIX = "flowing: "
NAME_WIDTH = 60     # longest task name shown in a line
REASON_WIDTH = 100  # longest skip reason / error shown in a line


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
    # attempt: the attempt that failed; delay_s: wait before the next one;
    # duration_ms: how long the failed attempt ran (None when not known)
    __slots__ = ("at", "task", "attempt", "max_attempts", "delay_s", "error", "reason", "item",
                 "duration_ms")
    _defaults = dict(error=None, reason=None, item=None, duration_ms=None)


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


# ----- small text helpers -----------------------------------------------------

def clip(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters (ending in ``...`` when cut)."""
    if not isinstance(text, str):
        text = str(text)
    if any(c < " " or c == "\x7f" for c in text):
        text = "".join(" " if c < " " or c == "\x7f" else c for c in text)
    if len(text) <= width:
        return text
    return text[:max(0, width - 3)] + "..."


def error_line(error: BaseException | None, width: int = 120) -> str:
    """``Type: first line of message``, cut to ``width`` characters. Never raises."""
    if error is None:
        return ""
    try:
        message = str(error).strip().splitlines()
    except Exception:  # an exception whose __str__ fails still gets a line
        message = ["<unprintable message>"]
    text = type(error).__name__ + (f": {message[0]}" if message else "")
    return clip(text, width)


def format_duration(ms: float) -> str:
    if ms is None:
        return "?"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms / 1000, 60)
    if minutes < 60:
        return f"{int(minutes)}m{int(seconds):02d}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes:02d}m"


# ----- loggers ----------------------------------------------------------------

def _stderr_handler():
    import logging

    from . import progress

    class StderrHandler(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is *now* (like logging's last resort),
        and wipes the live progress line first so the two never share a line."""

        def __init__(self):
            logging.Handler.__init__(self)

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, value):  # StreamHandler.setStream; the stream is always stderr
            pass

        def emit(self, record):
            progress.clear_live()
            super().emit(record)

    return StderrHandler()


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
        handler = _stderr_handler()
        handler.setFormatter(logging.Formatter(_PREFIX + "%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return logger


# ----- the reporter -----------------------------------------------------------

class Reporter:
    """Turns events into log lines and progress, and hands events to the user's hook."""

    def __init__(self, logger, on_event=None):
        if on_event is not None and not callable(on_event):
            raise TypeError(f"Flow(on_event=...) must be callable, got {on_event!r}")
        self.logger = logger
        self.on_event = on_event
        self._hook_failed = False
        # The scheduler skips building events entirely when nobody listens.
        self.active = logger is not None or on_event is not None
        self._progress = None
        self._total = 0
        self._cached = 0
        self._retries = 0
        self._attempt_start: dict = {}  # task name -> start of its current attempt

    def emit(self, event: Event) -> None:
        self._track(event)
        if self.logger is not None:
            try:
                self._log(event)
            except Exception as exc:  # formatting must never break the run
                self.logger.warning("could not log %s: %s", type(event).__name__,
                                    error_line(exc))
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:
                if not self._hook_failed:
                    self._hook_failed = True
                    import logging

                    (self.logger or logging.getLogger(LOGGER_NAME)).warning(
                        "on_event hook raised %s; further hook errors in this run are ignored",
                        error_line(exc, REASON_WIDTH))

    def _track(self, event: Event) -> None:
        """What the log lines need beyond one event: run totals, attempt starts."""
        if isinstance(event, FlowStarted):
            self._hook_failed = False  # a broken hook is reported once per run
            self._total = event.tasks
            self._cached = self._retries = 0
            self._attempt_start.clear()
            if self._progress is not None:
                self._progress.close()
            self._progress = None
            if self.logger is not None:
                from .progress import Progress
                self._progress = Progress(self.logger, event.at)
        elif isinstance(event, TaskStarted):
            self._attempt_start[event.task] = event.at
        elif isinstance(event, TaskRetrying):
            self._retries += 1
            if event.duration_ms is None and event.item is None:
                start = self._attempt_start.get(event.task)
                if start is not None:  # close enough: the scheduler saw both ends
                    event.duration_ms = max(0.0, (event.at - start) * 1000)
        elif isinstance(event, TaskCached):
            self._cached += 1

    def _log(self, event: Event) -> None:
        progress = self._progress
        line = log_line(event)
        if isinstance(event, FlowFinished):
            line = _totals_line(event, self._total, self._cached, self._retries)
            if progress is not None:
                progress.close()
                self._progress = None
        if not line:
            return
        if progress is not None:
            progress.clear()
        if isinstance(event, TaskFailed):
            self.logger.warning(line)
        else:
            self.logger.info(line)

    def tick(self, done: int, total: int, running: dict) -> None:
        """Progress, called by the scheduler thread about once a second during a run.

        ``running`` maps the name of each running task to its start (epoch s).
        """
        if self._progress is not None:
            try:
                self._progress.tick(done, total, running)
            except Exception:  # progress is a nicety: never let it break a run
                pass

    def warning(self, message: str) -> None:
        if self.logger is not None:
            if self._progress is not None:
                self._progress.clear()
            self.logger.warning(clip(message, MAX_LINE - len(_PREFIX)))


def _cap(line: str) -> str:
    return clip(line, MAX_LINE - len(_PREFIX))


def _name(event) -> str:
    what = clip(event.task, NAME_WIDTH)
    item = getattr(event, "item", None)
    return what + (f"[{item}]" if item is not None else "")


def _why(error, reason) -> str:
    return error_line(error, REASON_WIDTH) or clip(reason or "", REASON_WIDTH)


def log_line(event: Event) -> str | None:
    """One concise, greppable line per event (without the ``flowing: `` prefix)."""
    tag = " [detached]" if getattr(event, "detached", False) else ""
    if isinstance(event, TaskStarted):
        return _cap(f"start   {_name(event)} attempt={event.attempt}{tag}")
    if isinstance(event, TaskSucceeded):
        return _cap(f"ok      {_name(event)} {format_duration(event.duration_ms)} "
                    f"attempts={event.attempts}{tag}")
    if isinstance(event, TaskFailed):
        why = _why(event.error, event.reason)
        return _cap(f"FAILED  {_name(event)} {format_duration(event.duration_ms)} "
                    f"attempts={event.attempts}{tag}" + (f": {why}" if why else ""))
    if isinstance(event, TaskRetrying):
        ran = ("" if event.duration_ms is None
               else f" after {format_duration(event.duration_ms)}")
        why = _why(event.error, event.reason)
        return _cap(f"retry   {_name(event)} attempt={event.attempt}/{event.max_attempts} "
                    f"failed{ran}, next in {event.delay_s:.1f}s" + (f": {why}" if why else ""))
    if isinstance(event, TaskSkipped):
        return _cap(f"skipped {_name(event)}{tag}: {clip(event.reason or '', REASON_WIDTH)}")
    if isinstance(event, TaskCached):
        key = f" key={event.step_key[:8]}" if isinstance(event.step_key, str) else ""
        return _cap(f"cached  {_name(event)}{key} ({clip(event.reason or '', 40)})")
    if isinstance(event, FlowStarted):
        return _cap(f"flow start: {event.tasks} tasks in {event.layers} layers "
                    f"(max_workers={event.max_workers}, schedule={event.schedule})")
    if isinstance(event, FlowFinished):
        return _totals_line(event)
    return None


def _totals_line(event: FlowFinished, total: int = 0, cached: int = 0,
                 retries: int = 0) -> str:
    counts = dict(event.counts or {})
    finished = sum(counts.values())
    total = max(total, finished)
    if total > finished:
        counts["not run"] = total - finished
    parts = [f"{n} {state}" for state, n in counts.items() if n]
    status = "INTERRUPTED" if event.interrupted else ("ok" if event.ok else "FAILED")
    text = f"flow {status}: {total} tasks: {', '.join(parts) or 'nothing to do'}"
    extras = []
    if retries:
        extras.append(f"{retries} retr{'y' if retries == 1 else 'ies'}")
    if cached:
        extras.append(f"{cached} cached")
    if extras:
        text += "; " + ", ".join(extras)
    return _cap(text + f"; in {format_duration(event.duration_ms)}")
