"""The log lines, progress and hook calls made from a run's events (``Reporter``).

The scheduler thread hands every event (``events.py``) to ``Reporter.emit``,
so hooks see events in order and from one thread. A hook that raises is
logged once per run and then ignored; it never breaks the run or loses a
result.

Log lines go through the ``logging`` logger ``"flowing"`` (or the logger
given as ``Flow(log=...)``), one per event, each starting with a fixed-width
verb so they grep well::

    flowing: flow start: 6 tasks in 3 layers (max_workers=5, schedule=eager)
    flowing: start   fetch attempt=1
    flowing: start   names attempt=1 (a dependency's value changed)
    flowing: retry   fetch attempt=1/3 failed after 120ms, next in 0.8s: ConnectionError: reset
    flowing: retry   get[16] (17) attempt=1/3 failed after 80ms, next in 1.0s: HTTPError: 500
    flowing: ok      fetch 1.1s attempts=2
    flowing: ok      get 2.3s attempts=1: 40 items: 40 ok (38 cached)
    flowing: FAILED  parse 3ms attempts=1: ValueError: bad row 7
    flowing: skipped report: dependency 'parse' failed
    flowing: cached  load key=3f9a1c2b (journal)
    flowing: flow FAILED: 6 tasks: 3 succeeded, 1 failed, 2 skipped; 1 retry; in 1.4s

No line is longer than ``MAX_LINE`` characters: long task names, reasons and
error messages are cut (errors show their type and the first line of their
message). Progress while a run is going on (a live status line on a
terminal, periodic heartbeat lines otherwise) is in ``progress.py``.

Text made from user values never raises and never spans lines. Every
formatter here (and in ``report``, ``mermaid``, ``timeline`` and ``progress``) goes through
``safe_str`` / ``safe_repr`` / ``error_line``: a ``__str__`` or ``__repr__``
that raises, or returns something that is not a string, gives
``<unprintable TypeName>``; a huge value gives a cut one-liner; control
characters, line separators and lone surrogates are replaced. Truth values
and equality of user objects are never asked for.

A failed ``for_each`` item is always named by its index *and* a short repr
of the item itself (``item 16 (17)``): ``item_label``, ``item_failure`` and
``items_line`` make those texts for every message that mentions items.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..interrupts import is_terminal
from ..text import (
    ITEM_WIDTH,
    LOGGER_NAME,
    MAX_LINE,
    NAME_WIDTH,
    REASON_WIDTH,
    WHY_WIDTH,
    _or_empty,
    clip,
    error_line,
    format_duration,
    items_line,
    printable,
    safe_repr,
    type_name,
)
from . import progress
from .events import (
    Event,
    FlowFinished,
    FlowStarted,
    TaskCached,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from .progress import Progress

if TYPE_CHECKING:
    import logging

_PREFIX = "flowing: "

# ----- loggers ----------------------------------------------------------------------

def _stderr_handler() -> logging.Handler:
    import logging  # lazy: keeps import flowing fast

    class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
        """Writes to whatever ``sys.stderr`` is *now* (like logging's last resort),
        and wipes the live progress line first so the two never share a line."""

        def __init__(self) -> None:
            logging.Handler.__init__(self)

        @property
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, value: Any) -> None:  # StreamHandler.setStream; always stderr
            pass

        def emit(self, record: logging.LogRecord) -> None:
            progress.clear_live()
            super().emit(record)

    return StderrHandler()


def resolve_logger(log: object) -> logging.Logger | None:
    """``True`` -> the "flowing" logger, given a stderr handler once; ``False`` -> None."""
    import logging  # on first Flow, not at import: keeps ``import flowing`` light

    if log is False or log is None:
        return None
    if isinstance(log, logging.Logger):
        return log
    if log is not True:
        raise TypeError(f"Flow(log=...) takes True, False or a logging.Logger, "
                        f"got {safe_repr(log)}")
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


def _contain(exc: BaseException) -> None:
    """Swallow what user code (a hook, a logging handler, a value's ``__str__``) raised
    while reporting, ``SystemExit`` included; re-raise only the terminal's Ctrl-C."""
    if is_terminal(exc):
        raise exc


# ----- the reporter -----------------------------------------------------------------

class Reporter:
    """Turns events into log lines and progress, and hands events to the user's hook.

    Nothing here raises into the run: a log line that cannot be made or
    written, a broken handler, a hook that raises are each swallowed (a
    broken hook is reported once per run).
    """

    def __init__(self, logger: logging.Logger | None,
                 on_event: Callable[[Event], object] | None = None) -> None:
        if on_event is not None and not callable(on_event):
            raise TypeError(f"Flow(on_event=...) must be callable, got {safe_repr(on_event)}")
        self.logger = logger
        self.on_event = on_event
        self._hook_failed = False
        # The scheduler skips building events entirely when nobody listens.
        self.active = logger is not None or on_event is not None
        self._progress: Progress | None = None
        self._total = 0
        self._cached = 0
        self._retries = 0
        self._attempt_start: dict[str, float] = {}  # task name -> start of its current attempt

    def emit(self, event: Event) -> None:
        try:
            self._track(event)
        except BaseException as exc:  # bookkeeping for log lines: never worth breaking a run
            _contain(exc)
        if self.logger is not None:
            try:
                self._log(event)
            except BaseException as exc:  # formatting, a logging handler: never break the run
                _contain(exc)
                self._warn_quietly(f"could not log {type_name(event)}: {error_line(exc)}")
        if self.on_event is not None:
            try:
                self.on_event(event)
            except BaseException as exc:  # SystemExit too: a hook never ends the run
                _contain(exc)
                if not self._hook_failed:
                    self._hook_failed = True
                    self._warn_quietly("on_event hook raised "
                                       f"{error_line(exc, REASON_WIDTH)}; further hook "
                                       "errors in this run are ignored", fallback=True)

    def _warn_quietly(self, message: str, fallback: bool = False) -> None:
        """A warning on our logger (or, with ``fallback``, the "flowing" logger when the
        run logs nothing); a logger that fails too is left alone."""
        try:
            logger = self.logger
            if logger is None and fallback:
                import logging  # lazy: keeps import flowing fast

                logger = logging.getLogger(LOGGER_NAME)
            if logger is not None:
                logger.warning(clip(printable(message, 4 * MAX_LINE), MAX_LINE - len(_PREFIX)))
        except BaseException as exc:
            _contain(exc)

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
        logger = self.logger
        if logger is None:
            return
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
            logger.warning(line)
        else:
            logger.info(line)

    def tick(self, done: int, total: int, running: Mapping[str, float],
             items: Mapping[str, tuple[int, int, int, float]] | None = None) -> None:
        """Progress, called by the scheduler thread about once a second during a run.

        ``running`` maps the name of each running task to its start (epoch s);
        ``items``, the name of each running ``for_each`` task to (items done,
        total, in flight, start of its first item).
        """
        if self._progress is not None:
            try:
                self._progress.tick(done, total, running, items)
            except BaseException as exc:  # progress is a nicety: never let it break a run
                _contain(exc)

    def warning(self, message: object) -> None:
        """A one-line warning on the run's logger (nothing with ``log=False``)."""
        if self.logger is not None:
            try:
                if self._progress is not None:
                    self._progress.clear()
            except BaseException as exc:
                _contain(exc)
            self._warn_quietly(clip(message, MAX_LINE - len(_PREFIX)))


# ----- log lines --------------------------------------------------------------------

def _cap(line: str) -> str:
    return clip(printable(line, 4 * MAX_LINE), MAX_LINE - len(_PREFIX))


def _name(event: Event) -> str:
    task = getattr(event, "task", "?")
    what = clip(printable(task, 4 * NAME_WIDTH) if type(task) is str else task, NAME_WIDTH)
    item = getattr(event, "item", None)
    if item is None:
        return what
    what += f"[{clip(item, 20)}]"
    item_repr = getattr(event, "item_repr", None)
    return what + (f" ({clip(item_repr, ITEM_WIDTH)})" if item_repr is not None else "")


def _why(error: BaseException | None, reason: object) -> str:
    return error_line(error, REASON_WIDTH) or clip(_or_empty(reason), REASON_WIDTH)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def log_line(event: Event) -> str | None:
    """One concise, greppable line per event (without the ``flowing: `` prefix)."""
    tag = " [detached]" if getattr(event, "detached", False) is True else ""
    if isinstance(event, TaskStarted):
        why = f" ({clip(event.why, WHY_WIDTH)})" if event.why is not None else ""
        return _cap(f"start   {_name(event)} attempt={event.attempt}{tag}{why}")
    if isinstance(event, TaskSucceeded):
        items = (f": {items_line(event.items, allowed=event.allowed)}"
                 if event.items is not None else "")
        return _cap(f"ok      {_name(event)} {format_duration(event.duration_ms)} "
                    f"attempts={event.attempts}{tag}{items}")
    if isinstance(event, TaskFailed):
        if event.items is not None:
            why = items_line(event.items, allowed=event.allowed)
        else:
            why = _why(event.error, event.reason)
        return _cap(f"FAILED  {_name(event)} {format_duration(event.duration_ms)} "
                    f"attempts={event.attempts}{tag}" + (f": {why}" if why else ""))
    if isinstance(event, TaskRetrying):
        ran = ("" if event.duration_ms is None
               else f" after {format_duration(event.duration_ms)}")
        why = _why(event.error, event.reason)
        return _cap(f"retry   {_name(event)} attempt={event.attempt}/{event.max_attempts} "
                    f"failed{ran}, next in {_seconds(event.delay_s)}" + (f": {why}" if why else ""))
    if isinstance(event, TaskSkipped):
        return _cap(f"skipped {_name(event)}{tag}: {clip(_or_empty(event.reason), REASON_WIDTH)}")
    if isinstance(event, TaskCached):
        key = f" key={clip(event.step_key[:8], 8)}" if isinstance(event.step_key, str) else ""
        return _cap(f"cached  {_name(event)}{key} ({clip(_or_empty(event.reason), 40)})")
    if isinstance(event, FlowStarted):
        return _cap(f"flow start: {_count(event.tasks, 'task')} in {_count(event.layers, 'layer')} "
                    f"(max_workers={event.max_workers}, schedule={clip(event.schedule, 20)})")
    if isinstance(event, FlowFinished):
        return _totals_line(event)
    return None


def _seconds(s: float) -> str:
    """``0.8s`` for a wait; ``?`` when it is no number."""
    try:
        return f"{float(s):.1f}s"
    except (TypeError, ValueError, OverflowError):
        return "?"


def _totals_line(event: FlowFinished, total: int = 0, cached: int = 0,
                 retries: int = 0) -> str:
    counts = dict(event.counts or {})
    finished = sum(counts.values())
    total = max(total, finished)
    if total > finished:
        counts["not run"] = total - finished
    parts = [f"{n} {state}" for state, n in counts.items() if n]
    status = "INTERRUPTED" if event.interrupted else ("ok" if event.ok else "FAILED")
    text = f"flow {status}: {_count(total, 'task')}: {', '.join(parts) or 'nothing to do'}"
    extras = []
    if retries:
        extras.append(f"{retries} retr{'y' if retries == 1 else 'ies'}")
    if cached:
        extras.append(f"{cached} cached")
    if extras:
        text += "; " + ", ".join(extras)
    return _cap(text + f"; in {format_duration(event.duration_ms)}")
