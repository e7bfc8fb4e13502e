"""Progress of a long run: what is done, what is running, for how long.

``Reporter.tick`` calls ``Progress.tick`` about once a second during a run
(only when the flow logs: nothing of this happens with ``log=False``).

* On a terminal (``sys.stderr.isatty()``, default ``"flowing"`` logger) one
  live status line is redrawn in place::

      flowing: 3/10 done, 12.4s | running: fetch 8.1s, parse 0.6s, +2 more

  It is wiped before any other line of the ``"flowing"`` logger is written,
  and at the end of the run, so it never mixes with the log.
* Otherwise (a pipe, a file, a CI log, or a logger of your own) a heartbeat
  line is logged every ``HEARTBEAT_S`` seconds while anything has been
  running for longer than ``HEARTBEAT_S``::

      flowing: still running: fetch 42s, parse 12s; 3/10 done, 45s elapsed

A running ``for_each`` task says how far its items are, in both lines: done
of total, items in flight, and the time left at the pace so far (items done
per second since its first item started; ``?`` before one is done)::

      flowing: still running: fetch 42s (120/300 items, 5 in flight, ~1m03s left); ...
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

from ..text import LOGGER_NAME, MAX_LINE, clip, format_duration

if TYPE_CHECKING:
    import logging

# Seconds between heartbeat lines, and how long a task must have been running
# before it is worth one. Read at every tick, so tests may monkeypatch it.
HEARTBEAT_S = 10.0

_CLEAR = "\r\x1b[2K"  # carriage return, erase the whole line

# The live line currently on screen (at most one per process).
_lock = threading.Lock()
_shown_on: TextIO | None = None  # the stream it is on, or None


def clear_live() -> None:
    """Wipe the live status line, if one is on screen. Safe from any thread."""
    global _shown_on
    if _shown_on is None:
        return
    with _lock:
        stream, _shown_on = _shown_on, None
        if stream is not None:
            try:
                stream.write(_CLEAR)
                stream.flush()
            except Exception:  # a closed or odd stream: the line is simply not shown
                pass


def _draw(stream: TextIO, text: str) -> None:
    global _shown_on
    with _lock:
        try:
            stream.write(_CLEAR + text)
            stream.flush()
        except Exception:  # a closed or odd stream: nothing is drawn
            return
        _shown_on = stream


def _is_tty(stream: Any) -> bool:
    try:
        return stream.isatty() is True
    except Exception:  # a closed, odd or hostile stream is no terminal
        return False


def _age(seconds: float) -> str:
    """``0.4s``, ``12.0s``, ``3m05s``: one style for every age on the line."""
    seconds = max(0.0, seconds)
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds * 1000)


# A running for_each task's items: (done, total, in flight, first item's start, epoch s).
ItemsProgress = tuple[int, int, int, float]


def items_progress(progress: ItemsProgress, now: float) -> str:
    """``120/300 items, 5 in flight, ~1m03s left`` (``?`` left before any item is done)."""
    done, total, in_flight, started = progress
    left = "?"
    if done > 0 and now > started:
        left = "~" + _age((now - started) / done * (total - done))
    return f"{done}/{total} items, {in_flight} in flight, {left} left"


def running_list(running: Mapping[str, float], now: float, width: int,
                 items: Mapping[str, ItemsProgress] | None = None) -> str:
    """``a 8.1s, b 0.6s, +2 more`` (longest-running first) in at most ``width`` chars;
    a task in ``items`` (a running for_each) also says how far its items are."""

    ages = sorted(((now - t, name) for name, t in running.items()), reverse=True)
    parts: list[str] = []
    used = 0
    for k, (age, name) in enumerate(ages):
        part = f"{clip(name, 40)} {_age(age)}"
        fan = items.get(name) if items else None
        if fan is not None:
            part += f" ({items_progress(fan, now)})"
        rest = len(ages) - k - 1
        more = len(f", +{rest} more") if rest else 0
        if parts and used + 2 + len(part) + more > width:
            parts.append(f"+{len(ages) - k} more")
            break
        parts.append(part)
        used += len(part) + 2
    return clip(", ".join(parts), width)


class Progress:
    """Progress of one run, for one logger."""

    def __init__(self, logger: logging.Logger, started_at: float,
                 stream: TextIO | None = None) -> None:
        import logging  # lazy: keeps import flowing fast

        self.logger = logger
        self.started_at = started_at
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = logger.isEnabledFor(logging.INFO)
        # A live line only where the default logger writes: the user's terminal.
        self.live = (self.enabled and logger is logging.getLogger(LOGGER_NAME)
                     and _is_tty(self.stream))
        self.last_beat = started_at

    def tick(self, done: int, total: int, running: Mapping[str, float],
             items: Mapping[str, ItemsProgress] | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self.live:
            self._draw_live(done, total, running, now, items)
        else:
            self._heartbeat(done, total, running, now, items)

    def _draw_live(self, done: int, total: int, running: Mapping[str, float],
                   now: float, items: Mapping[str, ItemsProgress] | None = None) -> None:
        import shutil  # lazy: keeps import flowing fast

        columns = shutil.get_terminal_size((100, 24)).columns
        width = max(20, columns - 1)  # never wrap: a wrapped line cannot be redrawn
        head = f"flowing: {done}/{total} done, {_age(now - self.started_at)}"
        if running:
            head += " | running: " + running_list(running, now, max(10, width - len(head) - 12),
                                                  items)
        _draw(self.stream, clip(head, width))

    def _heartbeat(self, done: int, total: int, running: Mapping[str, float],
                   now: float, items: Mapping[str, ItemsProgress] | None = None) -> None:
        interval = HEARTBEAT_S
        if now - self.last_beat < interval:
            return
        if not any(now - t >= interval for t in running.values()):
            return
        self.last_beat = now
        tail = f"; {done}/{total} done, {_age(now - self.started_at)} elapsed"
        room = MAX_LINE - len("flowing: still running: ") - len(tail)
        self.logger.info("still running: %s%s", running_list(running, now, room, items), tail)

    def clear(self) -> None:
        if self.live:
            clear_live()

    def close(self) -> None:
        self.clear()
