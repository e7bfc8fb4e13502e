"""flow.report(), flow.to_mermaid(), flow.timeline_svg() (spec section 7)."""

import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import pytest

from flowing import Flow, task
from flowing.observe import mermaid as mm
from flowing.observe import report as rp
from flowing.observe import timeline as tl

SVG = "{http://www.w3.org/2000/svg}"


def mixed_flow():
    """a -> flaky (retried once) -> join; a -> bad (fails) -> after_bad (skipped);
    a -> items -> per_item (for_each, item 2 fails); join -> side (detached)."""
    calls = {"flaky": 0}

    @task
    def a():
        return {"n": 3}

    @task(depends_on=[a], retry=2, retry_backoff_base_ms=1)
    def flaky(a):
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("reset <by> peer & co")
        return [1, 2, 3]

    @task(depends_on=[a])
    def bad(a):
        raise ValueError("bad input\nmore detail")

    @task(depends_on=[bad])
    def after_bad(bad):
        return 0

    @task(depends_on=[a])
    def items(a):
        return list(range(a["n"]))

    @task(depends_on=[items], for_each="items")
    def per_item(items):
        if items == 2:
            raise KeyError(items)
        return items * 10

    @task(depends_on=[flaky])
    def join(flaky):
        return sum(flaky)

    @task(depends_on=[join], detached=True)
    def side(join):
        return "sent"

    return [join, after_bad, per_item]


# ----- report -------------------------------------------------------------------

def test_report_before_a_run():
    flow = Flow(*mixed_flow(), log=False)
    rep = flow.report()
    json.dumps(rep, allow_nan=False)
    assert rep["status"] == "not run" and rep["ok"] is False
    assert rep["started_at"] is None and rep["duration_ms"] is None
    assert rep["counts"]["not_run"] == 8 and rep["counts"]["tasks"] == 8
    assert rep["counts"]["detached"] == 1
    assert all(t["state"] == "not run" for t in rep["tasks"].values())


def test_report_after_a_run():
    flow = Flow(*mixed_flow(), fail_fast=False, log=False)
    flow.run()
    rep = json.loads(json.dumps(flow.report(), allow_nan=False))
    assert rep["status"] == "failed" and rep["ok"] is False and rep["interrupted"] is False
    assert rep["duration_ms"] >= 0 and rep["finished_at"] >= rep["started_at"]
    counts = rep["counts"]
    assert (counts["succeeded"], counts["failed"], counts["skipped"]) == (5, 2, 1)
    assert counts["retried_attempts"] == 1
    tasks = rep["tasks"]
    assert list(tasks) == [name for layer in flow.plan() for name in layer]

    a = tasks["a"]
    assert a["state"] == "succeeded" and a["attempts"] == 1 and a["value"] == {"n": 3}
    assert a["cached"] is False and a["detached"] is False and a["error"] is None
    assert a["started_at"] <= a["finished_at"] and a["duration_ms"] >= 0

    flaky = tasks["flaky"]
    assert flaky["attempts"] == 2 and flaky["value"] == [1, 2, 3]
    assert flaky["retries"][0]["attempt"] == 1
    assert flaky["retries"][0]["error"] == {"type": "ConnectionError",
                                            "message": "reset <by> peer & co"}

    bad = tasks["bad"]
    assert bad["state"] == "failed"
    assert bad["error"] == {"type": "ValueError", "message": "bad input\nmore detail"}
    assert "Traceback" in bad["traceback"]
    assert tasks["after_bad"]["state"] == "skipped"
    assert tasks["after_bad"]["reason"] == "dependency 'bad' failed"

    per = tasks["per_item"]
    assert per["state"] == "failed" and per["error"]["type"] == "ItemsFailed"
    assert per["items"]["total"] == 3 and per["items"]["succeeded"] == 2
    assert per["items"]["failed"] == 1 and per["items"]["failed_indices"] == [2]
    assert per["items"]["first_failure"]["error"]["type"] == "KeyError"

    side = tasks["side"]
    assert side["detached"] is True and side["state"] == "succeeded" and side["value"] == "sent"
    assert rep["detached_failures"] == []


def test_report_ok_status():
    @task
    def one():
        return 1

    flow = Flow(one, log=False)
    flow.run()
    rep = flow.report()
    assert rep["status"] == "ok" and rep["ok"] is True
    assert rep["counts"]["succeeded"] == 1


class Weird:
    def __repr__(self):
        raise RuntimeError("no repr for you")


def test_report_survives_any_value():
    values = {
        "a_set": {1, 2, 3},
        "an_object": object(),
        "an_exception": ValueError("returned, not raised"),
        "some_bytes": b"\x00\xff binary",
        "a_nan": float("nan"),
        "an_inf": float("inf"),
        "int_keys": {1: "one", 2: "two"},
        "a_tuple": (1, 2),
        "nested_nan": {"x": [1.0, float("nan")]},
        "big_list": list(range(10_000)),
        "weird": Weird(),
        "self_ref": None,
        "plain": {"ok": True, "items": [1, 2.5, "three", None]},
        "unicode": "héllo \u2603",
    }
    loop = []
    loop.append(loop)
    values["self_ref"] = loop

    made = []
    for name, value in values.items():
        made.append(task(name=name)(lambda value=value: value))
    flow = Flow(*made, log=False)
    flow.run()
    assert flow.ok
    rep = flow.report()
    text = json.dumps(rep, allow_nan=False)  # strict JSON, always
    assert json.loads(text)["status"] == "ok"
    tasks = rep["tasks"]
    assert tasks["plain"]["value"] == values["plain"]
    assert tasks["unicode"]["value"] == values["unicode"]
    for name in values:
        if name in ("plain", "unicode"):
            continue
        assert "value" not in tasks[name], name
        assert tasks[name]["value_type"] == type(values[name]).__name__
        assert isinstance(tasks[name]["value_preview"], str)
        assert len(tasks[name]["value_preview"]) <= 200
    assert tasks["a_set"]["value_preview"] == "{1, 2, 3}"


def test_small_value_rule():
    assert rp.plain_json_value({"a": [1, 2]}) == (True, {"a": [1, 2]})
    assert rp.plain_json_value("x" * 990)[0]
    assert not rp.plain_json_value("x" * 1001)[0]
    assert not rp.plain_json_value((1, 2))[0]  # does not round-trip
    assert not rp.plain_json_value({1: 2})[0]
    assert not rp.plain_json_value(float("nan"))[0]
    assert not rp.plain_json_value([[[[]]]] * 1000)[0]


def test_report_error_with_unprintable_message():
    class Mute(Exception):
        def __str__(self):
            raise RuntimeError("cannot")

    @task
    def mute():
        raise Mute()

    flow = Flow(mute, log=False)
    flow.run()
    rep = flow.report()
    json.dumps(rep, allow_nan=False)
    assert rep["tasks"]["mute"]["error"]["type"] == "Mute"


def test_report_after_resume_marks_kept_results():
    state = {"fail": True}

    @task
    def first():
        return 1

    @task(depends_on=[first])
    def second(first):
        if state["fail"]:
            raise RuntimeError("not yet")
        return 2

    flow = Flow(second, log=False)
    flow.run()
    state["fail"] = False
    flow.resume()
    rep = flow.report()
    assert rep["status"] == "ok"
    assert rep["tasks"]["first"]["kept"] is True
    assert rep["tasks"]["second"]["kept"] is False
    assert rep["tasks"]["second"]["value"] == 2


# ----- mermaid ------------------------------------------------------------------

NODE = re.compile(r'^    (t\d+)(\["[^"\n]*"\]|\(\["[^"\n]*"\]\))$')
EDGE = re.compile(r"^    (t\d+) (-->|-\.->) (t\d+)$")


def parse_mermaid(text):
    lines = text.splitlines()
    nodes, edges, classes, defs = {}, [], {}, {}
    for line in lines[1:]:
        if m := NODE.match(line):
            nodes[m.group(1)] = m.group(2)
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(2), m.group(3)))
        elif line.startswith("    classDef "):
            _, name, style = line.strip().split(" ", 2)
            defs[name] = style
        elif line.startswith("    class "):
            _, ids, name = line.strip().split(" ")
            for i in ids.split(","):
                classes.setdefault(i, set()).add(name)
        else:
            raise AssertionError(f"unexpected mermaid line: {line!r}")
    return lines[0], nodes, edges, classes, defs


def test_mermaid_graph_before_and_after_a_run():
    flow = Flow(*mixed_flow(), fail_fast=False, log=False)
    names = [td.name for td in flow.graph.tasks]
    ids = {name: f"t{k}" for k, name in enumerate(names)}

    head, nodes, edges, classes, defs = parse_mermaid(flow.to_mermaid())
    assert head == "flowchart TD"
    assert set(nodes) == set(ids.values())
    assert (ids["a"], "-->", ids["flaky"]) in edges
    assert (ids["join"], "-.->", ids["side"]) in edges  # into a detached task: dashed
    assert sum(1 for e in edges if e[1] == "-.->") == 1
    assert len(edges) == sum(len(td.depends_on) for td in flow.graph.tasks)
    # before a run: no state styling, detached still marked
    assert set(defs) == {"detached"} and classes == {ids["side"]: {"detached"}}

    flow.run()
    _, nodes, edges, classes, defs = parse_mermaid(flow.to_mermaid())
    assert classes[ids["a"]] == {"succeeded"}
    assert classes[ids["bad"]] == {"failed"}
    assert classes[ids["after_bad"]] == {"skipped"}
    assert classes[ids["side"]] == {"succeeded", "detached"}
    assert "fill:" in defs["succeeded"] and "fill:" in defs["failed"]
    assert "stroke-dasharray" in defs["detached"]
    assert "failed" in nodes[ids["bad"]] and "2 attempts" in nodes[ids["flaky"]]


def test_mermaid_cached_and_lr(tmp_path):
    @task
    def one():
        return 1

    path = tmp_path / "j.jsonl"
    Flow(one, journal_path=path, log=False).run()
    flow = Flow(one, journal_path=path, log=False)
    flow.run()
    text = mm.to_mermaid(flow, direction="LR")
    head, nodes, edges, classes, defs = parse_mermaid(text)
    assert head == "flowchart LR"
    assert classes == {"t0": {"cached"}} and "fill:" in defs["cached"]
    with pytest.raises(ValueError):
        mm.to_mermaid(flow, direction="sideways")


def test_mermaid_node_ids_safe_for_any_name():
    odd = ['quote"d', "semi;colon", "end", "a-->b", "[br]", "new\nline", "#hash",
           "<b>tag</b>", "pipe|x", "back`tick", "graph TD", "x" * 300]
    made = [task(name=n)(lambda: 1) for n in odd]

    @task(depends_on=made)
    def last(**kw):
        return 1

    flow = Flow(last, log=False)
    flow.run()
    head, nodes, edges, classes, defs = parse_mermaid(flow.to_mermaid())
    assert len(nodes) == len(odd) + 1
    for label in nodes.values():
        inner = label.strip('[]()"')
        for bad in ('"', "\n", "`", "|", "<b>"):
            assert bad not in inner
    assert "#quot;" in nodes["t0"] or any("#quot;" in v for v in nodes.values())


# ----- SVG timeline -------------------------------------------------------------

def bars(root):
    out = {}
    for rect in root.iter(SVG + "rect"):
        if "bar" in rect.get("class", "").split():
            out.setdefault(rect.get("data-task"), []).append(rect)
    return out


def test_timeline_svg_bars(tmp_path):
    flow = Flow(*mixed_flow(), fail_fast=False, log=False)
    flow.run()
    path = tmp_path / "run.svg"
    assert flow.timeline_svg(path) == str(path)
    root = ET.parse(path).getroot()
    assert root.tag == SVG + "svg"
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0
    by_task = bars(root)
    colors = tl.COLORS

    def states(name):
        return [r.get("data-state") for r in by_task[name]]

    assert states("a") == ["succeeded"]
    # the retried attempt is a bar of its own, before the final one
    assert states("flaky") == ["retried", "succeeded"]
    first, final = by_task["flaky"]
    assert [first.get("data-attempt"), final.get("data-attempt")] == ["1", "2"]
    assert float(first.get("x")) < float(final.get("x"))
    assert first.get("fill") == colors["retried"] and final.get("fill") == colors["succeeded"]
    assert states("bad") == ["failed"] and by_task["bad"][0].get("fill") == colors["failed"]
    assert states("after_bad") == ["skipped"]
    assert by_task["after_bad"][0].get("fill") == colors["skipped"]
    # error text in the tooltip
    tip = by_task["bad"][0].find(SVG + "title").text
    assert "ValueError: bad input" in tip
    # for_each: the span plus a tick per item, the failed one red
    assert states("per_item") == ["failed"]
    ticks = [ln for ln in root.iter(SVG + "line") if "item" in ln.get("class", "").split()]
    assert len(ticks) == 3
    assert sorted(t.get("stroke") for t in ticks) == sorted(
        [colors["succeeded"]] * 2 + [colors["failed"]])
    # detached: under a separator, name in italics, bar outlined
    side_bar = by_task["side"][0]
    assert side_bar.get("data-state") == "succeeded"
    names = {t.text or t.find(SVG + "title").tail: t for t in root.iter(SVG + "text")
             if "task-name" in t.get("class", "")}
    assert names["side"].get("font-style") == "italic"
    assert names["a"].get("font-style") is None
    assert any("separator" in ln.get("class", "") for ln in root.iter(SVG + "line"))
    # axis ticks and a legend
    assert len([t for t in root.iter(SVG + "text") if t.get("class") == "tick"]) >= 2
    assert any("legend" in r.get("class", "") for r in root.iter(SVG + "rect"))
    # bars stay inside the chart
    width = float(root.get("width"))
    for rects in by_task.values():
        for r in rects:
            assert 0 <= float(r.get("x")) and float(r.get("x")) + float(r.get("width")) <= width


def test_timeline_retries_exhausted_and_rows_in_plan_order(tmp_path):
    @task(retry=2, retry_backoff_base_ms=1)
    def always_fails():
        raise TimeoutError("slow service")

    @task
    def fine():
        return 1

    flow = Flow(always_fails, fine, fail_fast=False, log=False)
    flow.run()
    root = ET.fromstring(tl.render_timeline(flow))
    by_task = bars(root)
    assert [r.get("data-state") for r in by_task["always_fails"]] == [
        "retried", "retried", "failed"]
    assert [r.get("data-attempt") for r in by_task["always_fails"]] == ["1", "2", "3"]
    waits = [ln for ln in root.iter(SVG + "line") if ln.get("class") == "wait"]
    assert len(waits) <= 2
    ys = {name: float(rs[0].get("y")) for name, rs in by_task.items()}
    order = [td.name for td in flow.graph.tasks]
    assert sorted(ys, key=ys.get) == order


def test_timeline_long_names_and_odd_text(tmp_path):
    long_name = "stage_" + "x" * 80 + "_<&>\"'"

    @task(name=long_name)
    def first():
        raise ValueError("bad <xml> & \"quotes\" \x00 and \x1b escapes")

    flow = Flow(first, log=False)
    flow.run()
    path = flow.timeline_svg(tmp_path / "odd.svg")
    root = ET.parse(path).getroot()  # well-formed whatever the names and errors
    label = next(t for t in root.iter(SVG + "text") if "task-name" in t.get("class", ""))
    title = label.find(SVG + "title")
    assert title is not None and title.text == long_name  # full name in the tooltip
    shown = title.tail
    assert shown.endswith("...") and len(shown) <= tl.NAME_CHARS
    tip = bars(root)[long_name][0].find(SVG + "title").text
    assert "ValueError: bad <xml> & \"quotes\"" in tip


def test_timeline_before_a_run_and_not_run_tasks(tmp_path):
    @task
    def one():
        return 1

    flow = Flow(one, log=False)
    root = ET.fromstring(tl.render_timeline(flow))
    assert bars(root) == {}
    assert any("not run yet" in (t.text or "") for t in root.iter(SVG + "text"))


def test_timeline_cached_tasks(tmp_path):
    @task
    def one():
        return 1

    @task(depends_on=[one])
    def two(one):
        return 2

    path = tmp_path / "j.jsonl"
    Flow(two, journal_path=path, log=False).run()
    flow = Flow(two, journal_path=path, log=False)
    flow.run()
    by_task = bars(ET.fromstring(tl.render_timeline(flow)))
    assert [r.get("fill") for r in by_task["one"]] == [tl.COLORS["cached"]]


def test_tick_steps():
    assert tl._tick_step(1.0, 10) == 0.1
    assert tl._tick_step(7.3, 8) == 1
    assert tl._tick_step(3600 * 5, 8) == 3600
    assert tl._tick_label(0.25, 0.05) == "250ms"
    assert tl._tick_label(90, 30) == "90s"
    assert tl._tick_label(150, 60) == "2m30s"


# ----- in a real browser --------------------------------------------------------

def png_pixels(data):
    """(width, height, rows of RGB(A) tuples) of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = header[:4]
    assert depth == 8 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def count_color(image, hex_color, tolerance=12):
    width, height, bpp, rows = image
    target = tuple(int(hex_color[k:k + 2], 16) for k in (1, 3, 5))
    n = 0
    for row in rows:
        for x in range(0, width * bpp, bpp):
            if all(abs(row[x + k] - target[k]) <= tolerance for k in range(3)):
                n += 1
    return n


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_timeline_renders_in_chromium(tmp_path):
    flow = Flow(*mixed_flow(), fail_fast=False, log=False)
    flow.run()
    svg = flow.timeline_svg(tmp_path / "run.svg")
    png = tmp_path / "run.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={png}", "--window-size=1200,500", f"file://{svg}"],
        capture_output=True, timeout=120)
    assert png.exists(), proc.stderr.decode(errors="replace")[-2000:]
    image = png_pixels(png.read_bytes())
    assert image[:2] == (1200, 500)
    # the bars are really painted, in their colours
    for kind in ("succeeded", "failed", "retried"):
        assert count_color(image, tl.COLORS[kind]) > 20, kind


# ----- hostile values and errors: report, flowchart and timeline never raise -----------

from hostile import HostileError, NoBoolNoEq, NonStrRepr, RaisingRepr, StrNonStr, StrRaises  # noqa: E402

from flowing.results import ItemResult, StepResult, StepState  # noqa: E402


def _hostile_flow():
    """Tasks, then results built by hand holding every hostile thing at once."""
    names = ["plain", "bad_value", "bad_error", "odd_error", "items", "side"]
    made = {n: task(name=n)(lambda: 1) for n in names[:-1]}
    task(name="side", depends_on=[made["plain"]], detached=True)(lambda plain: 1)
    flow = Flow(*made.values(), log=False)
    t = 1_700_000_000.0
    S, F = StepState.SUCCEEDED, StepState.FAILED
    items = [ItemResult(0, S, RaisingRepr(), None, 1, True, item=RaisingRepr()),
             ItemResult(1, F, None, StrRaises(), 3, False, "tb", t + 0.1, t + 0.2,
                        item=NoBoolNoEq()),
             ItemResult(2, F, None, HostileError(), 1, False, None, t + 0.1, t + 0.3,
                        item="x" * 100_000),
             None]
    flow.results = {
        "plain": StepResult("plain", S, {"ok": 1}, started_at=t, finished_at=t + 0.1),
        "bad_value": StepResult("bad_value", S, NonStrRepr(), started_at=t,
                                finished_at=t + 0.2, reason=NoBoolNoEq()),
        "bad_error": StepResult("bad_error", F, RaisingRepr(), StrRaises(), attempts=2,
                                traceback=RaisingRepr(), started_at=t, finished_at=t + 0.3,
                                step_key=NonStrRepr()),
        "odd_error": StepResult("odd_error", F, None, HostileError(), attempts=1,
                                reason=NoBoolNoEq(), started_at=t, finished_at=float("nan")),
        "items": StepResult("items", F, [RaisingRepr()], StrNonStr(), attempts=3,
                            started_at=t + 0.05, finished_at=t + 0.35, items=items),
        "side": StepResult("side", F, None, StrNonStr(), attempts=1, started_at=t + 0.4,
                           finished_at=t + 0.5),
    }
    flow.retries = [(flow.graph.index_of("items"), 1, 1, t + 0.1, t + 0.15, StrRaises()),
                    (flow.graph.index_of("bad_error"), None, 1, t, t + 0.1, HostileError()),
                    ("junk",)]
    flow.started_at, flow.finished_at = t, t + 0.5
    return flow


def test_report_survives_hostile_values_and_errors(tmp_path):
    flow = _hostile_flow()
    rep = flow.report()
    text = json.dumps(rep, allow_nan=False)
    assert "\\ud800" not in text
    tasks = rep["tasks"]
    assert tasks["bad_value"]["value_preview"] == "<unprintable NonStrRepr>"
    assert tasks["bad_value"]["reason"] == "NoBoolNoEq()"
    assert tasks["bad_error"]["error"] == {"type": "StrRaises",
                                           "message": "<unprintable StrRaises>"}
    assert tasks["bad_error"]["step_key"] == "<unprintable NonStrRepr>"
    assert len(tasks["odd_error"]["error"]["message"]) <= rp.MESSAGE_MAX_CHARS
    assert tasks["odd_error"]["finished_at"] is None  # NaN is no JSON
    items = tasks["items"]["items"]
    assert (items["total"], items["succeeded"], items["failed"], items["not_run"],
            items["cached"]) == (4, 1, 2, 1, 1)
    assert items["failed_indices"] == [1, 2]
    first, second = items["failed_items"]
    assert first["index"] == 1 and first["item"] == "NoBoolNoEq()"
    assert first["label"] == "item 1 (NoBoolNoEq())" and first["attempts"] == 3
    assert first["error"] == {"type": "StrRaises", "message": "<unprintable StrRaises>"}
    assert second["item"].startswith("'xxx") and len(second["item"]) <= rp.ITEM_REPR_CHARS
    assert items["first_failure"] == first
    assert items["line"].startswith("4 items: 1 ok (1 cached), 2 failed, 1 not run: item 1")
    retries = tasks["bad_error"]["retries"]
    assert retries[0]["error"]["type"] == "HostileError"

    # the flowchart and the timeline too
    head, nodes, edges, classes, defs = parse_mermaid(flow.to_mermaid())
    assert "2 of 4 items" in nodes["t4"]
    root = ET.parse(flow.timeline_svg(tmp_path / "hostile.svg")).getroot()
    titles = [t.text or "" for t in root.iter(SVG + "title")]
    assert any(t.startswith("items[1] (NoBoolNoEq()): failed, attempts=3") for t in titles)
    assert any(t.startswith("items[1] (NoBoolNoEq()) attempt 1 failed, retried")
               for t in titles)


def test_report_settings_are_plain_json(tmp_path):
    @task
    def one():
        return 1

    flow = Flow(one, log=False)
    flow.journal_path = tmp_path / "as_a_path.jsonl"  # whatever a caller may have set
    flow.schedule = RaisingRepr()
    rep = flow.report()
    json.dumps(rep, allow_nan=False)
    assert rep["settings"]["journal_path"] == str(tmp_path / "as_a_path.jsonl")
    assert rep["settings"]["schedule"] == "<unprintable RaisingRepr>"


def test_report_for_each_names_failed_items():
    @task
    def files():
        return ["a.csv", "b.csv", "c.csv", "d.csv"]

    @task(depends_on=[files], for_each="files")
    def load(files):
        if files in ("b.csv", "d.csv"):
            raise KeyError(files)
        return len(files)

    flow = Flow(load, log=False)
    flow.run()
    items = flow.report()["tasks"]["load"]["items"]
    assert (items["total"], items["succeeded"], items["failed"]) == (4, 2, 2)
    assert items["failed_indices"] == [1, 3]
    assert [(f["index"], f["item"], f["label"]) for f in items["failed_items"]] == [
        (1, "'b.csv'", "item 1 ('b.csv')"), (3, "'d.csv'", "item 3 ('d.csv')")]
    assert items["failed_items"][0]["error"] == {"type": "KeyError", "message": "'b.csv'"}
    assert items["line"] == ("4 items: 2 ok, 2 failed: item 1 ('b.csv'): KeyError: 'b.csv'; "
                             "item 3 ('d.csv'): KeyError: 'd.csv'")


def test_report_says_why_a_journaled_task_ran(tmp_path):
    try:
        listing = task(name="listing", cache=False)(lambda: ["a"])
    except TypeError:
        pytest.skip("@task(cache=...) is not there yet")

    @task(depends_on=[listing])
    def count(listing):
        return len(listing)

    path = tmp_path / "j.jsonl"
    Flow(count, journal_path=path, log=False).run()
    flow = Flow(count, journal_path=path, log=False)
    flow.run()
    tasks = flow.report()["tasks"]
    assert tasks["listing"]["cached"] is False and "cache=False" in tasks["listing"]["why"]
    assert tasks["count"]["cached"] is True and "why" not in tasks["count"]


# ----- the timeline is layout (plain data) + drawing ---------------------------------

def test_timeline_layout_is_plain_data():
    flow = Flow(*mixed_flow(), fail_fast=False, log=False)
    flow.run()
    layout = tl.layout_timeline(flow)
    assert tl.draw_timeline(layout) == tl.render_timeline(flow)
    names = [td.name for td in flow.graph.tasks]
    assert [row.name for row in layout.rows] == names
    assert [row.y for row in layout.rows] == sorted(row.y for row in layout.rows)
    assert layout.separator is not None and layout.separator.y < layout.rows[-1].y
    bars = [m for m in layout.marks if isinstance(m, tl.Bar)]
    flaky = [b for b in bars if b.task == "flaky"]
    assert [b.kind for b in flaky] == ["retried", "succeeded"]
    assert [b.attempt for b in flaky] == [1, 2]
    assert all(layout.gutter <= b.x1 <= b.x2 <= layout.width for b in bars)
    ticks = [m for m in layout.marks if isinstance(m, tl.Tick)]
    assert sorted(t.kind for t in ticks) == ["failed", "succeeded", "succeeded"]
    assert any(t.title.startswith("per_item[2] (2): failed") for t in ticks)
    assert [t.x for t in layout.ticks] == sorted(t.x for t in layout.ticks)
    assert layout.ticks[0].label == "0" and layout.ran


def test_timeline_layout_before_a_run():
    @task
    def one():
        return 1

    layout = tl.layout_timeline(Flow(one, log=False))
    assert not layout.ran and layout.marks == [] and layout.ticks == []
    assert [row.name for row in layout.rows] == ["one"]
    assert layout.title == "flowing run: NOT RUN"
