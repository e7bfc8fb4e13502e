"""Seeing a run: an SVG timeline (``timeline_svg``).

``timeline_svg(flow, path)`` -> an SVG Gantt chart of the last run: one row
per task in plan order, one bar per attempt, a time axis and a legend. Made
in two steps: ``layout_timeline`` computes the picture as plain data (rows,
bars, ticks, notes, in pixels), ``draw_timeline`` writes it as SVG. It reads
only ``runview.RunView`` and never raises because of what tasks returned or
raised (see ``runview``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..results import StepState
from ..text import NO_ITEM, clip, format_duration, safe_repr, safe_str, type_name
from .runview import (
    ITEM_REPR_CHARS,
    NOT_RUN,
    Fail,
    RunView,
    _bad_items,
    _counts,
    _finite,
    _is_kept,
    _is_override,
    _item_of,
    _retries_by_task,
    _status,
    _text,
)

# ----- SVG timeline: constants and small helpers ----------------------------------

COLORS = {
    "succeeded": "#2da44e",
    "failed": "#cf222e",
    "retried": "#e3a008",   # a failed attempt that was retried
    "skipped": "#8c959f",
    "cached": "#3b82f6",
    "kept": "#c9d1d9",
}

ROW_H = 24
BAR_H = 14
NAME_CHARS = 40        # longer names are cut (the full name is in a tooltip)
MAX_ITEM_TICKS = 400   # for_each ticks drawn per task (beyond it, only failed items)
CHAR_W = 7.3           # width of one 12px monospace character
SANS = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif"
MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
MUTED = "#57606a"      # secondary text
FAINT = "#8c959f"      # "not run", kept results
INK = "#24292f"        # primary text

TITLE_H, AXIS_H = 46, 26
SEPARATOR_H = 26       # gap above the detached rows
RIGHT_ROOM = 110       # room for the duration label after a bar
MIN_PLOT_W = 360

_NICE_STEPS: list[float] = sorted(m * 10 ** e for e in range(-3, 3) for m in (1, 2, 5)
                     if m * 10 ** e < 60) + [
    60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400]


def _xml(text: object) -> str:
    """Text safe inside an XML element or a double-quoted attribute (XML 1.0 chars only)."""
    s = _text(text, 10 ** 6)
    out = []
    for c in s:
        o = ord(c)
        if c == "&":
            out.append("&amp;")
        elif c == "<":
            out.append("&lt;")
        elif c == ">":
            out.append("&gt;")
        elif c == '"':
            out.append("&quot;")
        elif c in "\n\t":
            out.append("&#10;" if c == "\n" else " ")
        elif o < 0x20 or 0xD800 <= o <= 0xDFFF or o in (0xFFFE, 0xFFFF) or o == 0x7F:
            out.append("\ufffd")
        else:
            out.append(c)
    return "".join(out)


def _tick_step(span_s: float, ticks: int) -> float:
    raw = span_s / max(1, ticks)
    for step in _NICE_STEPS:
        if step >= raw:
            return step
    return _NICE_STEPS[-1] * math.ceil(raw / _NICE_STEPS[-1])


def _tick_label(t: float, step: float) -> str:
    if t == 0:
        return "0"
    if step < 1:
        return f"{t * 1000:.0f}ms"
    if step < 60:
        return f"{t:.0f}s"
    if step < 3600:
        m, s = divmod(round(t), 60)
        return f"{m}m" + (f"{s:02d}s" if s else "")
    h, rest = divmod(round(t), 3600)
    return f"{h}h" + (f"{rest // 60:02d}m" if rest else "")


def _fmt_clock(epoch: float | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _final_start(flow: RunView, i: int, r: Any, fails: Sequence[Fail]
                 ) -> tuple[float | None, bool]:
    """Start of the last attempt of task ``i``, and whether it is exact.

    Exact when the flow keeps it (``flow.last_attempt_started``, name -> epoch
    s) or when the task had a single attempt. Otherwise estimated from what is
    known: the last attempt took about as long as the failed ones, and it
    started at least half the nominal backoff after the last failure ended.
    """
    if r is None or r.started_at is None:
        return None, True
    # (attempt, start, end) of the task's own failed attempts (not its items')
    task_fails = [(f[1], f[2], f[3]) for f in fails
                  if f[0] is None and f[2] is not None and f[3] is not None]
    if not task_fails:
        return r.started_at, True
    known = getattr(flow, "last_attempt_started", None)
    if isinstance(known, dict) and known.get(r.name) is not None:
        return float(known[r.name]), True
    last_end = max(end for _, _, end in task_fails)
    end = r.finished_at if r.finished_at is not None else last_end
    td = flow.graph.tasks[i]
    k = max(attempt for attempt, _, _ in task_fails)
    nominal = min(td.retry_backoff_base_ms * 2 ** min(k - 1, 64), td.retry_max_backoff_ms) / 1000
    took = sum(f - s for _, s, f in task_fails) / len(task_fails)
    guess = max(end - took, last_end + nominal / 2)
    return min(guess, end), False


# ----- SVG timeline: the layout (plain data, in pixels) ----------------------------

@dataclass(frozen=True)
class Row:
    """One task's row: background stripe and name."""

    y: int
    fill: str
    name: str
    shown: str          # the name as drawn (cut to fit)
    detached: bool


@dataclass(frozen=True)
class Separator:
    """The dashed line and label above the detached rows."""

    y: float            # top of the gap
    line_x: float
    label: str


@dataclass(frozen=True)
class AxisTick:
    x: float
    label: str


@dataclass(frozen=True)
class Bar:
    """One attempt (or a for_each task's span, or a skip/cache marker)."""

    task: str
    y: float
    x1: float
    x2: float
    kind: str           # a COLORS key; also data-state
    cls: str            # CSS class after "bar"
    title: str
    attempt: int | None = None
    opacity: float | None = None
    outlined: bool = False  # detached task: dashed outline


@dataclass(frozen=True)
class Tick:
    """A thin vertical mark: a for_each item that finished, or an item attempt retried."""

    kind: str           # succeeded / failed / skipped / retried
    x: float
    y1: float
    y2: float
    title: str


@dataclass(frozen=True)
class Wait:
    """The backoff wait between two attempts (a dashed line)."""

    x1: float
    x2: float
    y: float


@dataclass(frozen=True)
class Note:
    """Small text in a row: a duration, "cached", "not run"..."""

    x: float
    y: float
    text: str
    color: str = MUTED
    anchor: str = "start"


Mark = Bar | Tick | Wait | Note


@dataclass
class TimelineLayout:
    """Everything ``draw_timeline`` needs, computed by ``layout_timeline``."""

    width: int
    height: int
    gutter: int         # x where the plot starts
    plot_w: int
    top: int            # y of the first row
    rows_end: int       # y below the last row
    legend_y: int
    title: str
    title_color: str
    facts: str
    ran: bool
    rows: list[Row] = field(default_factory=list)
    separator: Separator | None = None
    ticks: list[AxisTick] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)  # in drawing order


class _Scale:
    """Epoch seconds -> x pixels, and the texts the tooltips use."""

    def __init__(self, t0: float, span: float, gutter: int, plot_w: int) -> None:
        self.t0, self.span, self.gutter, self.plot_w = t0, span, gutter, plot_w

    def x(self, t: float) -> float:
        return self.gutter + (t - self.t0) / self.span * self.plot_w

    def rel(self, t: float) -> str:
        return format_duration((t - self.t0) * 1000)


def _item_name(task: str, index: object, item: object) -> str:
    """``fetch[16] (17)``: a for_each item by task, index and a short repr of the item."""
    text = f"{task}[{safe_str(index, 20)}]"
    return text + (f" ({safe_repr(item, ITEM_REPR_CHARS)})" if item is not NO_ITEM else "")


def _why_text(why: object) -> str:
    """``\\nType: message`` (or ``\\nreason``) for a tooltip; "" for None."""
    if why is None:
        return ""
    if isinstance(why, BaseException):
        return "\n" + _text(f"{type_name(why)}: {_text(why, 600)}", 700)
    return "\n" + _text(why, 600)


def _time_range(flow: RunView, fails_by_task: Mapping[int, Sequence[Fail]]
                ) -> tuple[float | None, float]:
    """(start of the run, span in seconds >= 1 ms) covering every bar of this run."""
    t0 = flow.started_at
    ends = [flow.finished_at] if flow.finished_at is not None else []
    for i, td in enumerate(flow.graph.tasks):
        r = flow.results.get(td.name)
        if r is not None and r.finished_at is not None and not _is_kept(r, flow):
            ends.append(r.finished_at)
        for f in fails_by_task.get(i, ()):
            if f[3] is not None:
                ends.append(f[3])
    clean = [e for e in (_finite(e) for e in ends) if e is not None]
    t_end = max(clean) if (t0 is not None and clean) else (t0 or 0.0)
    return t0, max(t_end - (t0 or 0.0), 1e-3)


def _title(flow: RunView, n: int, t0: float | None) -> tuple[str, str, str]:
    """(headline, its colour, the facts after it)."""
    counts = _counts(flow)
    status = _status(flow)
    head = "flowing run: " + (status.upper() if status != "ok" else "ok")
    facts = [f"{n} task{'s' if n != 1 else ''}"]
    for key in ("succeeded", "failed", "skipped", "not_run"):
        if counts[key]:
            facts.append(f"{counts[key]} {key.replace('_', ' ')}")
    if counts["cached"]:
        facts.append(f"{counts['cached']} cached")
    if counts["retried_attempts"]:
        facts.append(f"{counts['retried_attempts']} retried attempt"
                     f"{'s' if counts['retried_attempts'] != 1 else ''}")
    if t0 is not None and flow.finished_at is not None:
        facts.append(format_duration((flow.finished_at - t0) * 1000))
        facts.append("started " + _fmt_clock(t0))
    color = {"ok": "#1a7f37", "failed": "#cf222e"}.get(status, MUTED)
    return head, color, " · ".join(facts)


def _axis_ticks(scale: _Scale) -> list[AxisTick]:
    span, plot_w = scale.span, scale.plot_w
    step = _tick_step(span, max(2, int(plot_w / 90)))
    ticks = []
    k = 0
    while k * step <= span * 1.0001 and k < 500:
        t = k * step
        ticks.append(AxisTick(scale.gutter + t / span * plot_w, _tick_label(t, step)))
        k += 1
    return ticks


class _RowMarks:
    """Builds the marks of one task's row (bars, ticks, waits, notes)."""

    def __init__(self, flow: RunView, scale: _Scale, i: int, y: int, width: int) -> None:
        self.flow, self.scale, self.i, self.y, self.width = flow, scale, i, y, width
        self.td = flow.graph.tasks[i]
        self.detached = bool(flow.graph.detached[i])
        self.marks: list[Mark] = []

    def bar(self, start: float, end: float, kind: str, title: str, *,
            attempt: int | None = None, cls: str | None = None,
            opacity: float | None = None, min_w: float = 4.0) -> tuple[float, float]:
        x1 = self.scale.x(max(start, self.scale.t0))
        x2 = max(self.scale.x(end), x1 + min_w)
        self.marks.append(Bar(self.td.name, self.y + (ROW_H - BAR_H) / 2, x1, x2, kind,
                              cls or kind, title, attempt, opacity,
                              self.detached and x2 - x1 >= 8))
        return x1, x2

    def note(self, x: float, text: str, color: str = MUTED, anchor: str = "start") -> None:
        self.marks.append(Note(x, self.y + ROW_H / 2 + 4, text, color, anchor))

    def wait(self, x1: float, x2: float) -> None:
        if x2 - x1 >= 2:
            self.marks.append(Wait(x1, x2, self.y + ROW_H / 2))

    def build(self, r: Any, fails: Sequence[Fail]) -> list[Mark]:
        flow, scale = self.flow, self.scale
        gutter = scale.gutter
        if r is None:
            self.note(gutter + 4, NOT_RUN, FAINT)
            return self.marks
        if _is_kept(r, flow):
            what = "override" if _is_override(r) else "kept from an earlier run"
            self.note(gutter + 4, f"{what} ({r.state.value})", FAINT)
            return self.marks
        state = "cached" if r.cached is True else r.state.value
        if _finite(r.started_at) is None or _finite(r.finished_at) is None:
            self.note(gutter + 4, state, COLORS.get(state, MUTED))
            return self.marks
        if r.items is not None:
            last_x2 = self._for_each(r, state, fails)
        elif state in ("skipped", "cached") or (r.attempts == 0 and not fails):
            last_x2 = self._marker(r, state)
        else:
            last_x2 = self._attempts(r, state, fails)
        self._outcome_label(r, state, last_x2)
        return self.marks

    def _for_each(self, r: Any, state: str, fails: Sequence[Fail]) -> float:
        """The task's span, a tick per item, item retries in amber."""
        name, scale, y = self.td.name, self.scale, self.y
        _, last_x2 = self.bar(r.started_at, r.finished_at, state,
                              f"{name}: {len(r.items)} items, {state}, "
                              f"{format_duration(r.duration_ms or 0)} "
                              f"({scale.rel(r.started_at)} to {scale.rel(r.finished_at)})"
                              + _why_text(r.error),
                              cls=f"{state} span", opacity=0.35)
        shown = [it for it in r.items
                 if it is not None and it.finished_at is not None and it.cached is not True]
        if len(shown) > MAX_ITEM_TICKS:  # keep the file small: failures first
            shown = [it for it in shown if it.state is not StepState.SUCCEEDED][:MAX_ITEM_TICKS]
        for it in shown:
            kind = "succeeded" if it.state is StepState.SUCCEEDED else (
                "failed" if it.state is StepState.FAILED else "skipped")
            self.marks.append(Tick(kind, scale.x(it.finished_at), y + 4, y + ROW_H - 4,
                                   f"{_item_name(name, it.index, _item_of(it))}: {kind}, "
                                   f"attempts={it.attempts}" + _why_text(it.error)))
        items = r.items
        for index, attempt, _s, f, why in fails[:MAX_ITEM_TICKS]:
            if index is None or f is None:
                continue
            it = items[index] if type(index) is int and 0 <= index < len(items) else None
            self.marks.append(Tick("retried", scale.x(f), y + 2, y + 9,
                                   f"{_item_name(name, index, _item_of(it))} attempt "
                                   f"{attempt} failed, retried" + _why_text(why)))
        return last_x2

    def _marker(self, r: Any, state: str) -> float:
        """A task that ran no body this run: skipped, cached, stopped by a gate."""
        name, scale = self.td.name, self.scale
        reason = _text(r.reason, 600) if r.reason is not None else ""
        label = state if state != "failed" else f"failed: {reason or 'before the body'}"
        x1, _ = self.bar(r.started_at, r.finished_at, state,
                         f"{name}: {label} at {scale.rel(r.started_at)}"
                         + ("" if state == "skipped" else _why_text(r.error))
                         + (f"\n{reason}" if state == "skipped" and reason else ""),
                         attempt=0 if state != "cached" else None, min_w=4)
        return x1 + 4

    def _attempts(self, r: Any, state: str, fails: Sequence[Fail]) -> float:
        """One bar per attempt; the waits between them dashed."""
        name, scale = self.td.name, self.scale
        max_attempts = 1 + self.td.retry
        task_fails = sorted((f for f in fails if f[0] is None), key=lambda f: f[1])
        prev_end = None
        for _item, attempt, s, f, why in task_fails:
            if s is None or f is None:
                continue
            if prev_end is not None:
                self.wait(scale.x(prev_end), scale.x(s))
            self.bar(s, f, "retried",
                     f"{name}: attempt {attempt}/{max_attempts} failed after "
                     f"{format_duration((f - s) * 1000)} ({scale.rel(s)} to {scale.rel(f)}), "
                     f"retried" + _why_text(why), attempt=attempt)
            prev_end = f
        final_start, exact = _final_start(self.flow, self.i, r, fails)
        assert final_start is not None  # r.started_at is known here
        if prev_end is not None:
            self.wait(scale.x(prev_end), scale.x(final_start))
        attempt = r.attempts or (len(task_fails) + 1)
        took = (r.finished_at - final_start) * 1000
        _, last_x2 = self.bar(final_start, r.finished_at, state,
                              f"{name}: attempt {attempt}/{max_attempts} {state} after "
                              f"{format_duration(took)} ({scale.rel(final_start)} to "
                              f"{scale.rel(r.finished_at)})"
                              + ("" if exact else " (start estimated)") + _why_text(r.error),
                              attempt=attempt)
        return last_x2

    def _outcome_label(self, r: Any, state: str, last_x2: float) -> None:
        """Duration (or "skipped"/"cached") after the last bar, or before the first one
        when it would run off the chart."""
        label = {"skipped": "skipped", "cached": "cached"}.get(state)
        if label is None:
            label = format_duration(r.duration_ms or 0)
            if (r.attempts or 0) > 1:
                label += f" ×{r.attempts}"
            if r.items is not None:
                bad = _bad_items(r.items)
                label += f" · {len(r.items)} items" + (f", {bad} failed" if bad else "")
        color = COLORS["failed"] if state == "failed" else MUTED
        if last_x2 + 6 + len(label) * 6.4 <= self.width - 4:
            self.note(last_x2 + 6, label, color)
        else:
            self.note(self.scale.x(max(r.started_at, self.scale.t0)) - 6, label, color,
                      anchor="end")


def layout_timeline(flow: RunView, *, width: int = 1200) -> TimelineLayout:
    """The timeline of the last run of ``flow`` as plain data (see ``draw_timeline``)."""
    g = flow.graph
    tasks = g.tasks
    n = len(tasks)
    fails_by_task = _retries_by_task(flow)
    t0, span = _time_range(flow, fails_by_task)

    longest = max((len(td.name) for td in tasks), default=4)
    name_chars = min(NAME_CHARS, max(longest, 8))
    gutter = int(16 + name_chars * CHAR_W + 20)
    width = max(int(width), gutter + RIGHT_ROOM + MIN_PLOT_W)
    plot_w = width - gutter - RIGHT_ROOM
    top = TITLE_H + AXIS_H

    has_detached = g.main_count < n
    rows: list[Row] = []
    separator = None
    y = top
    for i, td in enumerate(tasks):
        if i == g.main_count and has_detached:
            label = "detached: run after the main tasks"
            separator = Separator(y, max(gutter - 8, 16 + len(label) * 6.2 + 12), label)
            y += SEPARATOR_H
        rows.append(Row(y, "#f6f8fa" if i % 2 == 0 else "#ffffff", td.name,
                        clip(td.name, name_chars), bool(g.detached[i])))
        y += ROW_H
    rows_end = y
    legend_y = rows_end + 34

    title, title_color, facts = _title(flow, n, t0)
    layout = TimelineLayout(width, int(legend_y + 34), gutter, plot_w, top, rows_end,
                            legend_y, title, title_color, facts, t0 is not None, rows,
                            separator)
    if t0 is None:
        return layout
    scale = _Scale(t0, span, gutter, plot_w)
    layout.ticks = _axis_ticks(scale)
    for i, td in enumerate(tasks):
        row = _RowMarks(flow, scale, i, rows[i].y, width)
        layout.marks.extend(row.build(flow.results.get(td.name), fails_by_task.get(i, [])))
    return layout


# ----- SVG timeline: drawing -----------------------------------------------------

class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(self, x: float, y: float, s: str, *, size: int = 12, fill: str = INK,
             anchor: str = "start", family: str = SANS, weight: str | None = None,
             italic: bool = False, cls: str | None = None, title: str | None = None) -> None:
        attrs = [f'x="{x:.1f}"', f'y="{y:.1f}"', f'font-size="{size}"', f'fill="{fill}"',
                 f'font-family="{family}"']
        if anchor != "start":
            attrs.append(f'text-anchor="{anchor}"')
        if weight:
            attrs.append(f'font-weight="{weight}"')
        if italic:
            attrs.append('font-style="italic"')
        if cls:
            attrs.append(f'class="{cls}"')
        inner = (f"<title>{_xml(title)}</title>" if title else "") + _xml(s)
        self.add(f"<text {' '.join(attrs)}>{inner}</text>")


def draw_timeline(layout: TimelineLayout) -> str:
    """The SVG text of a ``TimelineLayout``."""
    lay = layout
    width, height = lay.width, lay.height
    svg = _Svg()
    svg.add('<?xml version="1.0" encoding="UTF-8"?>')
    svg.add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{SANS}">')
    svg.add("<style>.bar:hover{stroke:#24292f;stroke-width:1.5}"
            " .row:hover{fill:#eef4ff}</style>")
    svg.add(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>')
    svg.text(16, 24, lay.title, size=16, weight="600", fill=lay.title_color)
    svg.text(16 + len(lay.title) * 9.6 + 14, 24, lay.facts, size=13, fill=MUTED)
    _draw_rows(svg, lay)
    _draw_axis(svg, lay)
    for mark in lay.marks:
        _draw_mark(svg, mark)
    _draw_legend(svg, lay.legend_y)
    svg.add("</svg>")
    return "\n".join(svg.parts) + "\n"


def _draw_rows(svg: _Svg, lay: TimelineLayout) -> None:
    for row in lay.rows:
        svg.add(f'<rect class="row" x="0" y="{row.y:.1f}" width="{lay.width}" '
                f'height="{ROW_H}" fill="{row.fill}"/>')
        svg.text(16, row.y + ROW_H / 2 + 4, row.shown, family=MONO, italic=row.detached,
                 cls="task-name", fill=MUTED if row.detached else INK,
                 title=row.name if row.shown != row.name else None)
    sep = lay.separator
    if sep is not None:
        mid = sep.y + SEPARATOR_H / 2
        svg.add(f'<line class="separator" x1="{sep.line_x:.1f}" y1="{mid:.1f}" '
                f'x2="{lay.width - 8}" y2="{mid:.1f}" stroke="#afb8c1" '
                f'stroke-dasharray="4 3"/>')
        svg.text(16, mid + 4, sep.label, size=11, fill=MUTED, italic=True)


def _draw_axis(svg: _Svg, lay: TimelineLayout) -> None:
    gutter, plot_w, rows_end = lay.gutter, lay.plot_w, lay.rows_end
    axis_top = lay.top - 6
    svg.add(f'<line x1="{gutter}" y1="{axis_top}" x2="{gutter + plot_w}" y2="{axis_top}" '
            f'stroke="{MUTED}"/>')
    svg.add(f'<line x1="{gutter}" y1="{rows_end + 6}" x2="{gutter + plot_w}" '
            f'y2="{rows_end + 6}" stroke="{MUTED}"/>')
    if not lay.ran:
        svg.text(gutter + plot_w / 2, lay.top + 14, "not run yet", size=13, fill=FAINT,
                 anchor="middle")
    for tick in lay.ticks:
        x = tick.x
        svg.add(f'<line class="grid" x1="{x:.1f}" y1="{axis_top}" x2="{x:.1f}" '
                f'y2="{rows_end + 6}" stroke="#d8dee4" stroke-width="1"/>')
        svg.add(f'<line x1="{x:.1f}" y1="{axis_top - 4}" x2="{x:.1f}" y2="{axis_top}" '
                f'stroke="{MUTED}"/>')
        svg.text(x, axis_top - 8, tick.label, size=11, fill=MUTED, anchor="middle",
                 cls="tick")
        svg.text(x, rows_end + 20, tick.label, size=11, fill=MUTED, anchor="middle")


def _draw_mark(svg: _Svg, mark: Mark) -> None:
    if isinstance(mark, Bar):
        attrs = [f'class="bar {mark.cls}"', f'x="{mark.x1:.1f}"', f'y="{mark.y:.1f}"',
                 f'width="{mark.x2 - mark.x1:.1f}"', f'height="{BAR_H}"', 'rx="2"',
                 f'fill="{COLORS[mark.kind]}"', f'data-task="{_xml(mark.task)}"',
                 f'data-state="{mark.kind}"']
        if mark.attempt is not None:
            attrs.append(f'data-attempt="{mark.attempt}"')
        if mark.opacity is not None:
            attrs.append(f'fill-opacity="{mark.opacity}"')
        if mark.outlined:
            attrs.append(f'stroke="{INK}" stroke-width="1" stroke-dasharray="3 2"')
        svg.add(f"<rect {' '.join(attrs)}><title>{_xml(mark.title)}</title></rect>")
    elif isinstance(mark, Tick):
        svg.add(f'<line class="item {mark.kind}" x1="{mark.x:.1f}" y1="{mark.y1:.1f}" '
                f'x2="{mark.x:.1f}" y2="{mark.y2:.1f}" stroke="{COLORS[mark.kind]}" '
                f'stroke-width="2"><title>{_xml(mark.title)}</title></line>')
    elif isinstance(mark, Wait):
        svg.add(f'<line class="wait" x1="{mark.x1:.1f}" y1="{mark.y:.1f}" '
                f'x2="{mark.x2:.1f}" y2="{mark.y:.1f}" stroke="{FAINT}" stroke-width="1.5" '
                f'stroke-dasharray="3 2"/>')
    else:
        svg.text(mark.x, mark.y, mark.text, size=11, fill=mark.color, anchor=mark.anchor)


def _draw_legend(svg: _Svg, ly: float) -> None:
    lx: float = 16
    svg.text(lx, ly + 4, "legend:", size=11, fill=MUTED)
    lx += 56
    for kind, label in (("succeeded", "succeeded"), ("failed", "failed"),
                        ("retried", "failed attempt, retried"), ("skipped", "skipped"),
                        ("cached", "cached (journal)")):
        svg.add(f'<rect class="legend {kind}" x="{lx}" y="{ly - 6}" width="14" height="12" '
                f'rx="2" fill="{COLORS[kind]}"/>')
        svg.text(lx + 19, ly + 4, label, size=11, fill=INK)
        lx += 19 + len(label) * 6.4 + 18
    svg.add(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{FAINT}" '
            f'stroke-width="1.5" stroke-dasharray="3 2"/>')
    svg.text(lx + 27, ly + 4, "backoff wait", size=11, fill=INK)
    lx += 27 + 12 * 6.4 + 18
    svg.add(f'<rect x="{lx}" y="{ly - 6}" width="14" height="12" rx="2" fill="#ffffff" '
            f'stroke="{INK}" stroke-dasharray="3 2"/>')
    svg.text(lx + 19, ly + 4, "detached", size=11, fill=INK, italic=True)
    lx += 19 + 8 * 6.4 + 18
    svg.add(f'<line x1="{lx + 4}" y1="{ly - 6}" x2="{lx + 4}" y2="{ly + 6}" '
            f'stroke="{COLORS["succeeded"]}" stroke-width="2"/>')
    svg.text(lx + 12, ly + 4, "for_each item done", size=11, fill=INK)


def render_timeline(flow: RunView, *, width: int = 1200) -> str:
    """The SVG text of ``timeline_svg``."""
    return draw_timeline(layout_timeline(flow, width=width))


def timeline_svg(flow: RunView, path: Any, *, width: int = 1200) -> str:
    """Write an SVG Gantt chart of the last run of ``flow`` to ``path``; returns the path.

    Rows are tasks in plan order (detached tasks last, under a separator); each
    attempt is a bar coloured by its outcome; failed attempts that were retried
    are amber and the backoff wait before the next attempt is a dashed line;
    ``for_each`` tasks show their span with a tick per item. Hover a bar for
    its timing and error.
    """

    svg = render_timeline(flow, width=width)
    target: str = os.fspath(path)
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(svg)
    os.replace(tmp, target)
    return target
