"""`python -m flowing journal show/forget/compact`, run as real subprocesses."""

from __future__ import annotations

import binascii
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from flowing.cli import main  # noqa: E402
from flowing.journal.format import HEADER  # noqa: E402
from flowing.journal.store import Journal  # noqa: E402

LOG = logging.getLogger("test_cli")


def K(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def flowing(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "flowing", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def names(path) -> list[str]:
    """Entry names in file order (after the header line, which must be there)."""
    with open(path, "rb") as f:
        assert f.readline() == HEADER
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
    assert r.stderr.startswith("flowing: warning: journal ") and "line 11" in r.stderr
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


def test_forget_one_item_forgets_it_its_task_entry_and_downstream_not_its_siblings(jpath):
    # the task's own entry must go too, or the task replays whole and the item never runs
    r = flowing("journal", "forget", jpath, "m[1]")
    assert r.returncode == 0, r.stderr
    assert names(jpath) == ["a", "b", "c", "m[0]", "m[2]", "z"]


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
    assert "line 13" in r.stderr  # the dropped line was reported (line 1 is the header)
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


# --------------------------------------------------------- hostile journals

def make_line(fields: str, value_text: str = "1") -> bytes:
    """A line whose checksum is valid, whatever its fields say (format: flowing/journal.py)."""
    rest = (fields + ',"value":' + value_text + "}").encode()
    return b'{"v":2,"crc":"%08x",%s\n' % (binascii.crc32(rest), rest)


def fields(**over: str) -> str:
    f = {"key": json.dumps(K("x")), "kind": '"task"', "name": '"x"', "deps": "[]",
         "t": "1763850000.0", "digest": "null", "inputs": "null", "enc": '"json"'}
    f.update(over)
    return ",".join(f'"{k}":{v}' for k, v in f.items())


def raw_controls(text: str) -> list[str]:
    """Characters a terminal could act on: anything not printable but the newline."""
    return [c for c in text if not c.isprintable() and c != "\n"]


HOSTILE = {
    "t NaN": fields(t="NaN"), "t Infinity": fields(t="-Infinity"), "t 1e999": fields(t="1e999"),
    "t huge int": fields(t="9" * 5000), "t 1e300": fields(t="1e300"), "t 9e15": fields(t="9e15"),
    "t negative": fields(t="-1e12"), "t string": fields(t='"now"'), "t list": fields(t="[1]"),
    "name a dict": fields(name="{}"), "deps a str": fields(deps='"a"'), "key empty": fields(key='""'),
    "key not hex": fields(key='"\\u001b]0;pwned\\u0007 not hex"'),
    "name with escapes": fields(name='"\\u001b[2J\\u001b[31mred\\r\\u009b31m\\u202eevil\\n"'),
    "name very long": fields(name='"' + "n" * 100_000 + '"'),
    "kind very long": fields(kind='"' + "\\u001b" * 5000 + '"'),
    "enc odd": fields(enc='"\\u001b[31m"'),
    "digest a number": fields(digest="1e999"), "nested": fields(name="[" * 50_000 + "]" * 50_000),
}


@pytest.mark.parametrize("line", HOSTILE.values(), ids=HOSTILE.keys())
def test_show_survives_lines_with_a_valid_checksum_and_odd_fields(jpath, line):
    with open(jpath, "ab") as f:
        f.write(make_line(line, '"\\u001b[31mvalue\\u0085\\u202e"'))
        f.write(make_line(fields(name='"after"', key=json.dumps(K("after")))))
    r = flowing("journal", "show", jpath)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and raw_controls(r.stdout + r.stderr) == []
    assert "after" in r.stdout and r.stdout.splitlines()[-1].startswith(("10 entries", "11 entries"))
    assert all(len(row) < 300 for row in r.stdout.splitlines())
    assert len(r.stderr.splitlines()) <= 1 and all(len(x) < 400 for x in r.stderr.splitlines())


def test_show_escapes_control_characters_in_names_keys_and_values(tmp_path):
    path = str(tmp_path / "run.jsonl")
    evil = "\x1b[2J\x1b]0;title\x07\r\x9b31m\u202e\u2028\x00"
    with Journal.open(path, LOG) as j:
        j.record(evil + "name", evil + "name", [], {"v": evil}, digest=evil)
        j.record(K("b"), "ok", [], evil)
    r = flowing("journal", "show", path)
    assert r.returncode == 0, r.stderr
    assert raw_controls(r.stdout) == [] and r.stderr == ""
    assert "\\x1b[2J" in r.stdout and "\\u202e" in r.stdout and "\\x9b31m" in r.stdout
    argv_evil = evil.replace("\x00", "")  # (no NUL in a command line)
    r = flowing("journal", "forget", path, argv_evil)
    assert r.returncode == 1 and raw_controls(r.stdout + r.stderr) == []
    assert len(r.stderr.splitlines()) == 1
    assert r.returncode == 1 and raw_controls(r.stdout + r.stderr) == []
    assert len(r.stderr.splitlines()) == 1
    with Journal.open(path, LOG) as j:
        j.record(K("c"), argv_evil + "x", [evil + "name"], 1)
    r = flowing("journal", "forget", path, argv_evil + "x")
    assert r.returncode == 0 and raw_controls(r.stdout + r.stderr) == [], r.stderr
    assert "forgot \\x1b[2J" in r.stdout


def test_show_on_a_terminal_that_cannot_encode_the_value(jpath):
    with Journal.open(jpath, LOG) as j:
        j.record(K("u"), "ünï", [], "✓ é 漢字")
    env = dict(os.environ, PYTHONIOENCODING="ascii", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "flowing", "journal", "show", jpath], cwd=ROOT,
                       env=env, capture_output=True, timeout=60)
    assert r.returncode == 0 and b"Traceback" not in r.stderr
    assert b"\\u2713" in r.stdout


# ------------------------------------------- files flowing must never touch

def _frozen(path) -> tuple[bytes, int]:
    os.utime(path, ns=(10 ** 18, 10 ** 18))
    return open(path, "rb").read(), os.stat(path).st_mtime_ns


@pytest.mark.parametrize("content", [b"my notes\nmore notes\n", b'{"debug": true}', b"\x00\xff" * 100,
                                     b'{"format":"flowing-journal","version":99}\n'])
def test_compact_forget_and_show_refuse_a_file_that_is_not_a_journal(tmp_path, content):
    path = str(tmp_path / "notes.txt")
    with open(path, "wb") as f:
        f.write(content)
    before = _frozen(path)
    for args in (["compact", path], ["forget", path, "x"], ["show", path]):
        r = flowing("journal", *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("flowing: error: journal ") and len(r.stderr.splitlines()) == 1
        assert ("is not a flowing journal" in r.stderr or "newer flowing" in r.stderr), r.stderr
        assert r.stdout == ""
        assert (open(path, "rb").read(), os.stat(path).st_mtime_ns) == before
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_show_on_a_fifo_returns_at_once_with_an_error(tmp_path):
    fifo = str(tmp_path / "run.jsonl")
    os.mkfifo(fifo)
    for args in (["show", fifo], ["compact", fifo], ["forget", fifo, "x"]):
        r = flowing("journal", *args)  # bounded: flowing() times out after 60 s
        assert r.returncode == 1 and "is a FIFO" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_symlink_is_refused_by_every_command(jpath, tmp_path):
    link = str(tmp_path / "link.jsonl")
    os.symlink(jpath, link)
    before = _frozen(jpath)
    for args in (["show", link], ["compact", link], ["forget", link, "a"]):
        r = flowing("journal", *args)
        assert r.returncode == 1 and "symbolic link" in r.stderr and len(r.stderr.splitlines()) == 1
    assert (open(jpath, "rb").read(), os.stat(jpath).st_mtime_ns) == before


def test_compact_keeps_the_mode_and_upgrades_a_0_1_journal(tmp_path):
    path = str(tmp_path / "old.jsonl")
    rest = (f'"key":"{K("a")}","kind":"task","name":"a","deps":[],"t":1763850000.000,'
            f'"enc":"json","value":1}}').encode()
    line = b'{"v":1,"crc":"%08x",%s\n' % (binascii.crc32(rest), rest)
    with open(path, "wb") as f:
        f.write(line * 3)
    os.chmod(path, 0o640)
    r = flowing("journal", "compact", path)
    assert r.returncode == 0, r.stderr
    assert open(path, "rb").read() == HEADER + line
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


# ------------------------------------------- a bare copy of the package folder

def test_cli_runs_from_a_bare_copy_of_the_package_folder(tmp_path, jpath):
    skill = tmp_path / "skill"
    shutil.copytree(os.path.join(ROOT, "flowing"), str(skill / "flowing"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Mark the copy, to prove it is the one that runs (not one installed elsewhere).
    cli = skill / "flowing" / "cli.py"
    text = cli.read_text()
    assert text.count("Tools for flowing, the DAG workflow runner.") == 1
    cli.write_text(text.replace("Tools for flowing, the DAG workflow runner.", "BARE-COPY-MARK"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(jpath, str(work / "run.jsonl"))
    env = {"PATH": "/usr/bin:/bin"}  # as `env -i`: no PYTHONPATH, no install, nothing else
    def bare(*args: str, entry: str = str(skill / "flowing")) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, entry, *args], cwd=str(work), env=env,
                              capture_output=True, text=True, timeout=60)

    for entry in (str(skill / "flowing"), str(skill / "flowing" / "__main__.py")):
        r = bare("--help", entry=entry)
        assert r.returncode == 0 and "BARE-COPY-MARK" in r.stdout, r.stderr
        r = bare("journal", "show", "run.jsonl", entry=entry)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1].startswith("9 entries") and r.stderr == ""
    r = bare("journal", "forget", "run.jsonl", "c")
    assert r.returncode == 0 and "forgot c" in r.stdout, r.stderr
    r = bare("journal", "compact", "run.jsonl")
    assert r.returncode == 0 and "after:  8 lines" in r.stdout, r.stderr
    r = bare("journal", "show", "missing.jsonl")
    assert r.returncode == 1 and r.stderr.startswith("flowing: error: journal 'missing.jsonl'")
