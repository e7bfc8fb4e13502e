"""The ``flowing`` command line.

    flowing journal show PATH            list the journaled results (latest per key)
    flowing journal forget PATH TASK...  make tasks (and all that used them) run again
    flowing journal compact PATH         drop stale duplicates and unreadable lines

Exit status: 0 success, 1 error (one line on stderr, no traceback), 2 bad usage.

Nothing read from a journal reaches the terminal raw: task names, keys and
value previews have their control characters escaped (``\\x1b``, ``\\u202e``),
so a hostile journal cannot drive the terminal. A path that is not a flowing
journal, a symbolic link or not a regular file (a FIFO included: it is never
read, so nothing blocks) is refused with exit status 1 and left untouched;
see flowing.journal.files for what counts as a journal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .errors import JournalError
from .journal.format import Entry, human_size
from .journal.rewrite import compact, forget
from .journal.scan import iter_entries
from .text import printable as _printable

_WARN_LOGGER = "flowing.cli"
_NAME_WIDTH = 60    # longer task names are cut with "..." in `journal show`


class _Printable(logging.Formatter):
    """Escapes control characters in a warning (it may quote bytes read from the journal)."""

    def format(self, record: logging.LogRecord) -> str:
        return _printable(super().format(record))


def _logger() -> logging.Logger:
    """Journal warnings go to stderr as ``flowing: warning: ...`` (never through the root logger)."""
    log = logging.getLogger(_WARN_LOGGER)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_Printable("flowing: warning: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.WARNING)
        log.propagate = False
    return log


def _when(t: float) -> str:
    """Local time of an entry; a time no clock gives (huge, negative on some systems) as-is."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return _printable(repr(t), 19)


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


# ------------------------------------------------------------------ commands

def _cmd_show(args: argparse.Namespace) -> int:
    log = _logger()
    latest: dict[str, Entry] = {}
    total = 0
    on_disk = 0
    for e in iter_entries(args.path, log):
        total += 1
        on_disk += e.size
        latest.pop(e.key, None)  # re-insert so the dict keeps file order of the latest entries
        latest[e.key] = e
    rows = [(_printable(e.name, _NAME_WIDTH), _printable(e.key[:12]), e.kind, _when(e.time),
             human_size(e.size), _printable(e.preview))
            for e in latest.values()]
    head = ("TASK", "KEY", "KIND", "TIME", "SIZE", "VALUE")
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head[:-1])]
        fmt = "  ".join(f"{{:<{w}}}" if i != 4 else f"{{:>{w}}}" for i, w in enumerate(widths)) + "  {}"
        print(fmt.format(*head))
        for r in rows:
            print(fmt.format(*r))
    kinds = {"task": 0, "item": 0, "override": 0}
    for e in latest.values():
        kinds[e.kind] += 1
    tasks = {e.task for e in latest.values()}
    line = (f"{_plural(len(latest), 'entry', 'entries')} "
            f"({_plural(kinds['task'], 'task result')}, {_plural(kinds['item'], 'item')}, "
            f"{_plural(kinds['override'], 'override')}) for {_plural(len(tasks), 'task')}; "
            f"{human_size(on_disk)} on disk")
    stored = {e.stored: e.stored_size for e in latest.values() if e.stored is not None}
    if stored:
        line += (f" + {_plural(len(stored), 'stored value')}, {human_size(sum(stored.values()))} "
                 f"beside it")
    stale = total - len(latest)
    if stale:
        line += (f"; {_plural(stale, 'superseded entry', 'superseded entries')} "
                 f"(`flowing journal compact {_printable(args.path)}` drops them)")
    print(line)
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    r = forget(args.path, args.tasks, _logger())

    def describe(entries: list[Entry]) -> str:
        n_items = sum(e.kind == "item" for e in entries)
        n_other = len(entries) - n_items
        parts = []
        if n_other:
            parts.append(_plural(n_other, "entry", "entries"))
        if n_items:
            parts.append(_plural(n_items, "item"))
        return ", ".join(parts)

    for name, entries in r.requested.items():
        print(f"forgot {_printable(name)}: {describe(entries)}")
    for name, entries in sorted(r.downstream.items()):
        print(f"forgot {_printable(name)}: {describe(entries)} (downstream)")
    freed = f" ({human_size(r.values_freed)} of stored values removed)" if r.values_freed else ""
    print(f"journal {args.path!r}: {_plural(r.removed, 'entry', 'entries')} "
          f"removed, {r.kept} kept{freed}; the forgotten tasks will run again next time")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    r = compact(args.path, _logger())
    print(f"before: {_plural(r.lines_before, 'line')}, {human_size(r.bytes_before)}"
          + (f" ({r.unreadable} unreadable)" if r.unreadable else ""))
    print(f"after:  {_plural(r.entries_after, 'line')}, {human_size(r.bytes_after)}"
          + (f"; {human_size(r.values_freed)} of stored values removed" if r.values_freed else ""))
    return 0


# -------------------------------------------------------------------- parser

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowing",
        description="Tools for flowing, the DAG workflow runner.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    j = sub.add_parser(
        "journal", help="inspect and edit a run journal",
        description="Inspect and edit a run journal (the JSONL file named by journal_path). "
                    "Tasks whose results are in the journal are replayed, not run, next time.")
    jsub = j.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = jsub.add_parser("show", help="list journaled results",
                        description="List the journaled results, one line per step key "
                                    "(latest entry), in file order, then a totals line.")
    s.add_argument("path", metavar="PATH", help="the journal file")
    s.set_defaults(func=_cmd_show)

    f = jsub.add_parser("forget", help="make tasks run again",
                        description="Remove the named tasks' results (for a for_each task, also "
                                    "its items TASK[i]) and, transitively, every result that was "
                                    "computed from them, so they all run again next time. The "
                                    "file is rewritten atomically.")
    f.add_argument("path", metavar="PATH", help="the journal file")
    f.add_argument("tasks", metavar="TASK", nargs="+", help="task name")
    f.set_defaults(func=_cmd_forget)

    c = jsub.add_parser("compact", help="drop superseded and unreadable entries",
                        description="Rewrite the journal atomically, keeping only the latest "
                                    "entry per step key and dropping unreadable lines.")
    c.add_argument("path", metavar="PATH", help="the journal file")
    c.set_defaults(func=_cmd_compact)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)  # exits 2 on bad usage, 0 on --help
    for stream in (sys.stdout, sys.stderr):
        # A terminal that cannot show some character gets an escape, not a traceback.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
    try:
        status: int = args.func(args)
        return status
    except JournalError as e:
        print(f"flowing: error: {_printable(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flowing: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: not an error worth a traceback.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except OSError as e:
        where = f": {e.filename!r}" if e.filename else ""
        print(f"flowing: error: {_printable(str(e.strerror or e))}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the contract is one line and status 1, never a traceback
        print(f"flowing: error: unexpected {type(e).__name__}: {_printable(str(e), 200)} "
              f"(please report this)", file=sys.stderr)
        return 1
