"""A folder of flow scripts run in fresh processes (journal tests of keys).

``ScriptProject(path, env, head, tail)``: ``flow(body)`` writes ``flow.py`` as
head + body + tail; ``run(*args)`` runs it and returns the JSON of its last
line starting with ``tag`` (plus ``stderr``), asserting exit status 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


class ScriptProject:
    def __init__(self, path, env, head: str, tail: str) -> None:
        self.path = path
        self.env = dict(env)
        self.env["PYTHONPATH"] = f"{path}:{self.env.get('PYTHONPATH', '')}"
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"  # an edit within one second must be seen
        self.env.pop("FLOWING_DRY_RUN", None)
        self.head = head
        self.tail = tail

    def write(self, name: str, text: str) -> None:
        (self.path / name).write_text(textwrap.dedent(text))

    def flow(self, body: str) -> None:
        self.write("flow.py", self.head + textwrap.dedent(body) + self.tail)

    def edit(self, name: str, old: str, new: str) -> None:
        p = self.path / name
        text = p.read_text()
        assert text.count(old) == 1, (old, text)
        p.write_text(text.replace(old, new))

    def proc(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        e = dict(self.env)
        e.update(env or {})
        return subprocess.run([sys.executable, "flow.py", *args], cwd=self.path, env=e,
                              capture_output=True, text=True, timeout=120)

    def run(self, *args: str, env: dict | None = None, tag: str = "RESULT ") -> dict:
        p = self.proc(*args, env=env)
        assert p.returncode == 0, p.stderr
        lines = [line for line in p.stdout.splitlines() if line.startswith(tag)]
        assert lines, p.stdout + p.stderr
        out = json.loads(lines[-1][len(tag):])
        if isinstance(out, dict) and tag == "RESULT ":
            out["stderr"] = p.stderr
        return out
