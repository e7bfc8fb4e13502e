"""Seeing a run: a Mermaid flowchart (``to_mermaid``).

``to_mermaid(flow)`` -> ``flowchart TD`` text: one node per task, edges
``dep --> task`` (dashed into detached tasks), and after a run the nodes are
coloured by state. It reads only ``runview.RunView`` and never raises
because of what tasks returned or raised (see ``runview``).
"""

from __future__ import annotations

from typing import Any

from ..results import StepState
from ..text import clip, format_duration, safe_str, type_name
from .runview import NOT_RUN, RunView, _bad_items, _int, _is_override

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


def _mermaid_label(text: object, width: int = 80) -> str:
    return "".join(_MERMAID_ESCAPES.get(c, c) for c in clip(text, width))


def _mermaid_status(r: Any) -> str:
    if r is None:
        return NOT_RUN
    if r.cached is True:
        return "cached"
    items = r.items
    if r.state is StepState.SUCCEEDED:
        bits = [format_duration(r.duration_ms or 0)]
        if _is_override(r):
            bits = ["override"]
        if (_int(r.attempts) or 0) > 1:
            bits.append(f"{r.attempts} attempts")
        if items is not None:
            bad = _bad_items(items)
            bits.append(f"{len(items)} items" + (f", {bad} failed" if bad else ""))
        return "succeeded " + ", ".join(bits)
    if r.state is StepState.FAILED:
        if items is not None and r.error is not None:
            what = f"{_bad_items(items)} of {len(items)} items"
        elif r.error is not None:
            what = type_name(r.error)
        else:
            what = safe_str(r.reason, 60) if r.reason is not None else ""
        return "failed" + (f": {what}" if what else "")
    return "skipped"


def to_mermaid(flow: RunView, direction: str = "TD") -> str:
    """A Mermaid flowchart of the graph; after a run, nodes are styled by state.

    Node ids are ``t0, t1, ...`` (plan order), so any task name is safe; labels
    are quoted with Mermaid's entity codes for ``" # < > & ` \\ |``.
    """
    direction = safe_str(direction, 10).upper()
    if direction not in ("TD", "TB", "LR", "RL", "BT"):
        raise ValueError(f"direction must be TD, TB, LR, RL or BT, got {direction!r}")
    g = flow.graph
    ran = flow.started_at is not None or len(flow.results) > 0
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
            state = "notrun" if r is None else ("cached" if r.cached is True
                                                else r.state.value)
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
