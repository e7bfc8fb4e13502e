"""Seeing a run: a JSON report, a Mermaid flowchart and an SVG timeline.

All three read only what a ``Flow`` shows to everyone: ``flow.graph``,
``flow.results``, ``flow.retries``, ``flow.started_at``/``finished_at``.

* ``build_report(flow)`` -> a dict that ``json.dumps`` always accepts
  (strict JSON: no NaN, string keys), whatever the tasks returned. A task's
  ``value`` is included only when it is small plain JSON; otherwise the
  report gives its type and a short preview.
* ``to_mermaid(flow)`` -> ``flowchart TD`` text: one node per task, edges
  ``dep --> task`` (dashed into detached tasks), and after a run the nodes are
  coloured by state.
* ``timeline_svg(flow, path)`` -> an SVG Gantt chart of the last run: one row
  per task in plan order, one bar per attempt, a time axis and a legend.
"""

from __future__ import annotations

import math

from .events import clip, format_duration
from .results import StepState

REPORT_VERSION = 1
VALUE_MAX_CHARS = 1000  # a value is embedded when its JSON is at most this long
MESSAGE_MAX_CHARS = 2000
TRACEBACK_MAX_CHARS = 4000
MAX_LISTED = 1000       # failed item indices / retries listed per task

NOT_RUN = "not run"


# ----- shared helpers -----------------------------------------------------------

def _state(r) -> str:
    return NOT_RUN if r is None else r.state.value


def _num(x, digits: int = 3):
    """A finite float rounded for JSON, or None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return round(x, digits) if math.isfinite(x) else None


def _text(x, limit: int) -> str:
    try:
        s = x if isinstance(x, str) else str(x)
    except Exception:
        s = "<unprintable>"
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _error(e) -> dict | None:
    """``{"type", "message"}`` of an exception (or of a retry reason string)."""
    if e is None:
        return None
    if isinstance(e, BaseException):
        return {"type": type(e).__name__, "message": _text(e, MESSAGE_MAX_CHARS)}
    return {"type": None, "message": _text(e, MESSAGE_MAX_CHARS)}


def _is_kept(r, flow) -> bool:
    """The result predates the last run: kept by resume(), or an override."""
    if r is None or flow.started_at is None:
        return r is not None and r.reason == "override"
    return r.reason == "override" or (r.finished_at is not None
                                      and r.finished_at < flow.started_at - 1e-6)


def _retries_by_task(flow) -> dict:
    out: dict = {}
    for entry in getattr(flow, "retries", None) or ():
        try:
            task, item, attempt, started, finished, why = entry
        except (TypeError, ValueError):
            continue
        out.setdefault(task, []).append((item, attempt, started, finished, why))
    return out


def _counts(flow) -> dict:
    g = flow.graph
    counts = {"tasks": len(g), "main": g.main_count, "detached": len(g) - g.main_count,
              "succeeded": 0, "failed": 0, "skipped": 0, "not_run": 0, "cached": 0,
              "retried_attempts": len(getattr(flow, "retries", None) or ())}
    for td in g.tasks:
        r = flow.results.get(td.name)
        if r is None:
            counts["not_run"] += 1
        else:
            counts[r.state.value] += 1
            counts["cached"] += bool(r.cached)
    return counts


def _status(flow) -> str:
    if flow.started_at is None:
        return NOT_RUN
    return "ok" if flow.ok else "failed"


# ----- JSON report --------------------------------------------------------------

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _small_plain(value, budget: int = VALUE_MAX_CHARS) -> bool:
    """Cheap pre-check: only dict/list/str/int/float/bool/None (exact types), string
    keys, finite floats, and not obviously bigger than ``budget`` characters."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _PLAIN_SCALARS:
            if t is float and not math.isfinite(v):
                return False
            budget -= len(v) + 2 if t is str else 1
        elif t is list:
            budget -= 2 + len(v)
            stack.extend(v)
        elif t is dict:
            budget -= 2 + len(v)
            for k, item in v.items():
                if type(k) is not str:
                    return False
                budget -= len(k) + 3
                stack.append(item)
        else:
            return False
        if budget < 0:
            return False
    return True


def plain_json_value(value):
    """``(True, value)`` if ``value`` is small JSON that round-trips exactly, else
    ``(False, None)``."""
    import json

    if not _small_plain(value):
        return False, None
    try:
        text = json.dumps(value, allow_nan=False)
        if len(text) > VALUE_MAX_CHARS or json.loads(text) != value:
            return False, None
    except (TypeError, ValueError, RecursionError):
        return False, None
    return True, value


def _preview(value, width: int = 200) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring = width
    r.maxother = width
    try:
        text = r.repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return _text(text, width)


def _value_fields(value) -> dict:
    if value is None:
        return {"value": None}
    ok, v = plain_json_value(value)
    if ok:
        return {"value": v}
    return {"value_type": type(value).__name__, "value_preview": _preview(value)}


def _items_summary(items) -> dict:
    summary = {"total": len(items), "succeeded": 0, "failed": 0, "skipped": 0, "cached": 0,
               "retried": 0}
    failed = []
    for it in items:
        if it is None:
            continue
        summary[it.state.value] += 1
        summary["cached"] += bool(it.cached)
        summary["retried"] += (it.attempts or 0) > 1
        if it.state is not StepState.SUCCEEDED:
            failed.append(it)
    summary["failed_indices"] = [it.index for it in failed[:MAX_LISTED]]
    if len(failed) > MAX_LISTED:
        summary["failed_indices_truncated"] = True
    if failed:
        first = failed[0]
        summary["first_failure"] = {"index": first.index, "attempts": first.attempts,
                                    "error": _error(first.error)}
    return summary


def _task_report(flow, i, td, r, retries) -> dict:
    g = flow.graph
    tasks = g.tasks
    entry = {
        "name": td.name,
        "state": _state(r),
        "detached": bool(g.detached[i]),
        "layer": g.layer[i],
        "depends_on": [tasks[d].name for d in g.deps[i]],
        "attempts": 0,
        "duration_ms": None,
        "cached": False,
        "kept": False,
        "reason": None,
        "error": None,
        "started_at": None,
        "finished_at": None,
    }
    if r is not None:
        entry.update(
            attempts=int(r.attempts or 0),
            duration_ms=_num(r.duration_ms),
            cached=bool(r.cached),
            kept=_is_kept(r, flow),
            reason=None if r.reason is None else _text(r.reason, MESSAGE_MAX_CHARS),
            error=_error(r.error),
            started_at=_num(r.started_at, 6),
            finished_at=_num(r.finished_at, 6),
        )
        if r.step_key is not None:
            entry["step_key"] = _text(r.step_key, 200)
        if r.error is not None and r.traceback:
            tb = _text(r.traceback, 10 ** 9)
            entry["traceback"] = tb if len(tb) <= TRACEBACK_MAX_CHARS else (
                "..." + tb[-(TRACEBACK_MAX_CHARS - 3):])
        if r.items is not None:
            entry["items"] = _items_summary(r.items)
        else:
            entry.update(_value_fields(r.value))
    if retries:
        entry["retries"] = [
            {"attempt": attempt, "item": item, "started_at": _num(s, 6),
             "finished_at": _num(f, 6),
             "duration_ms": _num((f - s) * 1000) if s is not None and f is not None else None,
             "error": _error(why)}
            for item, attempt, s, f, why in retries[:MAX_LISTED]]
    return entry


def build_report(flow) -> dict:
    """A JSON-serialisable dict of the last run of ``flow``.

    ``json.dumps(build_report(flow))`` always works (and is strict JSON). Keys:

    * ``status``: ``"ok"`` (every main task succeeded), ``"failed"`` or
      ``"not run"``; ``ok``; ``interrupted`` (some main task has no result);
      ``started_at``/``finished_at`` (epoch s), ``duration_ms``;
    * ``counts``: tasks, main, detached, succeeded, failed, skipped, not_run,
      cached, retried_attempts; ``detached_failures`` (names); ``plan``;
      ``settings`` (max_workers, fail_fast, schedule, journal_path);
    * ``tasks``: name -> {name, state (succeeded/failed/skipped/not run),
      detached, layer, depends_on, attempts, duration_ms, cached, kept (result
      from before this run: resume() or override), reason, error {type,
      message}, started_at, finished_at, [step_key], [traceback],
      [retries: [{attempt, item, started_at, finished_at, duration_ms, error}]],
      and either ``items`` (for_each: total/succeeded/failed/skipped/cached/
      retried counts, failed_indices, first_failure) or ``value`` (only when
      small plain JSON that round-trips, ``VALUE_MAX_CHARS``) or
      ``value_type`` + ``value_preview``}.
    """
    from . import __version__

    g = flow.graph
    retries = _retries_by_task(flow)
    started, finished = flow.started_at, flow.finished_at
    duration = None
    if started is not None and finished is not None:
        duration = _num((finished - started) * 1000)
    main_missing = any(flow.results.get(g.tasks[i].name) is None for i in range(g.main_count))
    report = {
        "report_version": REPORT_VERSION,
        "flowing_version": __version__,
        "status": _status(flow),
        "ok": bool(flow.ok) if started is not None else False,
        "interrupted": bool(started is not None and main_missing),
        "started_at": _num(started, 6),
        "finished_at": _num(finished, 6),
        "duration_ms": duration,
        "settings": {
            "max_workers": getattr(flow, "max_workers", None),
            "fail_fast": getattr(flow, "fail_fast", None),
            "schedule": getattr(flow, "schedule", None),
            "journal_path": getattr(flow, "journal_path", None),
        },
        "counts": _counts(flow),
        "detached_failures": [r.name for r in flow.detached_failures],
        "plan": [[tn for tn in layer] for layer in g.plan()],
        "tasks": {},
    }
    for i, td in enumerate(g.tasks):
        report["tasks"][td.name] = _task_report(flow, i, td, flow.results.get(td.name),
                                                retries.get(i))
    return report


# ----- Mermaid ------------------------------------------------------------------

_MERMAID_ESCAPES = {'"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "&": "#amp;",
                    "`": "#96;", "\\": "#92;", "|": "#124;"}

# state -> Mermaid classDef body
MERMAID_STYLES = {
    "succeeded": "fill:#dafbe1,stroke:#1a7f37,color:#0b3d1a",
    "failed": "fill:#ffebe9,stroke:#cf222e,color:#67060c,stroke-width:2px",
    "skipped": "fill:#eaeef2,stroke:#8c959f,color:#57606a",
    "cached": "fill:#ddf4ff,stroke:#0969da,color:#0a3069",
    "notrun": "fill:#ffffff,stroke:#d0d7de,color:#8c959f",
    "detached": "stroke-dasharray:5 3",
}


def _mermaid_label(text: str, width: int = 80) -> str:
    text = clip(text, width)
    return "".join(_MERMAID_ESCAPES.get(c, c) for c in text)


def _mermaid_status(r) -> str:
    if r is None:
        return NOT_RUN
    if r.cached:
        return "cached"
    if r.state is StepState.SUCCEEDED:
        bits = [format_duration(r.duration_ms or 0)]
        if r.reason == "override":
            bits = ["override"]
        if (r.attempts or 0) > 1:
            bits.append(f"{r.attempts} attempts")
        return "succeeded " + ", ".join(bits)
    if r.state is StepState.FAILED:
        what = type(r.error).__name__ if r.error is not None else (r.reason or "")
        return "failed" + (f": {what}" if what else "")
    return "skipped"


def to_mermaid(flow, direction: str = "TD") -> str:
    """A Mermaid flowchart of the graph; after a run, nodes are styled by state.

    Node ids are ``t0, t1, ...`` (plan order), so any task name is safe; labels
    are quoted with Mermaid's entity codes for ``" # < > & ` \\ |``.
    """
    direction = str(direction).upper()
    if direction not in ("TD", "TB", "LR", "RL", "BT"):
        raise ValueError(f"direction must be TD, TB, LR, RL or BT, got {direction!r}")
    g = flow.graph
    ran = flow.started_at is not None or bool(flow.results)
    lines = [f"flowchart {direction}"]
    classes: dict[str, list[str]] = {}
    for i, td in enumerate(g.tasks):
        label = _mermaid_label(td.name)
        r = flow.results.get(td.name)
        if ran:
            label += "<br/>" + _mermaid_label(_mermaid_status(r), 60)
        node = f"t{i}"
        if g.detached[i]:
            lines.append(f'    {node}(["{label}"])')  # stadium: a side-effect
            classes.setdefault("detached", []).append(node)
        else:
            lines.append(f'    {node}["{label}"]')
        if ran:
            state = "notrun" if r is None else ("cached" if r.cached else r.state.value)
            classes.setdefault(state, []).append(node)
    for i in range(len(g)):
        arrow = "-.->" if g.detached[i] else "-->"
        for d in g.deps[i]:
            lines.append(f"    t{d} {arrow} t{i}")
    for name, style in MERMAID_STYLES.items():
        if name in classes:
            lines.append(f"    classDef {name} {style}")
    # state classes first: the detached class only adds a dashed outline on top
    for name in MERMAID_STYLES:
        if name in classes:
            lines.append(f"    class {','.join(classes[name])} {name}")
    return "\n".join(lines) + "\n"


# ----- SVG timeline -------------------------------------------------------------

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

_NICE_STEPS = [m * 10 ** e for e in range(-3, 3) for m in (1, 2, 5)]
_NICE_STEPS = sorted(s for s in _NICE_STEPS if s < 60) + [
    60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400]


def _xml(text) -> str:
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


def _fmt_clock(epoch) -> str:
    import time
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _final_start(flow, i, r, fails) -> tuple[float | None, bool]:
    """Start of the last attempt of task ``i``, and whether it is exact.

    Exact when the flow keeps it (``flow.last_attempt_started``, name -> epoch
    s) or when the task had a single attempt. Otherwise estimated from what is
    known: the last attempt took about as long as the failed ones, and it
    started at least half the nominal backoff after the last failure ended.
    """
    if r is None or r.started_at is None:
        return None, True
    task_fails = [f for f in fails if f[0] is None and f[2] is not None and f[3] is not None]
    if not task_fails:
        return r.started_at, True
    known = getattr(flow, "last_attempt_started", None)
    if isinstance(known, dict) and known.get(r.name) is not None:
        return known[r.name], True
    last_end = max(f[3] for f in task_fails)
    end = r.finished_at if r.finished_at is not None else last_end
    td = flow.graph.tasks[i]
    k = max(f[1] for f in task_fails)
    nominal = min(td.retry_backoff_base_ms * 2 ** min(k - 1, 64), td.retry_max_backoff_ms) / 1000
    took = sum(f[3] - f[2] for f in task_fails) / len(task_fails)
    guess = max(end - took, last_end + nominal / 2)
    return min(guess, end), False


class _Svg:
    def __init__(self):
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(self, x, y, s, *, size=12, fill="#24292f", anchor="start", family=SANS,
             weight=None, italic=False, cls=None, title=None) -> None:
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


def timeline_svg(flow, path, *, width: int = 1200) -> str:
    """Write an SVG Gantt chart of the last run of ``flow`` to ``path``; returns the path.

    Rows are tasks in plan order (detached tasks last, under a separator); each
    attempt is a bar coloured by its outcome; failed attempts that were retried
    are amber and the backoff wait before the next attempt is a dashed line;
    ``for_each`` tasks show their span with a tick per item. Hover a bar for
    its timing and error.
    """
    import os

    svg = render_timeline(flow, width=width)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(svg)
    os.replace(tmp, path)
    return path


def render_timeline(flow, *, width: int = 1200) -> str:
    """The SVG text of ``timeline_svg``."""
    g = flow.graph
    tasks = g.tasks
    results = flow.results
    fails_by_task = _retries_by_task(flow)
    n = len(tasks)

    # --- time range
    t0 = flow.started_at
    ends = [flow.finished_at] if flow.finished_at is not None else []
    for i, td in enumerate(tasks):
        r = results.get(td.name)
        if r is not None and r.finished_at is not None and not _is_kept(r, flow):
            ends.append(r.finished_at)
        for f in fails_by_task.get(i, ()):
            if f[3] is not None:
                ends.append(f[3])
    ran = t0 is not None
    t_end = max(ends) if (ran and ends) else (t0 or 0.0)
    span = max(t_end - (t0 or 0.0), 1e-3)

    # --- layout
    longest = max((len(td.name) for td in tasks), default=4)
    name_chars = min(NAME_CHARS, max(longest, 8))
    gutter = int(16 + name_chars * CHAR_W + 20)
    right = 110                      # room for the duration label after a bar
    width = max(int(width), gutter + right + 360)
    plot_w = width - gutter - right
    title_h, axis_h = 46, 26
    top = title_h + axis_h
    has_detached = g.main_count < n
    sep_h = 26 if has_detached else 0
    rows_y: list[float] = []
    y = top
    for i in range(n):
        if i == g.main_count and has_detached:
            y += sep_h
        rows_y.append(y)
        y += ROW_H
    rows_end = y
    legend_y = rows_end + 34
    height = int(legend_y + 34)

    def x_of(t: float) -> float:
        return gutter + (t - t0) / span * plot_w

    svg = _Svg()
    svg.add('<?xml version="1.0" encoding="UTF-8"?>')
    svg.add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{SANS}">')
    svg.add("<style>.bar:hover{stroke:#24292f;stroke-width:1.5}"
            " .row:hover{fill:#eef4ff}</style>")
    svg.add(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>')

    # --- title
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
    if ran and flow.finished_at is not None:
        facts.append(format_duration((flow.finished_at - t0) * 1000))
        facts.append("started " + _fmt_clock(t0))
    head_color = {"ok": "#1a7f37", "failed": "#cf222e"}.get(status, "#57606a")
    svg.text(16, 24, head, size=16, weight="600", fill=head_color)
    svg.text(16 + len(head) * 9.6 + 14, 24, " · ".join(facts), size=13, fill="#57606a")

    # --- row backgrounds and names
    for i, td in enumerate(tasks):
        ry = rows_y[i]
        fill = "#f6f8fa" if i % 2 == 0 else "#ffffff"
        svg.add(f'<rect class="row" x="0" y="{ry:.1f}" width="{width}" height="{ROW_H}" '
                f'fill="{fill}"/>')
        name = td.name
        shown = clip(name, name_chars)
        svg.text(16, ry + ROW_H / 2 + 4, shown, family=MONO, italic=g.detached[i],
                 cls="task-name", fill="#24292f" if not g.detached[i] else "#57606a",
                 title=name if shown != name else None)
    if has_detached:
        sy = rows_y[g.main_count] - sep_h
        label = "detached: run after the main tasks"
        line_x = max(gutter - 8, 16 + len(label) * 6.2 + 12)
        svg.add(f'<line class="separator" x1="{line_x:.1f}" y1="{sy + sep_h / 2:.1f}" '
                f'x2="{width - 8}" y2="{sy + sep_h / 2:.1f}" stroke="#afb8c1" '
                f'stroke-dasharray="4 3"/>')
        svg.text(16, sy + sep_h / 2 + 4, label, size=11, fill="#57606a", italic=True)

    # --- axis and grid
    axis_top = top - 6
    svg.add(f'<line x1="{gutter}" y1="{axis_top}" x2="{gutter + plot_w}" y2="{axis_top}" '
            f'stroke="#57606a"/>')
    svg.add(f'<line x1="{gutter}" y1="{rows_end + 6}" x2="{gutter + plot_w}" '
            f'y2="{rows_end + 6}" stroke="#57606a"/>')
    if ran:
        step = _tick_step(span, max(2, int(plot_w / 90)))
        k = 0
        while k * step <= span * 1.0001 and k < 500:
            t = k * step
            x = gutter + t / span * plot_w
            label = _tick_label(t, step)
            svg.add(f'<line class="grid" x1="{x:.1f}" y1="{axis_top}" x2="{x:.1f}" '
                    f'y2="{rows_end + 6}" stroke="#d8dee4" stroke-width="1"/>')
            svg.add(f'<line x1="{x:.1f}" y1="{axis_top - 4}" x2="{x:.1f}" y2="{axis_top}" '
                    f'stroke="#57606a"/>')
            svg.text(x, axis_top - 8, label, size=11, fill="#57606a", anchor="middle",
                     cls="tick")
            svg.text(x, rows_end + 20, label, size=11, fill="#57606a", anchor="middle")
            k += 1
    else:
        svg.text(gutter + plot_w / 2, top + 14, "not run yet", size=13, fill="#8c959f",
                 anchor="middle")

    # --- bars
    def bar(i, start, end, kind, title, *, attempt=None, state_cls=None, opacity=None,
            min_w=4.0):
        ry = rows_y[i]
        x1 = x_of(max(start, t0))
        x2 = max(x_of(end), x1 + min_w)
        by = ry + (ROW_H - BAR_H) / 2
        attrs = [f'class="bar {state_cls or kind}"', f'x="{x1:.1f}"', f'y="{by:.1f}"',
                 f'width="{x2 - x1:.1f}"', f'height="{BAR_H}"', 'rx="2"',
                 f'fill="{COLORS[kind]}"', f'data-task="{_xml(tasks[i].name)}"',
                 f'data-state="{kind}"']
        if attempt is not None:
            attrs.append(f'data-attempt="{attempt}"')
        if opacity is not None:
            attrs.append(f'fill-opacity="{opacity}"')
        if g.detached[i] and x2 - x1 >= 8:
            attrs.append('stroke="#24292f" stroke-width="1" stroke-dasharray="3 2"')
        svg.add(f"<rect {' '.join(attrs)}><title>{_xml(title)}</title></rect>")
        return x1, x2

    def note(i, x, s, color="#57606a", anchor="start"):
        svg.text(x, rows_y[i] + ROW_H / 2 + 4, s, size=11, fill=color, anchor=anchor)

    def rel(t):
        return format_duration((t - t0) * 1000)

    def why_text(why):
        if why is None:
            return ""
        if isinstance(why, BaseException):
            return "\n" + _text(f"{type(why).__name__}: {_text(why, 600)}", 700)
        return "\n" + _text(why, 600)

    for i, td in enumerate(tasks):
        if not ran:
            break
        r = results.get(td.name)
        name = td.name
        fails = fails_by_task.get(i, [])
        max_attempts = 1 + td.retry
        if r is None:
            note(i, gutter + 4, NOT_RUN, "#8c959f")
            continue
        if _is_kept(r, flow):
            what = "override" if r.reason == "override" else "kept from an earlier run"
            note(i, gutter + 4, f"{what} ({r.state.value})", "#8c959f")
            continue
        state = "cached" if r.cached else r.state.value
        if r.started_at is None or r.finished_at is None:
            note(i, gutter + 4, state, COLORS.get(state, "#57606a"))
            continue
        last_x2 = None
        if r.items is not None:
            # for_each: the task's span, a tick per item, item retries in amber
            x1, last_x2 = bar(i, r.started_at, r.finished_at, state,
                              f"{name}: {len(r.items)} items, {state}, "
                              f"{format_duration(r.duration_ms or 0)} "
                              f"({rel(r.started_at)} to {rel(r.finished_at)})"
                              + why_text(r.error),
                              state_cls=f"{state} span", opacity=0.35)
            ry = rows_y[i]
            shown_items = [it for it in r.items
                           if it is not None and it.finished_at is not None and not it.cached]
            if len(shown_items) > MAX_ITEM_TICKS:  # keep the file small: failures first
                shown_items = [it for it in shown_items
                               if it.state is not StepState.SUCCEEDED][:MAX_ITEM_TICKS]
            for it in shown_items:
                x = x_of(it.finished_at)
                kind = "succeeded" if it.state is StepState.SUCCEEDED else (
                    "failed" if it.state is StepState.FAILED else "skipped")
                svg.add(f'<line class="item {kind}" x1="{x:.1f}" y1="{ry + 4:.1f}" '
                        f'x2="{x:.1f}" y2="{ry + ROW_H - 4:.1f}" stroke="{COLORS[kind]}" '
                        f'stroke-width="2"><title>{_xml(name)}[{it.index}]: {kind}, '
                        f'attempts={it.attempts}{_xml(why_text(it.error))}</title></line>')
            for item, attempt, s, f, why in fails[:MAX_ITEM_TICKS]:
                if item is None or f is None:
                    continue
                x = x_of(f)
                svg.add(f'<line class="item retried" x1="{x:.1f}" y1="{ry + 2:.1f}" '
                        f'x2="{x:.1f}" y2="{ry + 9:.1f}" stroke="{COLORS["retried"]}" '
                        f'stroke-width="2"><title>{_xml(name)}[{item}] attempt {attempt} '
                        f'failed, retried{_xml(why_text(why))}</title></line>')
        elif state in ("skipped", "cached") or (r.attempts == 0 and not fails):
            label = state if state != "failed" else f"failed: {r.reason or 'before the body'}"
            x1, last_x2 = bar(i, r.started_at, r.finished_at, state,
                              f"{name}: {label} at {rel(r.started_at)}"
                              + ("" if state == "skipped" else why_text(r.error))
                              + (f"\n{_text(r.reason, 600)}" if state == "skipped" and r.reason
                                 else ""),
                              attempt=0 if state != "cached" else None, min_w=4)
            last_x2 = x1 + 4
        else:
            task_fails = sorted((f for f in fails if f[0] is None), key=lambda f: f[1])
            prev_end = None
            for item, attempt, s, f, why in task_fails:
                if s is None or f is None:
                    continue
                if prev_end is not None:
                    _wait(svg, i, x_of(prev_end), x_of(s), rows_y)
                bar(i, s, f, "retried",
                    f"{name}: attempt {attempt}/{max_attempts} failed after "
                    f"{format_duration((f - s) * 1000)} ({rel(s)} to {rel(f)}), retried"
                    + why_text(why), attempt=attempt)
                prev_end = f
            final_start, exact = _final_start(flow, i, r, fails)
            if prev_end is not None:
                _wait(svg, i, x_of(prev_end), x_of(final_start), rows_y)
            attempt = r.attempts or (len(task_fails) + 1)
            took = (r.finished_at - final_start) * 1000
            x1, last_x2 = bar(i, final_start, r.finished_at, state,
                              f"{name}: attempt {attempt}/{max_attempts} {state} after "
                              f"{format_duration(took)} ({rel(final_start)} to "
                              f"{rel(r.finished_at)})"
                              + ("" if exact else " (start estimated)") + why_text(r.error),
                              attempt=attempt)
        # duration / outcome label after the last bar
        label = {"skipped": "skipped", "cached": "cached"}.get(state)
        if label is None:
            label = format_duration(r.duration_ms or 0)
            if (r.attempts or 0) > 1:
                label += f" ×{r.attempts}"
            if r.items is not None:
                bad = sum(1 for it in r.items if it is not None
                          and it.state is not StepState.SUCCEEDED)
                label += f" · {len(r.items)} items" + (f", {bad} failed" if bad else "")
        color = COLORS["failed"] if state == "failed" else "#57606a"
        if last_x2 + 6 + len(label) * 6.4 <= width - 4:
            note(i, last_x2 + 6, label, color)
        else:
            note(i, x_of(max(r.started_at, t0)) - 6, label, color, anchor="end")

    # --- legend
    lx = 16
    ly = legend_y
    svg.text(lx, ly + 4, "legend:", size=11, fill="#57606a")
    lx += 56
    for kind, label in (("succeeded", "succeeded"), ("failed", "failed"),
                        ("retried", "failed attempt, retried"), ("skipped", "skipped"),
                        ("cached", "cached (journal)")):
        svg.add(f'<rect class="legend {kind}" x="{lx}" y="{ly - 6}" width="14" height="12" '
                f'rx="2" fill="{COLORS[kind]}"/>')
        svg.text(lx + 19, ly + 4, label, size=11, fill="#24292f")
        lx += 19 + len(label) * 6.4 + 18
    svg.add(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="#8c959f" '
            f'stroke-width="1.5" stroke-dasharray="3 2"/>')
    svg.text(lx + 27, ly + 4, "backoff wait", size=11, fill="#24292f")
    lx += 27 + 12 * 6.4 + 18
    svg.add(f'<rect x="{lx}" y="{ly - 6}" width="14" height="12" rx="2" fill="#ffffff" '
            f'stroke="#24292f" stroke-dasharray="3 2"/>')
    svg.text(lx + 19, ly + 4, "detached", size=11, fill="#24292f", italic=True)
    lx += 19 + 8 * 6.4 + 18
    svg.add(f'<line x1="{lx + 4}" y1="{ly - 6}" x2="{lx + 4}" y2="{ly + 6}" '
            f'stroke="{COLORS["succeeded"]}" stroke-width="2"/>')
    svg.text(lx + 12, ly + 4, "for_each item done", size=11, fill="#24292f")
    svg.add("</svg>")
    return "\n".join(svg.parts) + "\n"


def _wait(svg, i, x1, x2, rows_y) -> None:
    """A dashed line for the backoff wait between two attempts."""
    if x2 - x1 < 2:
        return
    y = rows_y[i] + ROW_H / 2
    svg.add(f'<line class="wait" x1="{x1:.1f}" y1="{y:.1f}" x2="{x2:.1f}" y2="{y:.1f}" '
            f'stroke="#8c959f" stroke-width="1.5" stroke-dasharray="3 2"/>')
