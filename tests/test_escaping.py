"""Names and messages never drive a terminal: a task name holding a newline keeps
summary() at one line per task, and log lines escape control and bidi characters
(U+202E) exactly as the command line does (one escaping function)."""

import logging

from helpers import ListHandler
from hypothesis import given
from hypothesis import strategies as st

from flowing import Flow, task
from flowing.text import printable

EVIL = ["two\nlines", "tab\there", "rlo\u202eexe.txt", "esc\x1b[31mred", "zw\u200bsp"]


def _flow(log):
    tasks = []
    for i, name in enumerate(EVIL):
        def body(i=i):
            if i == 2:
                raise ValueError("bad \u202e value\nsecond line")
            return i
        tasks.append(task(body, name=name))
    return Flow(*tasks, log=log, fail_fast=False)


def test_summary_is_one_line_per_task_with_names_escaped():
    flow = _flow(False)
    flow.run()
    lines = flow.summary().splitlines()
    assert len(lines) == len(EVIL) + 1, lines
    text = flow.summary()
    for raw in ("\u202e", "\x1b", "\t", "\u200b"):
        assert raw not in text
    assert "two\\nlines" in text and "rlo\\u202eexe.txt" in text


def test_log_lines_escape_control_and_bidi_characters():
    handler = ListHandler()
    log = logging.getLogger("test-escaping")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    _flow(log).run()
    lines = handler.messages
    assert any("rlo\\u202eexe.txt" in line for line in lines), lines
    for line in lines:
        assert line.isprintable(), repr(line)


def test_one_escaping_function_for_the_cli_and_the_log():
    from flowing import cli

    assert cli._printable is printable
    assert printable("a\u202eb\nc") == "a\\u202eb\\nc"
    assert printable("x" * 50, 10) == "xxxxxxx..."


@given(st.text(), st.one_of(st.none(), st.integers(min_value=3, max_value=80)))
def test_printable_output_is_one_printable_line_and_stable(text, width):
    out = printable(text, width)
    assert out.isprintable() and "\n" not in out
    if width is not None:
        assert len(out) <= width
    else:
        assert printable(out) == out  # escaping twice changes nothing more
        if text.isprintable():
            assert out == text
