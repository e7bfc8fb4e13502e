"""Every python code block in the user-facing docs runs as written.

Each block runs on its own, in a fresh interpreter, in an empty working
directory (so journals it writes don't leak between blocks), with this
checkout importable. A block must exit 0.
"""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

DOCS = ["SKILL.md", "README.md", "docs/reference.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for doc in DOCS:
        path = os.path.join(REPO, doc)
        if not os.path.exists(path):
            continue
        text = open(path, encoding="utf-8").read()
        for match in FENCE.finditer(text):
            line = text[:match.start()].count("\n") + 2
            yield pytest.param(match.group(1), id=f"{doc}:{line}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_doc_block_runs(code, tmp_path, repo_env):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=repo_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"


def test_docs_have_blocks():
    assert len(list(_blocks())) >= 5


def test_skill_md_is_short_and_has_frontmatter():
    text = open(os.path.join(REPO, "SKILL.md"), encoding="utf-8").read()
    assert len(text) <= 6000, f"SKILL.md is {len(text)} characters; keep it under 6000"
    head = text.split("---")[1]
    assert re.search(r"^name: flowing$", head, re.M)
    assert re.search(r"^description: \S", head, re.M)
    assert re.search(r"^metadata:\n\s+version: \d+\.\d+\.\d+", head, re.M)


def test_readme_commands_are_the_ones_ci_runs():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    for command in re.findall(r"^(python3 .*)$", readme, re.M)[:2]:
        assert command in ci, f"README command not run by CI: {command}"


def test_quickstart_example_runs(repo_env, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "quickstart.py")],
                          cwd=tmp_path, env=repo_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "6 succeeded" in proc.stdout
    assert "[notify]" in proc.stdout


def test_gates_example_runs(repo_env, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "gates.py")],
                          cwd=tmp_path, env=repo_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "attempts=3" in proc.stdout and "when() returned False" in proc.stdout
    assert "published: Paris" in proc.stdout


def test_resume_journal_example_replays_the_expensive_step(repo_env, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "resume_journal.py")],
                          cwd=tmp_path, env=repo_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split("== process 2")
    assert "download ran" in first and "download ran" not in second
    assert "parse ran" in second and "report ran" in second
    assert "(1 cached)" in second
