"""End-to-end tests of the durable journal through ``Flow``, across real processes.

Each test writes a flow script into ``tmp_path``, runs it with the current
interpreter (cwd = ``tmp_path``), edits it, and runs it again. Every task body
appends its name to ``calls.log`` (read and cleared after each run by
``Project.run``), and the script prints one ``RESULT {json}`` line per run with
each task's state, cached flag, attempts, step key and the repr/type of its value.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field

import pytest

from flowing import Flow, task
from flowing.errors import JournalError

# --------------------------------------------------------------------------- harness

PRELUDE = '''\
import json
import os
import sys

from flowing import Flow, task


def mark(name):
    with open("calls.log", "a") as f:
        f.write(name + "\\n")


def report(results):
    out = {}
    for n, r in results.items():
        out[n] = {"state": r.state.value, "cached": r.cached, "attempts": r.attempts,
                  "key": r.step_key, "value": repr(r.value), "type": type(r.value).__name__,
                  "reason": r.reason,
                  "items": None if r.items is None else
                           [[it.state.value, it.cached, it.attempts] for it in r.items]}
    print("RESULT " + json.dumps(out), flush=True)


def journal_path():
    return os.environ.get("JOURNAL", "run.jsonl") or None

'''

MAIN = '''

if __name__ == "__main__":
    # fail_fast off: a failing task must not make whether others ran depend on timing
    report(Flow(*TERMINALS, journal_path=journal_path(), fail_fast=False).run())
'''

KEY_RE = re.compile(r"[0-9a-f]{64}")


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    calls: list
    reports: list = field(default_factory=list)

    @property
    def results(self) -> dict:
        assert self.reports, f"no RESULT line\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return self.reports[-1]

    @property
    def ran(self) -> list:
        """Names of the bodies that ran, sorted, each once."""
        return sorted(set(self.calls))

    def state(self, name):
        return self.results[name]["state"]

    def warnings(self, needle: str) -> list:
        return [line for line in self.stderr.splitlines() if needle in line]


class Project:
    """A directory holding flow scripts and their journal; runs them in fresh processes."""

    def __init__(self, path, env):
        self.path = path
        self.env = env

    def write(self, body: str, name: str = "flow.py", main: bool = True) -> None:
        text = PRELUDE + textwrap.dedent(body) + (MAIN if main else "")
        (self.path / name).write_text(text)

    def edit(self, old: str, new: str, name: str = "flow.py") -> None:
        p = self.path / name
        text = p.read_text()
        assert text.count(old) == 1, f"{old!r} must occur exactly once in {name}"
        p.write_text(text.replace(old, new))

    def popen(self, *args, name="flow.py", env=None, **kw) -> subprocess.Popen:
        e = dict(self.env)
        e.update(env or {})
        return subprocess.Popen([sys.executable, name, *args], cwd=self.path, env=e,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

    def finish(self, proc, timeout=60) -> Run:
        out, err = proc.communicate(timeout=timeout)
        return self._collect(proc.returncode, out, err)

    def run(self, *args, name="flow.py", env=None, check=True) -> Run:
        r = self.finish(self.popen(*args, name=name, env=env))
        if check:
            assert r.rc == 0, f"exit {r.rc}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
            assert "Traceback" not in r.stderr, r.stderr
        return r

    def _collect(self, rc, out, err) -> Run:
        log = self.path / "calls.log"
        calls = log.read_text().split() if log.exists() else []
        if log.exists():
            log.unlink()
        reports = [json.loads(line[len("RESULT "):]) for line in out.splitlines()
                   if line.startswith("RESULT ")]
        return Run(rc, out, err, calls, reports)

    @property
    def journal(self):
        return self.path / "run.jsonl"

    def entries(self) -> list:
        """The entry lines (the header line, which names the format, left out)."""
        lines = [json.loads(line) for line in self.journal.read_bytes().splitlines() if line.strip()]
        return [e for e in lines if "key" in e]

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowing", *args], cwd=self.path,
                              env=self.env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def proj(tmp_path, repo_env):
    repo_env = dict(repo_env)
    repo_env.pop("JOURNAL", None)
    repo_env.pop("SLOW", None)
    return Project(tmp_path, repo_env)


def assert_all_replayed(run: Run, names=None):
    if names is None:
        names = list(run.results)
        assert run.calls == [], f"bodies ran: {run.calls}"
    assert not set(names) & set(run.calls), f"bodies ran: {run.calls}"
    for n in names:
        r = run.results[n]
        assert r["state"] == "succeeded", (n, r)
        assert r["cached"] is True, (n, r)
        assert r["attempts"] == 0, (n, r)
        assert KEY_RE.fullmatch(r["key"] or ""), (n, r)


def assert_ran_fresh(run: Run, names):
    for n in names:
        r = run.results[n]
        assert r["state"] == "succeeded", (n, r)
        assert r["cached"] is False, (n, r)
        assert r["attempts"] == 1, (n, r)
        assert KEY_RE.fullmatch(r["key"] or ""), (n, r)


# ------------------------------------------------------------- 1. replay after fresh start

VALUES = '''
import dataclasses
import datetime


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@task
def js():
    mark("js")
    return {"a": [1, 2.5, "x", None, True, {"nested": []}], "b": "\\u00e9t\\u00e9"}

@task
def tup():
    mark("tup")
    return (1, "two", 3.0)

@task
def st():
    mark("st")
    return {3, 1, 2}

@task
def when():
    mark("when")
    return datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)

@task
def point():
    mark("point")
    return Point(1, 2)

@task
def intkeys():
    mark("intkeys")
    return {1: "one", 2: "two"}

@task(depends_on=[js, tup, st, when, point, intkeys])
def combine(js, tup, st, when, point, intkeys):
    mark("combine")
    return [len(js), list(tup), sorted(st), when.isoformat(), point.x + point.y, sorted(intkeys)]

TERMINALS = [combine]
'''


def test_fresh_process_replays_every_task_with_equal_values(proj):
    proj.write(VALUES)
    first = proj.run()
    assert first.ran == sorted(["js", "tup", "st", "when", "point", "intkeys", "combine"])
    assert_ran_fresh(first, first.results)

    second = proj.run(env={"PYTHONHASHSEED": "12345"})
    assert_all_replayed(second)
    for name, r in first.results.items():
        s = second.results[name]
        assert (s["value"], s["type"], s["key"]) == (r["value"], r["type"], r["key"]), name
    types = {n: r["type"] for n, r in second.results.items()}
    assert types == {"js": "dict", "tup": "tuple", "st": "set", "when": "datetime",
                     "point": "Point", "intkeys": "dict", "combine": "list"}
    assert second.results["point"]["value"] == "Point(x=1, y=2)"
    assert second.results["when"]["value"] == (
        "datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)")

    enc = {e["name"]: e["enc"] for e in proj.entries()}
    assert enc == {"js": "json", "combine": "json", "tup": "pickle", "st": "pickle",
                   "when": "pickle", "point": "pickle", "intkeys": "pickle"}
    assert stat.S_IMODE(os.stat(proj.journal).st_mode) == 0o600
    # nothing was appended by the replay
    assert len(proj.entries()) == 7


# ---------------------------------------------------------- 2. failed step fixed, continued

CHAIN_WITH_FAILURE = '''
@task
def a():
    mark("a")
    return 1

@task(depends_on=[a])
def b(a):
    mark("b")
    return a + 1

@task(depends_on=[b])
def c(b):
    mark("c")
    raise RuntimeError("c is broken")

@task(depends_on=[c])
def d(c):
    mark("d")
    return c * 10

TERMINALS = [d]
'''


def test_failed_step_fixed_in_source_runs_only_it_and_downstream(proj):
    proj.write(CHAIN_WITH_FAILURE)
    first = proj.run()
    assert first.calls == ["a", "b", "c"]
    assert first.state("c") == "failed" and first.state("d") == "skipped"
    assert [e["name"] for e in proj.entries()] == ["a", "b"]

    proj.edit('raise RuntimeError("c is broken")', "return b + 1")
    second = proj.run()
    assert second.calls == ["c", "d"]
    assert_all_replayed(second, ["a", "b"])
    assert_ran_fresh(second, ["c", "d"])
    assert second.results["d"]["value"] == "30"
    assert first.results["a"]["key"] == second.results["a"]["key"]
    assert first.results["b"]["key"] == second.results["b"]["key"]

    assert_all_replayed(proj.run())


# ------------------------------------------------------------ 3. edits bust the right keys

EDITS = '''
FACTOR = 3
UNUSED = 10
NAMES = {"alpha", "beta", "gamma", "delta", "epsilon"}
TABLE = {"zeta": (1, 2), "eta": [3, {"x"}], "theta": None}


def inner():
    return FACTOR * 2


def helper():
    return inner() + 1


def direct():
    return 100


@task
def a():
    mark("a")
    return 1

@task(depends_on=[a])
def b(a):
    mark("b")
    return a + helper() + direct()

@task(depends_on=[a])
def c(a):
    mark("c")
    return a + len(NAMES) + len(TABLE) - 7

@task(depends_on=[a])
def e(a):
    mark("e")
    squares = [x * x for x in range(a + 3)]
    bump = lambda v: v + 1
    return sum(map(bump, squares)) + len({k: k for k in squares}) + sum(y for y in squares)

@task(depends_on=[b, c])
def d(b, c):
    mark("d")
    return b + c

TERMINALS = [d, e]
'''


def test_edits_rerun_exactly_the_affected_tasks(proj):
    proj.write(EDITS)
    base = proj.run()
    assert base.ran == ["a", "b", "c", "d", "e"]
    assert base.results["b"]["value"] == str(1 + 7 + 100)

    # a task body with a comprehension, a lambda, a dict comprehension and a
    # generator expression replays in another process; so does one reading set
    # and dict constants, whatever the hash seed
    for seed in ("0", "1", "random"):
        assert_all_replayed(proj.run(env={"PYTHONHASHSEED": seed}))

    def step(old, new, expect):
        proj.edit(old, new)
        r = proj.run()
        assert r.ran == sorted(expect), (old, new, r.calls)
        assert_all_replayed(r, [n for n in "abcde" if n not in expect])
        assert_ran_fresh(r, expect)
        return r

    # a helper called directly by b
    r = step("return 100", "return 101", ["b", "d"])
    assert r.results["b"]["value"] == str(1 + 7 + 101)
    # a helper of a helper
    r = step("return FACTOR * 2", "return FACTOR * 4", ["b", "d"])
    assert r.results["b"]["value"] == str(1 + 13 + 101)
    # a module-level constant read by that helper
    r = step("FACTOR = 3", "FACTOR = 5", ["b", "d"])
    assert r.results["b"]["value"] == str(1 + 21 + 101)
    # a constant nobody reads
    step("UNUSED = 10", "UNUSED = 11", [])
    # a set constant read by the sibling c
    step('"epsilon"}', '"epsilon", "iota"}', ["c", "d"])
    # retry / timeout knobs, comments and blank lines move nothing
    step("@task(depends_on=[a])\ndef b(a):",
         "@task(depends_on=[a], retry=3, timeout_s=30, retry_backoff_base_ms=5)\ndef b(a):", [])
    step("\ndef inner():", "\n# a comment\n\n\n# and blank lines\n\ndef inner():", [])
    step("@task\ndef a():", "# about a\n\n@task  # the root\ndef a():  # really\n", [])
    # the same edits as above, undone: the first keys are still in the journal
    for new, old in [('"epsilon"}', '"epsilon", "iota"}'), ("return 100", "return 101"),
                     ("return FACTOR * 2", "return FACTOR * 4"),
                     ("FACTOR = 3", "FACTOR = 5")]:
        proj.edit(old, new)
    again = proj.run()
    assert_all_replayed(again)
    assert again.results["b"]["key"] == base.results["b"]["key"]
    assert again.results["d"]["value"] == base.results["d"]["value"]


SWAP = '''
def foo():
    return "foo"


def bar():
    return "bar"


def same_foo(tag="foo"):
    return tag


def same_bar(tag="bar"):
    return tag


picked = foo


@task
def direct():
    mark("direct")
    return foo()

@task
def twins():
    mark("twins")
    return same_foo()

@task
def alias():
    mark("alias")
    return picked()

@task(depends_on=[direct, twins, alias])
def joined(direct, twins, alias):
    mark("joined")
    return "-".join([direct, twins, alias])

TERMINALS = [joined]
'''


@pytest.mark.parametrize("old,new,task_name", [
    ("return foo()", "return bar()", "direct"),
    # code identical except the function name; the values differ by default argument
    ("return same_foo()", "return same_bar()", "twins"),
    # the body is unchanged; the module-level name it calls now means another function
    ("picked = foo", "picked = bar", "alias"),
])
def test_calling_another_function_reruns(proj, old, new, task_name):
    proj.write(SWAP)
    assert proj.run().results["joined"]["value"] == repr("foo-foo-foo")
    proj.edit(old, new)
    r = proj.run()
    assert r.ran == sorted([task_name, "joined"])
    assert r.results[task_name]["value"] == repr("bar")
    assert r.results["joined"]["value"].count("bar") == 1


# ---------------------------------------------------------------------------- 4. kill -9

KILL_CHAIN = '''
import time


def body(name, value):
    open("started_" + name, "w").close()
    mark(name)
    if os.environ.get("SLOW"):
        time.sleep(0.3)
    return value

@task
def a():
    return body("a", 1)

@task(depends_on=[a])
def b(a):
    return body("b", a + 1)

@task(depends_on=[b])
def c(b):
    return body("c", b + 1)

@task(depends_on=[c])
def d(c):
    return body("d", c + 1)

@task(depends_on=[d])
def e(d):
    return body("e", d + 1)

TERMINALS = [e]
'''


def test_kill_9_mid_run_then_continue(proj):
    proj.write(KILL_CHAIN)
    proc = proj.popen(env={"SLOW": "1"})
    marker = proj.path / "started_c"
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "task c never started"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (proj.path / "calls.log").unlink()

    # a and b finished before c started, so they are in the journal
    assert {e["name"] for e in proj.entries()} >= {"a", "b"}
    chain = ["a", "b", "c", "d", "e"]
    r = proj.run()
    assert r.results["e"]["state"] == "succeeded" and r.results["e"]["value"] == "5"
    assert r.calls, "e at least never ran before the kill"
    # what ran is a suffix of the chain starting no earlier than the in-flight task
    start = chain.index(r.calls[0])
    assert start >= 2 and r.calls == chain[start:], r.calls
    assert_all_replayed(r, chain[:start])
    assert_ran_fresh(r, chain[start:])
    assert_all_replayed(proj.run())


# ------------------------------------------------------- 5. many processes, one journal

MANY = '''
import time

N = 50


def make(p, i):
    def body():
        mark(f"p{p}_t{i:02d}")
        return {"p": p, "i": i, "sq": i * i}
    return body


def build(p):
    return [task(make(p, i), name=f"p{p}_t{i:02d}") for i in range(N)]


if __name__ == "__main__":
    which = sys.argv[1]
    terminals = build(int(which)) if which != "all" else [t for p in range(4) for t in build(p)]
    flow = Flow(*terminals, journal_path=journal_path(), max_workers=8, log=False)
    while which != "all" and not os.path.exists("go"):
        time.sleep(0.002)
    report(flow.run())
'''


def test_concurrent_processes_share_one_journal(proj):
    proj.write(MANY, main=False)
    procs = [proj.popen(str(p)) for p in range(4)]
    time.sleep(0.2)  # most of them are waiting for "go" with the journal open
    (proj.path / "go").touch()
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err, err
        res = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
        assert len(res) == 50
        assert all(r["state"] == "succeeded" and not r["cached"] for r in res.values())
    calls = (proj.path / "calls.log").read_text().split()
    (proj.path / "calls.log").unlink()
    assert len(calls) == 200 and len(set(calls)) == 200

    raw = proj.journal.read_bytes()
    assert raw.endswith(b"\n")
    header, *lines = raw.split(b"\n")[:-1]
    assert json.loads(header) == {"format": "flowing-journal", "version": 2}
    assert len(lines) == 200
    entries = [json.loads(line) for line in lines]  # every line is whole JSON
    assert sorted(e["name"] for e in entries) == sorted(calls)
    assert len({e["key"] for e in entries}) == 200
    for e in entries:
        p, i = int(e["name"][1]), int(e["name"][4:])
        assert e["value"] == {"p": p, "i": i, "sq": i * i}

    fifth = proj.run("all")
    assert len(fifth.results) == 200
    assert_all_replayed(fifth)
    assert fifth.results["p3_t49"]["value"] == repr({"p": 3, "i": 49, "sq": 2401})


# --------------------------------------------------------------------- 6. permissions

MIXED = '''
@task
def a():
    mark("a")
    return 1

@task(depends_on=[a])
def b(a):
    mark("b")
    return (a, "tuple")

@task(depends_on=[b])
def c(b):
    mark("c")
    return list(b)

@task(depends_on=[a])
def d(a):
    mark("d")
    return frozenset({a, 2})

@task(depends_on=[c, d])
def e(c, d):
    mark("e")
    return [c, sorted(d)]

TERMINALS = [e]
'''

REFUSED = "pickled results are not loaded"


def test_group_writable_journal_refuses_pickles_until_chmod_600(proj):
    proj.write(MIXED)
    first = proj.run()
    assert first.ran == ["a", "b", "c", "d", "e"]
    assert not first.warnings(REFUSED)

    os.chmod(proj.journal, 0o666)
    second = proj.run()
    assert second.ran == ["b", "d"]
    assert len(second.warnings(REFUSED)) == 1, second.stderr
    assert "chmod 600" in second.warnings(REFUSED)[0]
    assert_all_replayed(second, ["a", "c", "e"])
    assert_ran_fresh(second, ["b", "d"])
    assert second.results["b"]["value"] == repr((1, "tuple"))

    os.chmod(proj.journal, 0o600)
    third = proj.run()
    assert_all_replayed(third)
    assert not third.warnings(REFUSED)
    assert third.results["d"]["value"] == repr(frozenset({1, 2}))


def test_missing_journal_directory_raises_before_any_body_runs(tmp_path):
    calls = []

    @task
    def only():
        calls.append("only")
        return 1

    missing = tmp_path / "nope" / "run.jsonl"
    with pytest.raises(JournalError) as exc:
        Flow(only, journal_path=missing, log=False)
    assert str(missing) in str(exc.value) and "does not exist" in str(exc.value)
    assert calls == []
    assert not (tmp_path / "nope").exists()


def test_journal_path_that_is_a_directory_raises(tmp_path):
    @task
    def only():
        raise AssertionError("must not run")

    with pytest.raises(JournalError, match="is a directory"):
        Flow(only, journal_path=tmp_path, log=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_journal_raises(tmp_path):
    @task
    def only():
        raise AssertionError("must not run")

    path = tmp_path / "run.jsonl"
    path.write_bytes(b"")
    os.chmod(path, 0o200)
    with pytest.raises(JournalError, match="permissions"):
        Flow(only, journal_path=path, log=False)


# ---------------------------------------------------------------------- 7. damaged lines

def test_damaged_lines_warn_and_intact_entries_replay(proj):
    proj.write(MIXED)
    proj.run()
    lines = proj.journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6  # the header and five entries
    good = lines[1]
    with open(proj.journal, "ab") as f:
        f.write(b"this is not json at all\n")
        f.write(good[: len(good) // 2] + b"\n")                       # truncated mid-line
        f.write(good.replace(b'{"v":2,', b'{"v":9,', 1))              # a future format
        f.write(b'{"v":2,"crc":"00000000","key":"k","kind":"task"')  # torn tail, no newline

    r = proj.run()
    assert_all_replayed(r)
    skipped = r.warnings("skipped")
    assert len(skipped) == 4, r.stderr
    assert any("version 9" in w for w in skipped)
    assert any("torn" in w for w in skipped)

    # a new task is appended after the torn tail is cut off; everything still reads
    proj.edit("TERMINALS = [e]", textwrap.dedent('''\
        @task(depends_on=[e])
        def f(e):
            mark("f")
            return len(e)

        TERMINALS = [f]'''))
    r = proj.run()
    assert r.ran == ["f"]
    r = proj.run()
    assert_all_replayed(r)
    assert len(r.warnings("skipped")) == 3, r.stderr
    assert not proj.journal.read_bytes().endswith(b'"kind":"task"')


# ---------------------------------------------------------------- 8. unstorable values

UNSTORABLE = '''
import threading


@task
def a():
    mark("a")
    return 2

@task(depends_on=[a])
def lock(a):
    mark("lock")
    return threading.Lock()

@task(depends_on=[a])
def gen(a):
    mark("gen")
    return (x * a for x in range(3))

@task(depends_on=[lock, gen])
def down(lock, gen):
    mark("down")
    with lock:
        return sum(gen)

TERMINALS = [down]
'''


def test_unstorable_values_warn_and_only_those_tasks_rerun(proj):
    proj.write(UNSTORABLE)
    first = proj.run()
    assert first.ran == ["a", "down", "gen", "lock"]
    assert first.results["down"]["value"] == "6"
    w = first.warnings("not journaled")
    assert len(w) == 2, first.stderr
    assert any("'lock'" in x for x in w) and any("'gen'" in x for x in w)
    # the unstorable ones leave only value-less markers, which never replay; so does
    # `down`: it was computed from values with no stable content, so nothing could
    # tell next time whether its inputs are the same (SPEC 6: sound replay)
    assert {e["name"] for e in proj.entries() if e["enc"] != "none"} == {"a"}
    assert {e["name"] for e in proj.entries() if e["enc"] == "none"} == {"gen", "lock", "down"}

    second = proj.run()
    assert second.ran == ["down", "gen", "lock"]
    assert_all_replayed(second, ["a"])
    assert_ran_fresh(second, ["down", "gen", "lock"])
    assert second.results["down"]["value"] == "6"
    assert len(second.warnings("not journaled")) == 2


# ------------------------------------------------------------------------- 9. override

OVERRIDE = '''
@task
def a():
    mark("a")
    return 1

@task(depends_on=[a])
def b(a):
    mark("b")
    return a + 1

@task(depends_on=[b])
def c(b):
    mark("c")
    return b * 100


if __name__ == "__main__":
    flow = Flow(c, journal_path=journal_path())
    if sys.argv[1:] == ["override"]:
        flow.override(b, 42)
        report(flow.results)
    else:
        report(flow.run())
'''


def test_override_is_journaled_and_used_by_a_fresh_process(proj):
    proj.write(OVERRIDE, main=False)
    r = proj.run("override")
    assert r.calls == []
    assert r.results["b"]["reason"] == "override"
    [entry] = proj.entries()
    assert (entry["kind"], entry["name"], entry["value"]) == ("override", "b", 42)

    r = proj.run()
    assert r.ran == ["a", "c"]
    b = r.results["b"]
    assert (b["state"], b["cached"], b["attempts"], b["value"]) == ("succeeded", True, 0, "42")
    # its own key (the task's behaviour and name), never a step key another task may share
    assert entry["key"] != b["key"]
    assert r.results["c"]["value"] == "4200"

    assert_all_replayed(proj.run())


# ------------------------------------------------------------------------- 10. for_each

FOR_EACH = '''
@task
def src():
    mark("src")
    return list(range(10))

@task(depends_on=[src], for_each="src")
def each(src):
    mark(f"item{src}")
    if src in (3, 7) and os.path.exists("broken"):
        raise ValueError(f"item {src} is broken")
    return src * 10

@task(depends_on=[each])
def total(each):
    mark("total")
    return sum(each)

TERMINALS = [total]
'''


def test_for_each_continues_with_only_the_failed_items(proj):
    proj.write(FOR_EACH)
    (proj.path / "broken").touch()
    first = proj.run()
    assert sorted(first.calls) == sorted(["src"] + [f"item{i}" for i in range(10)])
    each = first.results["each"]
    assert each["state"] == "failed"
    assert [i for i, it in enumerate(each["items"]) if it[0] == "failed"] == [3, 7]
    assert first.state("total") == "skipped"
    kinds = sorted((e["kind"], e["name"], e["enc"] != "none") for e in proj.entries())
    # each: only the value-less line its items share (their task failed)
    assert kinds == sorted([("task", "src", True), ("task", "each", False)] + [
        ("item", f"each[{i}]", True) for i in range(10) if i not in (3, 7)])

    (proj.path / "broken").unlink()
    second = proj.run()
    assert sorted(second.calls) == ["item3", "item7", "total"]  # each item once
    each = second.results["each"]
    assert each["state"] == "succeeded" and each["cached"] is False
    assert each["value"] == repr([i * 10 for i in range(10)])
    assert [it[1] for it in each["items"]] == [i not in (3, 7) for i in range(10)]
    assert second.results["total"]["value"] == "450"
    assert_all_replayed(second, ["src"])

    third = proj.run()
    assert_all_replayed(third)
    assert third.results["each"]["value"] == repr([i * 10 for i in range(10)])


# ---------------------------------------------------------------------- 11. resume()

RESUME = '''
BROKEN = True


@task
def a():
    mark("a")
    return 1

@task(depends_on=[a])
def b(a):
    mark("b")
    return a + 1

@task(depends_on=[b])
def c(b):
    mark("c")
    if BROKEN:
        raise RuntimeError("switched off")
    return b + 1

@task(depends_on=[c])
def d(c):
    mark("d")
    return c + 1


if __name__ == "__main__":
    flow = Flow(d, journal_path=journal_path())
    report(flow.run())
    mark("--resume--")
    BROKEN = False
    report(flow.resume())
'''


def test_resume_in_one_process_with_a_journal_behaves_as_without(proj):
    proj.write(RESUME, main=False)
    runs = {}
    for label, journal in [("with", "run.jsonl"), ("without", "")]:
        r = proj.run(env={"JOURNAL": journal})
        assert len(r.reports) == 2
        first, resumed = r.reports
        assert first["c"]["state"] == "failed" and first["d"]["state"] == "skipped"
        assert r.calls == ["a", "b", "c", "--resume--", "c", "d"]
        assert {n: resumed[n]["state"] for n in "abcd"} == dict.fromkeys("abcd", "succeeded")
        assert resumed["d"]["value"] == "4"
        runs[label] = r
    strip = lambda rep: {n: {k: v for k, v in x.items() if k != "key"} for n, x in rep.items()}
    assert strip(runs["with"].reports[1]) == strip(runs["without"].reports[1])
    assert [e["name"] for e in proj.entries()] == ["a", "b", "c", "d"]


# ----------------------------------------------------------------- 12. journal forget

FORGET = '''
@task
def a():
    mark("a")
    return 1

@task(depends_on=[a])
def b(a):
    mark("b")
    return a + 1

@task(depends_on=[b])
def c(b):
    mark("c")
    return b + 1

@task(depends_on=[a])
def x(a):
    mark("x")
    return a - 1

@task(depends_on=[b])
def src(b):
    mark("src")
    return [b, b + 1]

@task(depends_on=[src], for_each="src")
def each(src):
    mark(f"each{src}")
    return src * 2

TERMINALS = [c, x, each]
'''


def test_cli_forget_reruns_the_task_and_its_downstream_only(proj):
    proj.write(FORGET)
    assert proj.run().ran == ["a", "b", "c", "each2", "each3", "src", "x"]
    cp = proj.cli("journal", "forget", "run.jsonl", "b")
    assert cp.returncode == 0, cp.stderr
    r = proj.run()
    # b, and everything that used it: c, src, and the items of the for_each task
    assert sorted(r.calls) == ["b", "c", "each2", "each3", "src"]
    assert_all_replayed(r, ["a", "x"])
    assert_ran_fresh(r, ["b", "c", "src", "each"])
    assert_all_replayed(proj.run())


FORGET_THROUGH = '''
import threading


@task
def cfg():
    mark("cfg")
    with open("setting.txt") as f:
        return f.read().strip()

@task
def src():
    mark("src")
    return [1, 2, 3]

@task(depends_on=[cfg])
def handle(cfg):
    mark("handle")
    return (threading.Lock(), cfg)   # cannot be journaled

@task(depends_on=[handle])
def use(handle):
    mark("use")
    return handle[1]

@task(depends_on=[src, cfg], for_each="src")
def each(src, cfg):
    mark(f"each{src}")
    if src == 3 and os.path.exists("broken"):
        raise ValueError("broken")
    return f"{cfg}-{src}"

TERMINALS = [use, each]
'''


@pytest.fixture
def forgot_cfg(proj):
    """Run once with setting v1 (item 3 of `each` failing), change the setting
    to v2, fix item 3, `flowing journal forget run.jsonl cfg`, run again."""
    proj.write(FORGET_THROUGH)
    (proj.path / "setting.txt").write_text("v1")
    (proj.path / "broken").touch()
    first = proj.run()
    assert first.results["use"]["value"] == repr("v1")
    assert first.state("each") == "failed"
    (proj.path / "setting.txt").write_text("v2")
    (proj.path / "broken").unlink()
    cp = proj.cli("journal", "forget", "run.jsonl", "cfg")
    assert cp.returncode == 0, cp.stderr
    r = proj.run()
    assert r.calls[:1] == ["cfg"] or "cfg" in r.calls
    return r


def test_cli_forget_reaches_past_a_task_whose_value_was_not_journaled(forgot_cfg):
    """`use` used cfg through `handle`, which has no entry of its own (its value
    could not be stored): forgetting cfg must make `use` run again."""
    assert "use" in forgot_cfg.calls
    assert forgot_cfg.results["use"]["value"] == repr("v2")


def test_cli_forget_reaches_the_items_of_a_failed_for_each_task(forgot_cfg):
    """The items of `each` used cfg, but `each` failed as a whole, so no entry
    links the item entries to cfg: forgetting cfg must still re-run them."""
    assert sorted(c for c in forgot_cfg.calls if c.startswith("each")) == ["each1", "each2", "each3"]
    assert forgot_cfg.results["each"]["value"] == repr(["v2-1", "v2-2", "v2-3"])


RESUME_THEN_FRESH = RESUME.replace("""    report(flow.resume())""", """    if sys.argv[1:] == ["fix"]:
        report(flow.resume())""")


def test_result_of_a_run_time_fix_is_not_replayed_for_the_unfixed_source(proj):
    """The switch was flipped at run time (as in a notebook); the file still says
    BROKEN = True. The resumed success was computed with BROKEN = False, so a fresh
    process running the file as written must not replay it: c must run (and fail)."""
    proj.write(RESUME_THEN_FRESH, main=False)
    fixed = proj.run("fix")
    assert fixed.reports[1]["c"]["state"] == "succeeded"
    fresh = proj.run()
    assert len(fresh.reports) == 1
    assert "c" in fresh.calls, "c replayed a success recorded for BROKEN = False"
    assert fresh.results["c"]["state"] == "failed"
