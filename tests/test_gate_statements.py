"""Every statement SKILL.md and docs/reference.md make about gates and inputs, exercised.

``STATEMENTS`` maps each such sentence (as the docs write it) to the test that
exercises it; ``test_every_statement_about_gates_and_inputs_is_exercised``
reads the docs again, so a sentence added, changed or removed there without
its test here fails the suite. The truth is the code's: gates receive every
dependency and the flow inputs they name (graph.check_gates).
"""

from __future__ import annotations

import os
import re

import pytest

from flowing import Flow, StepState, task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("SKILL.md", os.path.join("docs", "reference.md"))

STATEMENTS = {
    "`when`/`validate` get every dependency (`when=lambda answers, **_: ...`) and the inputs "
    "they name.": "test_gates_get_every_dependency_and_the_inputs_they_name",
    "A task's [step key](#step-keys) covers the inputs its body and gates receive, by content, "
    "so one script run for several inputs keeps separate journal entries.":
        "test_the_step_key_covers_the_inputs_a_gate_receives",
    "`when` and `validate` are called with the dependencies and, like the body, with the "
    "inputs they name as parameters (`when=lambda totals, threshold: ...`)":
        "test_gates_get_every_dependency_and_the_inputs_they_name",
    "a gate parameter that is neither a dependency, an input nor optional is a `ValueError` at "
    "build time naming the task and the gate.":
        "test_a_gate_parameter_nothing_supplies_is_a_build_error",
    "A `**kwargs` body or gate receives only the inputs it names as parameters.":
        "test_a_kwargs_body_or_gate_receives_only_the_inputs_it_names",
    "`when` and `validate` run once per task (not per attempt), called with every dependency "
    "value as a keyword argument (and the flow inputs they name)":
        "test_gates_run_once_per_task_with_dependencies_and_named_inputs",
    "**Gates receive every dependency and the inputs they name**, as the body does":
        "test_gates_get_every_dependency_and_the_inputs_they_name",
    "a `**kwargs` body or gate receives only the inputs it names.":
        "test_a_kwargs_body_or_gate_receives_only_the_inputs_it_names",
}


def _sentences(text: str) -> list[str]:
    """Prose sentences (and clauses after ';') of a markdown text, code blocks left out."""
    blocks: list[str] = []
    current: list[str] = []
    fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = not fence
            if current:
                blocks.append(" ".join(current))
                current = []
            continue
        if fence:
            continue
        if (not stripped or stripped.startswith(("- ", "* ", "|", "#"))
                or re.match(r"\d+\. ", stripped)):
            if current:
                blocks.append(" ".join(current))
                current = []
            if stripped.startswith(("- ", "* ")):
                current = [stripped[2:]]
            continue
        current.append(stripped)
    if current:
        blocks.append(" ".join(current))
    out: list[str] = []
    for block in blocks:
        out += re.split(r"(?<=[.!?])\s+(?=[A-Z`*])|;\s+", block)
    return out


def _about_gates_and_inputs(sentence: str) -> bool:
    return bool(re.search(r"\bgates?\b|`when`|`validate`|when=|validate=", sentence, re.I)
                and re.search(r"\binputs?\b", sentence))


def test_every_statement_about_gates_and_inputs_is_exercised():
    found = set()
    for doc in DOCS:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            found |= {s for s in _sentences(f.read()) if _about_gates_and_inputs(s)}
    assert found - set(STATEMENTS) == set(), "statements without a test here"
    assert set(STATEMENTS) - found == set(), "tests of statements the docs no longer make"
    for name in STATEMENTS.values():
        assert callable(globals().get(name)), name


def test_choices_made_no_longer_says_gates_never_receive_inputs():
    with open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8") as f:
        assert "never inputs" not in f.read()


# ----- the statements ------------------------------------------------------------------

# "`when`/`validate` get every dependency (`when=lambda answers, **_: ...`) and the inputs
#  they name." (SKILL.md)
# "`when` and `validate` are called with the dependencies and, like the body, with the
#  inputs they name as parameters (`when=lambda totals, threshold: ...`)" (reference, Inputs)
# "**Gates receive every dependency and the inputs they name**, as the body does"
#  (reference, Choices made)
def test_gates_get_every_dependency_and_the_inputs_they_name():
    seen = {}

    @task
    def totals():
        return 10

    @task
    def answers():
        return ["a"]

    def when(totals, answers, threshold):
        seen["when"] = (totals, answers, threshold)
        return totals > threshold

    def validate(answers, **_):
        seen["validate"] = (answers, sorted(_))
        return None

    @task(depends_on=[totals, answers], when=when, validate=validate)
    def alert(totals, answers, threshold):
        return f"{totals} > {threshold}"

    flow = Flow(alert, inputs={"threshold": 5}, log=False)
    res = flow.run()
    assert res["alert"].value == "10 > 5"
    assert seen["when"] == (10, ["a"], 5)
    assert seen["validate"] == (["a"], ["totals"])  # every dependency, no unnamed input
    res = Flow(alert, inputs={"threshold": 50}, log=False).run()
    assert res["alert"].state is StepState.SKIPPED
    assert res["alert"].reason == "when() returned False"


# "A task's [step key](#step-keys) covers the inputs its body and gates receive, by content,
#  so one script run for several inputs keeps separate journal entries." (reference, Inputs)
def test_the_step_key_covers_the_inputs_a_gate_receives(tmp_path):
    # a path, not a list: a closure value is part of the key by content
    calls = str(tmp_path / "calls.txt")

    @task
    def totals():
        return 10

    @task(depends_on=[totals], when=lambda totals, threshold: totals > threshold)
    def alert(totals):  # the body does not take the input: only its gate does
        with open(calls, "a") as f:
            f.write("x")
        return "sent"

    journal = str(tmp_path / "run.jsonl")
    for threshold in (1, 2, 1, 2):
        flow = Flow(alert, inputs={"threshold": threshold}, journal_path=journal, log=False)
        assert flow.run()["alert"].ok
    with open(calls) as f:
        assert f.read() == "xx"  # one entry per input value; the repeats replay
    keys = {Flow(alert, inputs={"threshold": t}, journal_path=journal, log=False)
            .run()["alert"].step_key for t in (1, 2)}
    assert len(keys) == 2


# "a gate parameter that is neither a dependency, an input nor optional is a `ValueError`
#  at build time naming the task and the gate." (reference, Inputs)
@pytest.mark.parametrize("gate", ["when", "validate"])
def test_a_gate_parameter_nothing_supplies_is_a_build_error(gate):
    @task
    def totals():
        return 1

    t = task(lambda totals: totals, name="alert", depends_on=[totals],
             **{gate: lambda totals, threshold: True})
    with pytest.raises(ValueError) as exc:
        Flow(t, log=False)
    assert f"task 'alert': its {gate}= gate has a parameter 'threshold'" in str(exc.value)
    # an optional one, or one supplied as an input, builds
    task(lambda totals: totals, name="alert2", depends_on=[totals],
         **{gate: lambda totals, threshold=0: True})
    Flow(t, inputs={"threshold": 3}, log=False)


# "A `**kwargs` body or gate receives only the inputs it names as parameters." (reference,
#  Inputs) and "a `**kwargs` body or gate receives only the inputs it names." (reference,
#  Choices made)
def test_a_kwargs_body_or_gate_receives_only_the_inputs_it_names():
    seen = {}

    @task
    def totals():
        return 1

    def when(totals, limit, **rest):
        seen["when"] = (limit, sorted(rest))
        return True

    @task(depends_on=[totals], when=when)
    def body(limit, **rest):
        seen["body"] = (limit, sorted(rest))
        return 0

    Flow(body, inputs={"limit": 3, "unused_by_name": 4}, log=False).run()
    assert seen["when"] == (3, [])         # the dependency arrives by name, no extra input
    assert seen["body"] == (3, ["totals"])  # the dependency, and only the input it names


# "`when` and `validate` run once per task (not per attempt), called with every dependency
#  value as a keyword argument (and the flow inputs they name)" (reference, Gates)
def test_gates_run_once_per_task_with_dependencies_and_named_inputs():
    gate_calls = []
    attempts = []

    @task
    def rows():
        return [1, 2, 3]

    def when(rows, minimum):
        gate_calls.append(("when", len(rows), minimum))
        return len(rows) >= minimum

    def validate(rows, minimum):
        gate_calls.append(("validate", len(rows), minimum))

    @task(depends_on=[rows], when=when, validate=validate, retry=2,
          retry_backoff_base_ms=0)
    def flaky(rows):
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("again")
        return sum(rows)

    res = Flow(flaky, inputs={"minimum": 2}, log=False).run()
    assert res["flaky"].value == 6 and res["flaky"].attempts == 3
    assert gate_calls == [("when", 3, 2), ("validate", 3, 2)]
