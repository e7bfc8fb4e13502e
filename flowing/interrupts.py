"""Ctrl-C during a run, and the one boundary for ``BaseException`` raised by user code.

Policy
------
* For the whole of ``run()``/``resume()`` — computing step keys included —
  flowing owns SIGINT when the run is on the main thread and SIGINT has
  Python's default handler (an application with its own handler is left
  alone). ``Catcher`` installs the handler and restores the previous one
  when the run ends.
* Before the scheduler loop starts (keys are being computed) the handler
  raises ``KeyboardInterrupt`` at once, as Python's own would: nothing has
  run yet. Once the loop runs, it only sets ``seen`` and wakes the loop,
  which raises at a safe point between two outcomes (a KeyboardInterrupt
  at an arbitrary bytecode could drop a finished result).
* Hence a ``KeyboardInterrupt`` is the terminal's only when ``seen`` is set
  (or, with no catcher installed, when it reaches the main thread while
  Python's default handler is in place). Any other ``BaseException`` raised
  by user code — a value's ``__reduce_ex__`` while it is digested, an
  ``on_event`` hook raising ``SystemExit``, a ``retry_after`` property — is
  the user's, and ``is_terminal`` says so: call sites contain it like any
  error. ``guarded`` is the helper every call into user code for digests
  and keys goes through.
* Forked children never keep flowing's handler: ``os.register_at_fork``
  restores the previous disposition in every child forked while a run is
  going on (process-pool workers started lazily during a run, or by a body),
  and the handler itself behaves as Python's default in any process other
  than the one that installed it. So a terminal's Ctrl-C (sent to the whole
  process group) reaches pool workers as a plain ``KeyboardInterrupt``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# The catcher whose handler is installed in this process, or None.
_active: Catcher | None = None


class Catcher:
    """Flowing's SIGINT handler for one run (install with ``with Catcher() as c:``)."""

    __slots__ = ("seen", "wake", "pid", "previous", "installed")

    def __init__(self) -> None:
        self.seen = False          # a real Ctrl-C arrived during the run
        self.wake: Callable[[], None] | None = None  # set by the scheduler loop
        self.pid = os.getpid()
        self.previous: Any = None
        self.installed = False

    def __enter__(self) -> Catcher:
        global _active
        if _active is not None or threading.current_thread() is not threading.main_thread():
            return self  # a run inside a run, or off the main thread: nothing to install
        previous = signal.getsignal(signal.SIGINT)
        if previous is not signal.default_int_handler:
            return self  # the application handles SIGINT its own way: leave it alone
        _register_fork_hook()
        self.previous = previous
        signal.signal(signal.SIGINT, self._handler)
        self.installed = True
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        if self.installed:
            self.installed = False
            _active = None
            signal.signal(signal.SIGINT, self.previous)

    def _handler(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked child that kept our handler: be the default
            signal.default_int_handler(signum, frame)
        self.seen = True
        wake = self.wake
        if wake is None:
            raise KeyboardInterrupt  # nothing runs yet (keys being computed): stop now
        wake()


def is_terminal(exc: BaseException) -> bool:
    """Whether ``exc`` is a real Ctrl-C that must propagate (else: user code's error)."""
    if not isinstance(exc, KeyboardInterrupt):
        return False
    catcher = _active
    if catcher is not None and catcher.pid == os.getpid():
        return catcher.seen
    # flowing does not own SIGINT here: only the main thread receives a terminal's
    # Ctrl-C, and only through Python's default handler
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def guarded(fn: Callable[..., T], *args: Any, fallback: T,
            seen: list[BaseException] | None = None) -> T:
    """``fn(*args)``, or ``fallback`` when user code inside raised anything at all
    (``SystemExit``, a ``KeyboardInterrupt`` that is not the terminal's...); the
    exception is appended to ``seen`` if given. A real Ctrl-C propagates."""
    try:
        return fn(*args)
    except BaseException as exc:
        if is_terminal(exc):
            raise
        if seen is not None:
            seen.append(exc)
        return fallback



_fork_hook = False


def _register_fork_hook() -> None:
    global _fork_hook
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True


def _after_fork_in_child() -> None:
    """In a child forked during a run: give SIGINT back its previous disposition."""
    global _active
    catcher = _active
    _active = None
    if catcher is None:
        return
    try:
        if signal.getsignal(signal.SIGINT) == catcher._handler:
            signal.signal(signal.SIGINT, catcher.previous)
    except Exception:  # never break a fork
        pass
