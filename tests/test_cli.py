"""`python -m flowing journal show/forget/compact`, run as real subprocesses."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from flowing.cli import main  # noqa: E402
from flowing.journal import Journal  # noqa: E402

LOG = logging.getLogger("test_cli")


def K(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def flowing(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "flowing", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def names(path) -> list[str]:
    with open(path, "rb") as f:
        return [json.loads(line)["name"] for line in f]


@pytest.fixture
def jpath(tmp_path):
    """a -> b -> c, a for_each task `m` (3 items + its result) fed by a, and an unrelated `z`."""
    path = str(tmp_path / "run.jsonl")
    with Journal.open(path, LOG) as j:
        j.record(K("a"), "a", [], {"rows": list(range(50))})
        j.record(K("b"), "b", [K("a")], "b-value")
        j.record(K("c"), "c", [K("b")], (1, 2))
        for i in range(3):
            j.record(K(f"m{i}"), f"m[{i}]", [K("a")], i * 10, kind="item")
        j.record(K("m"), "m", [K("a")], [0, 10, 20])
        j.record(K("after_m"), "after_m", [K("m")], None)
        j.record(K("z"), "z", [], "unrelated")
    return path


# ------------------------------------------------------------------ show

def test_show_lists_latest_entry_per_key_with_totals(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("b"), "b", [K("a")], "b-newer")
        j.record(K("o"), "b", [K("a")], "by hand", kind="override")
    r = flowing("journal", "show", jpath)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split() == ["TASK", "KEY", "KIND", "TIME", "SIZE", "VALUE"]
    rows = out[1:-1]
    # latest per key, in file order of those latest entries: b moved after z
    assert [row.split()[0] for row in rows] == [
        "a", "c", "m[0]", "m[1]", "m[2]", "m", "after_m", "z", "b", "b"]
    b_row = rows[8]
    assert K("b")[:12] in b_row and K("b")[:13] not in b_row
    assert "task" in b_row and '"b-newer"' in b_row and '"b-value"' not in r.stdout
    assert "override" in rows[9] and '"by hand"' in rows[9]
    assert "item" in rows[2] and rows[2].rstrip().endswith("0")
    assert "<pickle" in rows[1]  # tuples are pickled, shown without unpickling
    a_row = rows[0]
    assert '{"rows":[0,1,2' in a_row and a_row.endswith("...")
    assert len(a_row.split("  ")[-1]) <= 60  # preview is truncated
    assert all(len(row) < 160 for row in rows)
    total = out[-1]
    assert total.startswith("10 entries (6 task results, 3 items, 1 override) for 6 tasks;")
    assert "1 superseded entry" in total and "compact" in total
    assert r.stderr == ""


def test_show_warns_about_unreadable_lines_on_stderr(jpath):
    with open(jpath, "ab") as f:
        f.write(b"garbage\n")
    r = flowing("journal", "show", jpath)
    assert r.returncode == 0
    assert r.stderr.startswith("flowing: warning: journal ") and "line 10" in r.stderr
    assert r.stdout.splitlines()[-1].startswith("9 entries")


def test_show_empty_journal(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    r = flowing("journal", "show", str(path))
    assert r.returncode == 0
    assert r.stdout.startswith("0 entries")


# ---------------------------------------------------------------- forget

def test_forget_cascades_downstream_through_dep_keys(jpath):
    r = flowing("journal", "forget", jpath, "b")
    assert r.returncode == 0, r.stderr
    assert "forgot b: 1 entry" in r.stdout
    assert "forgot c: 1 entry (downstream)" in r.stdout
    assert names(jpath) == ["a", "m[0]", "m[1]", "m[2]", "m", "after_m", "z"]
    assert stat.S_IMODE(os.stat(jpath).st_mode) == 0o600
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("a")) == (True, {"rows": list(range(50))})
        assert K("b") not in j and K("c") not in j


def test_forget_root_removes_everything_downstream(jpath):
    r = flowing("journal", "forget", jpath, "a")
    assert r.returncode == 0, r.stderr
    assert names(jpath) == ["z"]
    assert "8 entries removed, 1 kept" in r.stdout


def test_forget_for_each_task_forgets_its_items_and_their_users(jpath):
    r = flowing("journal", "forget", jpath, "m")
    assert r.returncode == 0, r.stderr
    assert "forgot m: 1 entry, 3 items" in r.stdout
    assert "forgot after_m: 1 entry (downstream)" in r.stdout
    assert names(jpath) == ["a", "b", "c", "z"]


def test_forget_one_item_only(jpath):
    r = flowing("journal", "forget", jpath, "m[1]")
    assert r.returncode == 0, r.stderr
    assert names(jpath) == ["a", "b", "c", "m[0]", "m[2]", "m", "after_m", "z"]


def test_forget_several_tasks_and_every_version_of_a_key(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("z"), "z", [], "newer")
    r = flowing("journal", "forget", jpath, "c", "z")
    assert r.returncode == 0, r.stderr
    assert "forgot z: 2 entries" in r.stdout
    assert names(jpath) == ["a", "b", "m[0]", "m[1]", "m[2]", "m", "after_m"]


def test_forget_unknown_task_suggests_close_matches_and_changes_nothing(jpath):
    before = open(jpath, "rb").read()
    r = flowing("journal", "forget", jpath, "after_n", "b")
    assert r.returncode == 1
    assert r.stderr.startswith("flowing: error: ")
    assert "'after_n'" in r.stderr and "did you mean 'after_m'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert open(jpath, "rb").read() == before


# --------------------------------------------------------------- compact

def test_compact_keeps_latest_per_key_and_drops_bad_lines(jpath, tmp_path):
    with Journal.open(jpath, LOG) as j:
        j.record(K("a"), "a", [], "a2")
        j.record(K("a"), "a", [], "a3")
    with open(jpath, "ab") as f:
        f.write(b"not an entry\n")
    size_before = os.path.getsize(jpath)
    inode_before = os.stat(jpath).st_ino
    r = flowing("journal", "compact", jpath)
    assert r.returncode == 0, r.stderr
    assert "before: 12 lines" in r.stdout and "(1 unreadable)" in r.stdout
    assert "after:  9 lines" in r.stdout
    assert "line 12" in r.stderr  # the dropped line was reported
    assert os.path.getsize(jpath) < size_before
    assert os.stat(jpath).st_ino != inode_before  # replaced, not edited in place
    assert stat.S_IMODE(os.stat(jpath).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["run.jsonl"]  # no temporary file left behind
    assert names(jpath) == ["b", "c", "m[0]", "m[1]", "m[2]", "m", "after_m", "z", "a"]
    with Journal.open(jpath, LOG) as j:
        assert j.lookup(K("a")) == (True, "a3")
        assert j.lookup(K("c")) == (True, (1, 2))
    r = flowing("journal", "compact", jpath)
    assert "before: 9 lines" in r.stdout and "after:  9 lines" in r.stdout and r.stderr == ""


# ------------------------------------------------------- usage and errors

def test_missing_file_is_exit_1_with_one_line(tmp_path):
    for action in (["show"], ["compact"], ["forget"]):
        args = ["journal", *action, str(tmp_path / "nope.jsonl")] + (["x"] if action == ["forget"] else [])
        r = flowing(*args)
        assert r.returncode == 1
        assert r.stderr.startswith("flowing: error: journal ") and "does not exist" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "nope.jsonl")


def test_directory_is_exit_1(tmp_path):
    r = flowing("journal", "show", str(tmp_path))
    assert r.returncode == 1 and "is a directory" in r.stderr


@pytest.mark.parametrize("args", [[], ["journal"], ["journal", "show"], ["journal", "forget", "p"],
                                  ["bogus"], ["journal", "bogus", "p"]])
def test_bad_usage_is_exit_2(args):
    r = flowing(*args)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0].startswith("usage: flowing")


@pytest.mark.parametrize("args", [[], ["journal"], ["journal", "show"], ["journal", "forget"],
                                  ["journal", "compact"]])
def test_help_everywhere(args):
    r = flowing(*args, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: flowing" + "".join(" " + a for a in args))


def test_main_in_process(jpath, capsys):
    assert main(["journal", "show", jpath]) == 0
    assert "after_m" in capsys.readouterr().out
    assert main(["journal", "forget", jpath, "nope"]) == 1
    assert "no task named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["journal", "--help"])
    assert e.value.code == 0
