"""Property: whatever a body reads and whatever is edited, run 2 equals a run without
a journal (issue 14 "Done when").

Random graphs whose bodies read random mixes of a module constant, a helper
imported at module level, a helper module imported inside the body, a closure
value and ``current()`` (a task reading it has a twin built from the same
function), edited at random between two runs in fresh processes over one
journal. Each example spawns three processes (run 1, run 2, a run with no
journal), so there are few of them.
"""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

READS = ("const", "helper", "inner", "closure", "current")
EDITS = {
    "K": ("flow.py", "K = 3", "K = 4"),
    "A": ("hlp.py", "A = 5", "A = 6"),
    "f": ("hlp.py", "return x + A", "return x + A + 1"),
    "B": ("inner.py", "B = 7", "B = 8"),
    "g": ("inner.py", "return x * B", "return x * B - 1"),
    "c": ("flow.py", "CLOSURE = 11", "CLOSURE = 12"),
    "same": ("flow.py", "v = 1 + ", "v = 2 - 1 + "),  # new code, same values
}


@st.composite
def graphs(draw):
    n = draw(st.integers(2, 4))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.sampled_from(range(i)), unique=True, max_size=2)) if i else []
        reads = draw(st.lists(st.sampled_from(READS), unique=True, max_size=3))
        tasks.append((sorted(deps), sorted(reads)))
    edits = draw(st.lists(st.sampled_from(sorted(EDITS)), unique=True, min_size=1, max_size=3))
    return tasks, edits


def _script(tasks) -> str:
    lines = ["import json, sys", "from flowing import Flow, current, task", "import hlp",
             "K = 3", "CLOSURE = 11", ""]
    names = []
    for i, (deps, reads) in enumerate(tasks):
        params = [f"t{d}" for d in deps]
        body = [f"    def body({', '.join(params)}):", f"        v = 1 + {' + '.join(params) or '0'}"]
        if "const" in reads:
            body.append("        v += K")
        if "helper" in reads:
            body.append("        v += hlp.f(1)")
        if "inner" in reads:
            body += ["        import inner", "        v += inner.g(2)"]
        if "closure" in reads:
            body.append("        v += c")
        if "current" in reads:
            body.append("        v += sum(map(ord, current().task))")
        body.append("        return v")
        lines += [f"def make_{i}(c):", *body, "    return body", "",
                  f"fn_{i} = make_{i}(CLOSURE)",
                  f"t{i} = task(fn_{i}, name='t{i}', depends_on=[{', '.join(params)}])"]
        names.append(f"t{i}")
        if "current" in reads:  # a twin of the same function: only its name differs
            lines.append(f"t{i}x = task(fn_{i}, name='t{i}x', depends_on=[{', '.join(params)}])")
            names.append(f"t{i}x")
        lines.append("")
    lines += [
        f"flow = Flow({', '.join(names)}, log=False,",
        "            journal_path=None if sys.argv[1:] == ['--no-journal'] else 'run.jsonl')",
        "print('RESULT ' + json.dumps({n: r.value for n, r in flow.run().items()}))",
    ]
    return "\n".join(lines) + "\n"


HLP = "A = 5\n\n\ndef f(x):\n    return x + A\n"
INNER = "B = 7\n\n\ndef g(x):\n    return x * B\n"


def _run(path, env, *args):
    p = subprocess.run([sys.executable, "flow.py", *args], cwd=path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    [line] = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graphs())
def test_run_2_equals_a_run_without_journal(tmp_path_factory, repo_env, graph):
    tasks, edits = graph
    path = tmp_path_factory.mktemp("prop")
    env = dict(repo_env, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = f"{path}:{env['PYTHONPATH']}"
    (path / "flow.py").write_text(_script(tasks))
    (path / "hlp.py").write_text(HLP)
    (path / "inner.py").write_text(INNER)
    _run(path, env)
    for edit in edits:
        name, old, new = EDITS[edit]
        f = path / name
        f.write_text(f.read_text().replace(old, new))
    assert _run(path, env) == _run(path, env, "--no-journal"), (tasks, edits)
